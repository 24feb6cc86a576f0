"""Convert plain image files (TIFF, PNG, ...) listed in an index table into NGFF HCS plates.

Real HPA and JUMP data arrive as one file per channel per field, or as multi-channel TIFFs. The
index (CSV, TSV or a DataFrame) has one row per file:

========== ==================================================================================
column     meaning
========== ==================================================================================
plate      plate name; one ``<plate>.zarr`` is written per value (default: the index's name)
well       well name in any common spelling ("B3", "B03", "b003")
field      field of view within the well (default "0")
channel    the channel this single-channel file holds
channels   for a multi-channel file instead: its channel names in order, separated by ";" or "|"
label      for a label image (integer mask) instead: the label image's name, e.g. "cells"
path       the file, relative to the index file's folder (or ``base_dir``)
========== ==================================================================================

A plate that exists at ``<out_dir>/<plate>.zarr`` is left alone, and nothing is written, unless
``overwrite=True`` (``--overwrite``) replaces it, its label images included (a plate whose conversion
stopped part-way is simply redone).

Every field of a plate must provide the same channels; their order is the order of first
appearance in the index unless ``channels=`` fixes it. A missing file, a field lacking a channel,
channels of different shapes, or an unreadable well name stop the conversion with the plate, well,
field and file named. Missing files and channels are found before a plate is written; a plate whose
conversion stopped part-way has no plate metadata, so it never passes for a complete plate.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .._folders import make_folder
from ..errors import PlateFormatError, PlateNotFoundError, RunDirectoryError, WellNameError
from .wells import normalize_well_name
from .writer import PlateWriter

logger = logging.getLogger(__name__)

_SPLIT = re.compile(r"[;|]")


def _read_index(index: str | os.PathLike[str] | pd.DataFrame, base_dir: str | os.PathLike[str] | None
                ) -> tuple[pd.DataFrame, Path, str]:
    if isinstance(index, pd.DataFrame):
        frame = index.copy().astype(object).where(index.notna(), "")
        return frame, Path(base_dir) if base_dir is not None else Path.cwd(), "index"
    path = Path(index)
    if not path.is_file():
        msg = f"{path}: index file not found"
        raise PlateNotFoundError(msg)
    sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    return frame, Path(base_dir) if base_dir is not None else path.parent, str(path)


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()


def read_image_file(path: Path) -> np.ndarray:
    """Pixels of one image file: TIFF through tifffile, anything else through imageio.

    Microscopes compress their TIFFs: LZW (Opera Phenix), ZSTD (the JUMP images), Deflate, JPEG-XR.
    tifffile decodes them with imagecodecs, a dependency of subcell-scale for that reason.
    """
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return np.asarray(tifffile.imread(path))
    import imageio.v3 as iio

    return np.asarray(iio.imread(path))


def _single_plane(array: np.ndarray, where: str) -> np.ndarray:
    """A 2-D plane from a file that should hold one channel (greyscale saved as RGB is accepted)."""
    array = np.squeeze(array)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        rgb = array[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0]
        msg = (f"{where}: a colour (RGB) image in a single-channel row; list its channels in a "
               "'channels' column (e.g. 'red;green;blue') instead")
        raise PlateFormatError(msg)
    if array.ndim != 2:
        msg = f"{where}: expected a 2-D image for one channel, got shape {array.shape}"
        raise PlateFormatError(msg)
    return array


def _channel_planes(array: np.ndarray, names: list[str], where: str) -> np.ndarray:
    """(c, y, x) planes of a multi-channel file whose channel axis is first or last."""
    array = np.squeeze(array)
    if array.ndim == 3 and array.shape[0] == len(names):
        return array
    if array.ndim == 3 and array.shape[-1] == len(names):
        return np.moveaxis(array, -1, 0)
    msg = f"{where}: {len(names)} channels {names} listed, but the file has shape {array.shape}"
    raise PlateFormatError(msg)


def convert_images(
    index: str | os.PathLike[str] | pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    pixel_size: float | Sequence[float],
    version: str = "0.5",
    channels: Sequence[str] | None = None,
    levels: int = 2,
    chunks: Sequence[int] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write one NGFF HCS plate ``<out_dir>/<plate>.zarr`` per plate named in ``index``.

    Parameters
    ----------
    index
        The index table (path to a CSV/TSV, or a DataFrame); see the module documentation.
    out_dir
        Folder for the plates (created).
    pixel_size
        Micrometres per pixel, one number or (y, x); plain image files rarely record it.
    version
        NGFF version of the plates, "0.5" (Zarr v3) or "0.4" (Zarr v2).
    channels
        Channel order of the plates; default: order of first appearance in the index.
    levels, chunks
        Resolution levels and level-0 chunk shape, as for :class:`PlateWriter`.
    base_dir
        Folder relative paths are resolved against (default: the index file's folder, or the
        working directory for a DataFrame).
    overwrite
        Replace plates that exist already (with their label images). By default an existing
        ``<out_dir>/<plate>.zarr`` stops the conversion before anything is written.

    Returns
    -------
    list of pathlib.Path
        The written plates, in order of first appearance in the index.

    Raises
    ------
    RunDirectoryError
        A plate exists at its output path and ``overwrite`` is False.
    """
    frame, base, where = _read_index(index, base_dir)
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    required = [c for c in ("well", "path") if c not in frame.columns]
    if required:
        msg = f"{where}: the index needs columns 'well' and 'path' (missing {required}); has {list(frame.columns)}"
        raise PlateFormatError(msg)
    default_plate = Path(where).stem if where != "index" else "plate"
    rows = []
    for i, record in enumerate(frame.to_dict(orient="records")):
        line = f"{where} row {i + 1}"
        kinds = {k: _text(record.get(k)) for k in ("channel", "channels", "label")}
        given = [k for k, v in kinds.items() if v]
        if len(given) != 1:
            msg = f"{line}: exactly one of 'channel', 'channels' or 'label' must be filled, got {given or 'none'}"
            raise PlateFormatError(msg)
        try:
            well = normalize_well_name(_text(record.get("well")))
        except WellNameError as exc:
            raise WellNameError(f"{line}: {exc}") from None
        path = Path(_text(record.get("path")))
        rows.append({
            "plate": _text(record.get("plate")) or default_plate,
            "well": well,
            "field": _text(record.get("field")) or "0",
            "kind": given[0],
            "names": [n.strip() for n in _SPLIT.split(kinds[given[0]]) if n.strip()],
            "path": path if path.is_absolute() else base / path,
            "line": line,
        })
    if not rows:
        msg = f"{where}: the index lists no files"
        raise PlateFormatError(msg)

    out = Path(out_dir)
    plates = list(dict.fromkeys(r["plate"] for r in rows))
    existing = [str(out / f"{plate}.zarr") for plate in plates if _is_plate(out / f"{plate}.zarr")]
    if existing and not overwrite:
        what = f"plate {existing[0]} exists" if len(existing) == 1 else f"plates {', '.join(existing)} exist"
        msg = (f"{what} already; converting would replace it with its labels: give --overwrite "
               "(overwrite=True) to replace it, or another output folder")
        raise RunDirectoryError(msg)
    make_folder(out, "output folder")
    written = []
    for plate in plates:
        plate_rows = [r for r in rows if r["plate"] == plate]
        written.append(_convert_plate(plate, plate_rows, out, pixel_size=pixel_size, version=version,
                                      channels=channels, levels=levels, chunks=chunks))
    return written


def _is_plate(path: Path) -> bool:
    """Whether ``path`` holds a finished plate (its plate metadata written); a conversion that stopped
    part-way leaves none, and is redone without asking."""
    import json

    for name, keys in (("zarr.json", ("attributes", "ome", "plate")), (".zattrs", ("plate",))):
        try:
            node = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            return True
    return False


def _convert_plate(plate: str, rows: list[dict], out: Path, *, pixel_size: float | Sequence[float], version: str,
                   channels: Sequence[str] | None, levels: int, chunks: Sequence[int] | None) -> Path:
    order = list(channels) if channels is not None else list(dict.fromkeys(
        n for r in rows if r["kind"] != "label" for n in r["names"]))
    fields: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        fields.setdefault((r["well"], r["field"]), []).append(r)
        if not r["path"].is_file():
            msg = f"{r['line']}: file not found: {r['path']} (plate {plate}, well {r['well']}, field {r['field']})"
            raise PlateNotFoundError(msg)
    for (well, field), items in fields.items():
        provided = [n for r in items if r["kind"] != "label" for n in r["names"]]
        missing = [c for c in order if c not in provided]
        repeated = sorted({c for c in provided if provided.count(c) > 1})
        extra = [c for c in provided if c not in order]
        if missing or repeated or extra:
            problem = "; ".join(p for p in (missing and f"missing channels {missing}",
                                            repeated and f"channels given twice {repeated}",
                                            extra and f"channels {extra} not in the plate's {order}") if p)
            msg = f"plate {plate} well {well} field {field}: {problem}"
            raise PlateFormatError(msg)
    if not order:
        msg = f"plate {plate}: the index lists only label images, no channels"
        raise PlateFormatError(msg)

    path = out / f"{plate}.zarr"
    n_fields = max(sum(1 for w, _ in fields if w == well) for well, _ in fields)
    with PlateWriter(path, name=plate, channel_names=order, pixel_size=pixel_size, version=version,
                     field_count=n_fields, levels=levels, chunks=chunks) as writer:
        for (well, field), items in fields.items():
            image, labels = _read_field(plate, well, field, items, order)
            writer.write_field(well, field, image, labels=labels)
    logger.info("%s: %d fields, channels %s", path, len(fields), order)
    return path


def _read_field(plate: str, well: str, field: str, items: list[dict], order: list[str]
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    planes: dict[str, tuple[np.ndarray, Path]] = {}
    labels: dict[str, np.ndarray] = {}
    for r in items:
        where = f"{r['path']} (plate {plate}, well {well}, field {field})"
        try:
            array = read_image_file(r["path"])
        except (OSError, ValueError, ImportError) as exc:
            hint = ""
            if isinstance(exc, ImportError) or "imagecodecs" in str(exc):
                hint = " (pip install imagecodecs)" if "imagecodecs" in str(exc) else (
                    "; its compression needs the imagecodecs package (pip install imagecodecs)")
            msg = f"{where}: cannot read the image ({type(exc).__name__}: {exc}){hint}"
            raise PlateFormatError(msg) from exc
        if r["kind"] == "channel":
            planes[r["names"][0]] = (_single_plane(array, where), r["path"])
        elif r["kind"] == "channels":
            for name, plane in zip(r["names"], _channel_planes(array, r["names"], where)):
                planes[name] = (plane, r["path"])
        else:
            label = _single_plane(array, where)
            if label.dtype.kind not in "iub":
                msg = f"{where}: label image {r['names'][0]!r} has dtype {label.dtype}; masks must be integers"
                raise PlateFormatError(msg)
            labels[r["names"][0]] = label.astype(np.uint32) if label.dtype.kind == "b" else label
    shapes = {name: plane.shape for name, (plane, _) in planes.items()}
    if len(set(shapes.values())) > 1:
        detail = ", ".join(f"{name} {shape} ({planes[name][1].name})" for name, shape in shapes.items())
        msg = f"plate {plate} well {well} field {field}: channels differ in shape: {detail}"
        raise PlateFormatError(msg)
    shape = next(iter(shapes.values()))
    for name, label in labels.items():
        if label.shape != shape:
            msg = (f"plate {plate} well {well} field {field}: label image {name!r} is {label.shape}, "
                   f"the channels are {shape}")
            raise PlateFormatError(msg)
    dtype = np.result_type(*(plane.dtype for plane, _ in planes.values()))
    if dtype.kind == "b":
        dtype = np.dtype(np.uint8)
    image = np.stack([planes[name][0].astype(dtype, copy=False) for name in order])
    return image, labels
