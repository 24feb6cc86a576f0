"""Check a whole plate: ome-zarr-models' schema validation plus the gaps it leaves open.

ome-zarr-models (1.7) does not check that a well's ``rowIndex``/``columnIndex`` point at the row and
column its ``path`` names, that omero colours are hex RRGGBB, that ``plate.version`` is present, or
(for 0.4) that label images have as many levels as their image. :func:`validate_plate` runs the
schema validation and these checks, plus what subcell-scale itself relies on (every listed well,
field and level exists; every field has the same channels), and reports every problem at once.
It touches every field's metadata, so run it once after writing a plate, not per task.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Any

import zarr
import zarr.errors

from ..errors import PlateFormatError, SubcellScaleError
from ._ngff import axis_names, ome_attrs
from .plate import Plate, open_plate

logger = logging.getLogger(__name__)

_HEX_COLOR = re.compile(r"^[0-9A-Fa-f]{6}$")
_ALNUM = re.compile(r"^[A-Za-z0-9]+$")


def validate_plate(path: str | os.PathLike[str] | Plate, *, schema: bool = True) -> None:
    """Raise :class:`PlateFormatError` listing every problem of a plate; return None when valid.

    Parameters
    ----------
    path
        The plate (path, URL or an opened :class:`Plate`).
    schema
        Also run ome-zarr-models' validation of the whole hierarchy (the slow part on big plates).
    """
    plate = path if isinstance(path, Plate) else open_plate(path)
    problems: list[str] = []
    if schema:
        problems += _schema_problems(plate)
    problems += _plate_problems(plate)
    problems += _field_problems(plate)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        msg = f"{plate.path}: {len(problems)} problem(s) make this an invalid NGFF HCS plate:\n{listing}"
        raise PlateFormatError(msg)
    logger.info("%s: valid NGFF %s HCS plate (%d wells)", plate.path, plate.version, len(plate.wells))


def _schema_problems(plate: Plate) -> list[str]:
    import ome_zarr_models.v04
    import ome_zarr_models.v05

    model = ome_zarr_models.v05.HCS if plate.version == "0.5" else ome_zarr_models.v04.HCS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # our own checks report what these warnings say
            model.from_zarr(plate.root)
    except Exception as exc:  # pydantic, KeyError, RuntimeError: any failure is a finding
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return [f"ome-zarr-models ({type(exc).__name__}): " + " | ".join(lines[:12])]
    return []


def _plate_problems(plate: Plate) -> list[str]:
    meta = plate._plate_meta
    problems = []
    if "version" not in meta:
        problems.append("plate metadata has no 'version' (required in 0.4 and 0.5)")
    if plate.version == "0.5" and "version" not in ome_attrs(plate.root):
        problems.append("root 'ome' metadata has no 'version'")
    if "version" in meta and str(meta["version"]) != plate.version:
        problems.append(f"plate.version {meta['version']!r} differs from the store's NGFF version {plate.version!r}")
    rows, columns = plate.rows, plate.columns
    for kind, names in (("row", rows), ("column", columns)):
        if not names:
            problems.append(f"plate metadata lists no {kind}s")
        for name in names:
            if not _ALNUM.match(name):
                problems.append(f"{kind} name {name!r} is not alphanumeric")
        if len(set(names)) != len(names):
            problems.append(f"{kind} names are not unique: {names}")
    acquisition_ids = {a.get("id") for a in plate.acquisitions}
    for entry in meta.get("wells", []):
        path = entry.get("path", "")
        row, _, column = path.partition("/")
        ri, ci = entry.get("rowIndex"), entry.get("columnIndex")
        if not isinstance(ri, int) or not 0 <= ri < len(rows):
            problems.append(f"well {path}: rowIndex {ri!r} is not an index into the {len(rows)} rows")
        elif rows[ri] != row:
            problems.append(f"well {path}: rowIndex {ri} is row {rows[ri]!r}, but the path names row {row!r}")
        if not isinstance(ci, int) or not 0 <= ci < len(columns):
            problems.append(f"well {path}: columnIndex {ci!r} is not an index into the {len(columns)} columns")
        elif columns[ci] != column:
            problems.append(f"well {path}: columnIndex {ci} is column {columns[ci]!r}, "
                            f"but the path names column {column!r}")
        try:
            group = plate.root[path]
        except (KeyError, FileNotFoundError):
            problems.append(f"well {path}: listed in the plate but missing from the store")
            continue
        well_meta = ome_attrs(group).get("well")
        if not isinstance(well_meta, dict) or not well_meta.get("images"):
            problems.append(f"well {path}: no 'well' metadata or no images")
            continue
        for image in well_meta["images"]:
            acquisition = image.get("acquisition") if isinstance(image, dict) else None
            if acquisition is not None and acquisition_ids and acquisition not in acquisition_ids:
                problems.append(f"well {path} field {image.get('path')}: acquisition {acquisition} is not "
                                f"one of the plate's acquisitions {sorted(acquisition_ids)}")
    return problems


def _field_problems(plate: Plate) -> list[str]:
    problems: list[str] = []
    reference: list[str] | None = None
    for well in plate.wells:
        try:
            fields = plate.fields(well)
        except SubcellScaleError as exc:
            problems.append(str(exc).replace(f"{plate.path}: ", ""))
            continue
        for field in fields:
            where = f"{well}/{field}"
            field_path = f"{plate.well_path(well)}/{field}"
            try:
                group = plate.root[field_path]
                attrs = ome_attrs(group)
                n_levels = plate.n_levels(well, field)
                channels = plate.field_channel_names(well, field)
            except (SubcellScaleError, KeyError, FileNotFoundError) as exc:
                problems.append(f"{where}: {_short(exc, plate)}")
                continue
            level_shapes = _level_shapes(plate.root, field_path, attrs, where, problems)
            problems += _omero_problems(attrs, where, level_shapes)
            if reference is None:
                reference = channels
            elif channels != reference:
                problems.append(f"{where}: channels {channels} differ from the plate's {reference}")
            if isinstance(_node(plate.root, f"{field_path}/labels"), zarr.Group):
                problems += _label_problems(plate, field_path, where, n_levels, level_shapes, attrs)
    return problems


def _short(exc: BaseException, plate: Plate) -> str:
    return str(exc).replace(f"{plate.path} ", "").replace(f"{plate.path}: ", "")


def _node(root: zarr.Group, path: str) -> zarr.Group | zarr.Array | None:
    """The node at ``path`` below the plate root, read from the store (no consolidated listing), or None."""
    try:
        return root[path]
    except (KeyError, FileNotFoundError, zarr.errors.NodeNotFoundError):
        return None


def _level_shapes(root: zarr.Group, field_path: str, attrs: dict[str, Any], where: str,
                  problems: list[str]) -> list[tuple[int, ...]]:
    multiscale = attrs["multiscales"][0]
    names = axis_names(multiscale["axes"])
    shapes = []
    for dataset in multiscale["datasets"]:
        node = _node(root, f"{field_path}/{dataset['path']}")
        if not isinstance(node, zarr.Array):
            problems.append(f"{where}: level array {dataset['path']!r} is missing")
            continue
        if node.ndim != len(names):
            problems.append(f"{where}: level {dataset['path']!r} has {node.ndim} dimensions for axes {names}")
            continue
        shapes.append(tuple(node.shape))
    return shapes


def _omero_problems(attrs: dict[str, Any], where: str, level_shapes: list[tuple[int, ...]]) -> list[str]:
    omero = attrs.get("omero")
    if omero is None:
        return []
    problems = []
    channels = omero.get("channels", [])
    for i, channel in enumerate(channels):
        color = channel.get("color") if isinstance(channel, dict) else None
        if not isinstance(color, str) or not _HEX_COLOR.match(color):
            problems.append(f"{where}: omero channel {i} colour {color!r} is not hex RRGGBB")
        window = channel.get("window") if isinstance(channel, dict) else None
        if not isinstance(window, dict) or not {"min", "max", "start", "end"} <= set(window):
            problems.append(f"{where}: omero channel {i} has no complete window (min, max, start, end)")
    axes = axis_names(attrs["multiscales"][0]["axes"])
    if level_shapes and "c" in axes and len(channels) != level_shapes[0][axes.index("c")]:
        problems.append(f"{where}: omero lists {len(channels)} channels, the image has "
                        f"{level_shapes[0][axes.index('c')]}")
    return problems


def _label_problems(plate: Plate, field_path: str, where: str, n_levels: int,
                    level_shapes: list[tuple[int, ...]], attrs: dict[str, Any]) -> list[str]:
    problems = []
    labels_attrs = ome_attrs(plate.root[f"{field_path}/labels"])
    if plate.version == "0.5" and "version" not in labels_attrs:
        problems.append(f"{where}: labels group has no 'version' (ome-zarr-py leaves it out for 0.5)")
    names = labels_attrs.get("labels", [])
    if len(set(names)) != len(names):
        problems.append(f"{where}: labels group lists a name twice: {names}")
    image_axes = axis_names(attrs["multiscales"][0]["axes"])
    for name in names:
        node = _node(plate.root, f"{field_path}/labels/{name}")
        if not isinstance(node, zarr.Group):
            problems.append(f"{where}: label image {name!r} is listed but missing")
            continue
        label_attrs = ome_attrs(node)
        multiscales = label_attrs.get("multiscales")
        if not multiscales:
            problems.append(f"{where}: label image {name!r} has no multiscales")
            continue
        datasets = multiscales[0].get("datasets", [])
        if len(datasets) != n_levels:
            problems.append(f"{where}: label image {name!r} has {len(datasets)} levels, the image has {n_levels}")
        if "image-label" not in label_attrs:
            problems.append(f"{where}: label image {name!r} has no 'image-label' metadata")
        label_axes = axis_names(multiscales[0].get("axes", []))
        for level, dataset in enumerate(datasets):
            array = _node(plate.root, f"{field_path}/labels/{name}/{dataset.get('path')}")
            if not isinstance(array, zarr.Array):
                problems.append(f"{where}: label image {name!r} level {dataset.get('path')!r} is missing")
                continue
            if array.dtype.kind not in "iu":
                problems.append(f"{where}: label image {name!r} has dtype {array.dtype}, labels must be integers")
            if level < len(level_shapes) and {"y", "x"} <= set(label_axes):
                got = (array.shape[label_axes.index("y")], array.shape[label_axes.index("x")])
                want = (level_shapes[level][image_axes.index("y")], level_shapes[level][image_axes.index("x")])
                if got != want:
                    problems.append(f"{where}: label image {name!r} level {level} is {got} (y, x), "
                                    f"the image is {want}")
    return problems
