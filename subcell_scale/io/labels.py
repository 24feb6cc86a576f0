"""Label images inside a plate's fields, written the NGFF way so segmentation is cached and viewable.

A label image gets the same number of levels as the field's image (nearest-neighbour downsampling to
exactly the image's level shapes), the image's axes (non-spatial axes of length 1) and coordinate
transformations, ``image-label`` metadata (a colour per label, optional per-label properties, the
source image), and a ``labels`` group listing it with its version (ome-zarr-py leaves the version
out for NGFF 0.5, which makes the whole plate invalid). Writing the same name again replaces it; on a
file system the new image is written aside and renamed into place, so two processes writing the same
field at once leave one whole image, never a listing of levels that are not there.
Groups are opened from their own metadata, never through a consolidated listing, so label images
written by other tools since a plate was consolidated are seen and kept.
"""

from __future__ import annotations

import colorsys
import ctypes
import errno
import functools
import logging
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from ..errors import PlateFormatError
from ._ngff import axis_names, ome_attrs, set_ome_attrs, write_level
from .consolidated import open_on_disk, repair_consolidated
from .wells import normalize_well_name

if TYPE_CHECKING:
    import pandas as pd

    from .plate import Plate

    LabelProperties = Sequence[Mapping[str, Any]] | Mapping[int, Mapping[str, Any]] | pd.DataFrame

logger = logging.getLogger(__name__)

LABEL_CHUNK = 1024

def label_color(value: int) -> list[int]:
    """A stable, well-spread RGBA colour for a label value (golden-ratio hues)."""
    hue = (int(value) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0)
    return [round(r * 255), round(g * 255), round(b * 255), 255]


def nearest_downsample(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a 2-D label image to ``shape`` (never invents label values).

    Pixel ``i`` of the smaller level takes level-0 pixel ``i * f`` with the integer factor
    ``f = round(n_in / n_out)``, the first pixel of the block the image pyramid averaged over, so
    floor- and ceil-sized pyramids (9 -> 4 or 9 -> 5 rows) both line up with their image.
    """
    index = []
    for n_in, n_out in zip(labels.shape, shape):
        factor = max(1, round(n_in / n_out))
        index.append(np.minimum(np.arange(n_out) * factor, n_in - 1))
    return labels[np.ix_(*index)]


def _properties_list(properties: LabelProperties | None, where: str) -> list[dict[str, Any]] | None:
    """Per-label properties as NGFF ``[{"label-value": v, ...}]`` with plain JSON values."""
    if properties is None:
        return None
    if hasattr(properties, "to_dict") and hasattr(properties, "columns"):
        frame = properties
        key = "label-value" if "label-value" in frame.columns else "label"
        if key not in frame.columns:
            msg = f"{where}: label properties need a 'label' column, got {list(frame.columns)}"
            raise PlateFormatError(msg)
        records = frame.rename(columns={key: "label-value"}).to_dict(orient="records")
    elif isinstance(properties, Mapping):
        records = [{"label-value": value, **dict(props)} for value, props in properties.items()]
    else:
        records = [dict(p) for p in properties]
    out = []
    for record in records:
        if "label-value" not in record:
            msg = f"{where}: every label property entry needs 'label-value', got {sorted(record)}"
            raise PlateFormatError(msg)
        out.append({str(k): _plain(v) for k, v in record.items()})
    return out


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so metadata is valid JSON."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def check_label_name(name: Any, where: str, error: type[Exception]) -> None:
    """A label image's name is a folder name in every store: letters, digits, '_' or '-'."""
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise error(f"{where}: label name {name!r} must be letters, digits, '_' or '-'")


def write_label_image(
    field: zarr.Group,
    name: str,
    labels: np.ndarray,
    *,
    properties: LabelProperties | None = None,
    where: str = "",
) -> None:
    """Write ``labels`` (y, x) as the label image ``name`` of an open, writable field group.

    ``where`` names the plate, well and field in error messages.
    """
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_label_metadata, write_multiscales_metadata

    where = where or field.path
    check_label_name(name, where, PlateFormatError)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        msg = f"{where}: labels {name!r} must be an integer array, got {labels.dtype}"
        raise PlateFormatError(msg)
    if labels.ndim != 2:
        msg = f"{where}: labels {name!r} must be 2-D (y, x), got shape {labels.shape}"
        raise PlateFormatError(msg)
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        msg = f"{where}: labels {name!r} has negative values; label values are 0 (background) or positive"
        raise PlateFormatError(msg)

    image_meta = ome_attrs(field)
    multiscales = image_meta.get("multiscales")
    if not multiscales:
        msg = f"{where}: no 'multiscales' metadata, so labels cannot be attached to an image"
        raise PlateFormatError(msg)
    multiscale = multiscales[0]
    axes = multiscale["axes"]
    names = axis_names(axes)
    iy, ix = names.index("y"), names.index("x")
    level_shapes = []
    for dataset in multiscale["datasets"]:
        try:
            level_shapes.append(field[dataset["path"]].shape)
        except KeyError:
            msg = f"{where}: image level {dataset['path']!r} is listed in multiscales but missing"
            raise PlateFormatError(msg) from None
    base = (level_shapes[0][iy], level_shapes[0][ix])
    if labels.shape != base:
        msg = f"{where}: labels {name!r} have shape {labels.shape}, the image is {base} (y, x)"
        raise PlateFormatError(msg)

    # label images compress to almost nothing: large chunks mean few files (writing small files is
    # what costs on network and overlay file systems), and a field's labels are read whole anyway
    chunks = tuple(LABEL_CHUNK if i in (iy, ix) else 1 for i in range(len(names)))
    fmt = FormatV05() if field.metadata.zarr_format == 3 else FormatV04()
    labels_group = _labels_group(field)
    # dimension names spelled as the image's axes ("T", "C", ... in iohub plates), as NGFF 0.5 requires
    dimension_names = [str(a["name"] if isinstance(a, dict) else a) for a in axes]
    levels = {}
    for dataset, shape in zip(multiscale["datasets"], level_shapes):
        level = nearest_downsample(labels, (shape[iy], shape[ix]))
        levels[dataset["path"]] = level.reshape([s if i in (iy, ix) else 1 for i, s in enumerate(shape)])
    values = np.unique(labels)
    colors = [{"label-value": int(v), "rgba": label_color(int(v))} for v in values if v != 0]

    def write_image(parent: zarr.Group) -> None:
        group = parent.create_group(name, overwrite=True)
        datasets = []
        for dataset in multiscale["datasets"]:
            write_level(group, dataset["path"], levels[dataset["path"]], chunks, dimension_names)
            datasets.append({"path": dataset["path"],
                             "coordinateTransformations": dataset["coordinateTransformations"]})
        write_multiscales_metadata(group, datasets=datasets, fmt=fmt, axes=axes, name=name)
        write_label_metadata(parent, name, colors=colors, properties=_properties_list(properties, where),
                             fmt=fmt, source={"image": "../../"})

    folder = _local_folder(labels_group)
    if folder is None:  # object storage has no rename: written in place and read back
        _write_in_place(labels_group, name, write_image, levels, where)
    else:  # written whole aside, then renamed into place (see _publish)
        _clear_stale(folder)
        staging = f"{_STAGING}{uuid.uuid4().hex[:12]}"
        write_image(labels_group.create_group(staging))
        _publish(folder, staging, name, where)
        labels_group = open_on_disk(field.store, f"{field.path}/labels", mode="r+")
    # ome-zarr-py appends the name even when it is listed already, and leaves out the 0.5 version;
    # iohub lists its label images in the image group only ({"labels": {"labels": [...]}}), so
    # the NGFF listing takes those in too, and iohub's listing learns the new name
    image_listing = image_meta.get("labels")
    iohub_names = image_listing.get("labels") if isinstance(image_listing, dict) else None
    attrs = ome_attrs(labels_group)
    listed = list(dict.fromkeys([*(iohub_names or []), *attrs.get("labels", []), name]))
    if listed != attrs.get("labels") or (fmt.version != "0.4" and attrs.get("version") != fmt.version):
        set_ome_attrs(labels_group, {"labels": listed}, version=fmt.version)
    if isinstance(iohub_names, list) and name not in iohub_names:
        set_ome_attrs(field, {"labels": {**image_listing, "labels": [*iohub_names, name]}}, version=fmt.version)


def _labels_group(field: zarr.Group) -> zarr.Group:
    """The field's ``labels`` group, made when missing, opened from its own metadata.

    A consolidated listing would hide label images written since. Another process may make the
    group between the look and the make: then it is there to open.
    """
    for _ in range(3):
        try:
            return open_on_disk(field.store, f"{field.path}/labels", mode="r+")
        except FileNotFoundError:
            pass
        try:
            field.create_group("labels")
        except zarr.errors.ContainsGroupError:
            continue  # made by another writer meanwhile
    return open_on_disk(field.store, f"{field.path}/labels", mode="r+")


WRITE_TRIES = 5
"""Times a label image on object storage is written before a writer running beside it is reported."""


def _write_in_place(group: zarr.Group, name: str, write: Callable[[zarr.Group], None],
                    levels: Mapping[str, np.ndarray], where: str) -> None:
    """Write the label image ``name`` into ``group`` where nothing can be renamed, until it reads back whole.

    Each write replaces the whole image (``write`` makes its group with ``overwrite``, which deletes
    what was there first), so a second process replacing the same image may delete under this one: the
    image is read back after each write and written again while the other's delete left a hole in it.
    """
    if name in group:
        logger.info("%s: replacing labels %r", where, name)
    for attempt in range(WRITE_TRIES):
        try:
            write(group)
            image = open_on_disk(group.store, f"{group.path}/{name}")
            if "image-label" in ome_attrs(image) and all(
                    np.array_equal(image[path][...], level) for path, level in levels.items()):
                return
        except (KeyError, FileNotFoundError, zarr.errors.BaseZarrError):
            pass  # deleted under this writer by the other
        logger.info("%s: labels %r changed while written (another process writes them too); writing again",
                    where, name)
        time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
    msg = (f"{where}: labels {name!r} were changed by another process each of the {WRITE_TRIES} times they "
           "were written; run again once the other writer has finished")
    raise PlateFormatError(msg)


_STAGING = ".writing-"
"""Prefix of the group a label image is written in before it is renamed into place."""


def _local_folder(group: zarr.Group) -> Path | None:
    """The folder of a group on a local file system, None elsewhere (object storage)."""
    root = getattr(group.store, "root", None)
    return None if root is None else Path(root) / group.path


STALE_SECONDS = 3600.0
"""Age after which a staging folder is the leftover of a writer that died (a live one renames it in seconds)."""


def _clear_stale(folder: Path) -> None:
    """Remove staging folders left in ``folder`` by writers that were killed."""
    for path in folder.glob(f"{_STAGING}*"):
        try:
            if time.time() - path.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except FileNotFoundError:
            continue  # its writer finished meanwhile


def _publish(folder: Path, staging: str, name: str, where: str) -> None:
    """Rename the label image written whole in ``folder/staging/name`` to ``folder/name``.

    Where the file system can swap two folders in one step (Linux), a reader sees the old image or
    the new one and never neither. Elsewhere the old image is moved away first, so a reader may
    briefly find none (and segments the field again, or retries it). When another process publishes
    the same image meanwhile, one of the two whole images stays: the store ends complete whoever
    wins, and every rename that loses is told so by the file system.
    """
    source, target = folder / staging / name, folder / name
    try:
        os.rename(source, target)  # nothing there yet
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR):
            raise
        logger.info("%s: replacing labels %r", where, name)
        if not _exchange(source, target):
            old = folder / f"{staging}.old"
            try:
                os.rename(target, old)
            except FileNotFoundError:
                pass  # another writer moved it away first
            try:
                os.rename(source, target)
            except OSError as again:
                if again.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR):
                    raise
                logger.info("%s: labels %r were written by another process at the same time; keeping theirs",
                            where, name)
            shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(folder / staging, ignore_errors=True)  # the replaced image, after an exchange


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Any:
    """The C library's ``renameat2``, None where there is none (not Linux, or an old C library)."""
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None


def _exchange(source: Path, target: Path) -> bool:
    """Swap ``source`` and ``target`` in one step; False where the system or file system cannot."""
    call = _renameat2()
    if call is None:
        return False
    if call(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOENT):
        return False  # not supported here, or the target was moved away meanwhile: plain renames
    raise OSError(code, os.strerror(code), str(target))


def write_labels(
    plate: Plate | str | os.PathLike[str],
    well: str,
    field: str | int,
    name: str,
    labels: np.ndarray,
    *,
    properties: LabelProperties | None = None,
) -> None:
    """Write a (y, x) label image into a plate's field as NGFF labels named ``name``.

    The label image gets the field's level count and transformations, a colour per label and the
    optional per-label ``properties`` (records with "label-value", a ``{label: {...}}`` mapping or a
    DataFrame with a ``label`` column), so napari shows it and later runs read it instead of
    segmenting again. Writing the same name again replaces the previous labels.

    Plates with consolidated metadata stay consistent: listings inside the field are rebuilt, a
    listing of the whole plate (or a row or well) is removed with a warning, since rebuilding it would
    read the whole plate for every field (see :func:`~subcell_scale.io.consolidated.repair_consolidated`).
    """
    from .plate import Plate, local_path, open_plate

    if not isinstance(plate, Plate):
        plate = open_plate(plate)
    well_id = normalize_well_name(well)
    field = str(field)
    plate.n_levels(well_id, field)  # raises a named error for an unknown well or field
    group_path = f"{plate.well_path(well_id)}/{field}"
    if "://" in plate.path and not plate.path.startswith("file://"):
        group = open_on_disk(plate.path, group_path, mode="r+", storage_options=plate.storage_options)
    else:
        group = open_on_disk(local_path(plate.path), group_path, mode="r+")
    where = f"{plate.path} {well_id}/{field}"
    write_label_image(group, name, labels, properties=properties, where=where)
    repair_consolidated(group.store, f"{group_path}/labels/{name}", where=where)
    plate.forget_labels(well_id, field, name)


def labels_writable(plate: Plate) -> bool:
    """Whether label images can be written into ``plate``'s fields.

    A local plate is asked the file system (its first field's folder, the place a label image goes);
    a plate at a URL is asked by writing and removing a small object beside its metadata (a plain
    HTTP server, a read-only bucket or credentials without write access say no).
    """
    import uuid

    from .plate import local_path

    well = plate.wells[0]
    group = f"{plate.well_path(well)}/{plate.fields(well)[0]}"
    if "://" not in plate.path or plate.path.startswith("file://"):
        folder = os.path.join(local_path(plate.path), group)
        return os.access(folder, os.W_OK | os.X_OK) and not _read_only_mount(folder)
    import fsspec.core

    try:
        fs, root = fsspec.core.url_to_fs(plate.path, **(plate.storage_options or {}))
        probe = f"{root.rstrip('/')}/{group}/.subcell-scale-write-check-{uuid.uuid4().hex[:8]}"
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception:  # noqa: BLE001 - each store says no its own way (501, 403, NotImplementedError, ...)
        return False
    return True


def _read_only_mount(folder: str) -> bool:
    """A folder on a file system mounted read-only (``os.access`` says yes to root there)."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return True

