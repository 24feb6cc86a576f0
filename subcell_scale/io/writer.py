"""Write NGFF HCS plates (0.4 on Zarr v2, 0.5 on Zarr v3) one field at a time.

:class:`PlateWriter` is what the demo generator and the image converter use: it writes each field
as it comes (image pyramid, channel names and colours, optional label images) and fills in the well
and plate metadata when the ``with`` block ends, so a plate that was interrupted never looks
complete.

Every piece of NGFF metadata is written by ome-zarr-py's metadata writers
(``write_multiscales_metadata``, ``write_label_metadata``, ``write_well_metadata``,
``write_plate_metadata``), so the layout is the reference one. The level arrays themselves are
written with zarr directly rather than through ``write_image``: that is about twice as fast
(``benchmarks/bench_open_plate.py``), and it fixes each level's shape exactly, so label pyramids
line up pixel for pixel with their image.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import zarr

from ..errors import PlateFormatError, RunDirectoryError
from ._ngff import level_transforms, write_level
from .labels import write_label_image
from .wells import parse_well_name, row_index, row_name, well_name

logger = logging.getLogger(__name__)

# Colours that image viewers and the HPA use for the usual stains; other channels cycle PALETTE.
KNOWN_COLORS = {
    "dna": "0000FF",
    "dapi": "0000FF",
    "hoechst": "0000FF",
    "nucleus": "0000FF",
    "microtubules": "FF0000",
    "tubulin": "FF0000",
    "er": "FFFF00",
    "protein": "00FF00",
    "rna": "00FFFF",
    "agp": "FF00FF",
    "mito": "FF8000",
    "brightfield": "FFFFFF",
}
PALETTE = ("FF0000", "00FF00", "0000FF", "FFFF00", "FF00FF", "00FFFF", "FF8000", "FFFFFF")

# Standard plate formats (rows, columns), smallest first: a plate is laid out as the smallest
# format that holds every written well, unless rows/columns are given.
PLATE_FORMATS = ((2, 3), (3, 4), (4, 6), (6, 8), (8, 12), (16, 24), (32, 48))


def default_channel_colors(channel_names: Sequence[str]) -> list[str]:
    """Hex RRGGBB colours: the usual colour for known stains, a fixed palette for the rest."""
    colors = []
    for i, name in enumerate(channel_names):
        colors.append(KNOWN_COLORS.get(name.strip().lower(), PALETTE[i % len(PALETTE)]))
    return colors


def image_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Levels of a (c, y, x) image, each half the size of the one before (2 x 2 means, dtype kept).

    An odd row or column at the edge is dropped before averaging, so level i is exactly
    ``floor(shape / 2**i)``; labels are resampled to these same shapes.
    """
    out = [image]
    for _ in range(1, levels):
        prev = out[-1]
        h, w = prev.shape[1] // 2, prev.shape[2] // 2
        if h == 0 or w == 0:
            msg = f"a {image.shape[1]} x {image.shape[2]} image is too small for {levels} levels"
            raise PlateFormatError(msg)
        blocks = prev[:, : 2 * h, : 2 * w].reshape(prev.shape[0], h, 2, w, 2).astype(np.float64)
        mean = blocks.mean(axis=(2, 4))
        out.append(np.round(mean).astype(image.dtype) if image.dtype.kind in "ui" else mean.astype(image.dtype))
    return out


def _pixel_size_yx(pixel_size: float | Sequence[float]) -> tuple[float, float]:
    values = [float(pixel_size)] * 2 if np.isscalar(pixel_size) else [float(v) for v in pixel_size]
    if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
        msg = f"pixel_size must be a positive number or (y, x) pair in micrometres, got {pixel_size!r}"
        raise PlateFormatError(msg)
    return values[0], values[1]


def _names(spec: int | Sequence[str] | None, kind: str) -> list[str] | None:
    if spec is None:
        return None
    if isinstance(spec, int):
        return [row_name(i) for i in range(spec)] if kind == "rows" else [str(i + 1) for i in range(spec)]
    names = [str(s) for s in spec]
    if kind == "columns":
        names = [str(int(s)) for s in names]
    else:
        names = [s.upper() for s in names]
        for s in names:
            row_index(s)
    return names


class PlateWriter:
    """Write an NGFF HCS plate field by field; plate and well metadata are finalised on exit.

    Parameters
    ----------
    path
        Where the plate goes (a ``.zarr`` directory). An existing zarr store there is replaced;
        anything else that exists there is refused, so a typo cannot delete a folder of data.
    name
        Plate name stored in the plate metadata (``Plate.name`` reads it back).
    channel_names
        One name per image channel, stored as omero channel labels.
    pixel_size
        Micrometres per pixel at level 0, one number or a (y, x) pair.
    version
        "0.5" (Zarr v3, the default) or "0.4" (Zarr v2, for older viewers and tools).
    rows, columns
        The plate layout: a count ("16") or names (["A", "B"], [1, 2]). By default the smallest
        standard format (6 .. 1536 wells) holding every written well.
    field_count
        Fields per well announced in the plate metadata (raised to the largest well written).
    levels
        Resolution levels per field (level i is 2**i times smaller); labels get the same count.
    chunks
        Chunk shape (c, y, x) of level 0, default (1, 256, 256) clipped to the image.
    channel_colors
        Hex RRGGBB per channel; by default the usual colour of known stains (DNA blue, ...).

    Notes
    -----
    Write from one thread: the writer keeps the list of written wells and fields in memory (the
    demo generator computes fields in threads and writes them from the main thread). To write fields
    from several processes, the plate's writer reserves each field (:meth:`reserve_field`) and every
    process writes its fields through its own writer opened with ``open(replace=False)``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        name: str,
        channel_names: Sequence[str],
        pixel_size: float | Sequence[float],
        version: str = "0.5",
        rows: int | Sequence[str] | None = None,
        columns: int | Sequence[int | str] | None = None,
        field_count: int = 1,
        levels: int = 2,
        chunks: Sequence[int] | None = None,
        channel_colors: Sequence[str] | None = None,
    ) -> None:
        if version not in ("0.4", "0.5"):
            msg = f"{path}: NGFF version must be '0.4' or '0.5', got {version!r}"
            raise PlateFormatError(msg)
        self.path = Path(path)
        self.name = str(name)
        self.channel_names = [str(c) for c in channel_names]
        if not self.channel_names or len(set(self.channel_names)) != len(self.channel_names):
            msg = f"{path}: channel names must be non-empty and unique, got {self.channel_names}"
            raise PlateFormatError(msg)
        self.pixel_size = _pixel_size_yx(pixel_size)
        self.version = version
        self.rows = _names(rows, "rows")
        self.columns = _names(columns, "columns")
        self.field_count = int(field_count)
        if int(levels) < 1:
            msg = f"{path}: levels must be at least 1, got {levels}"
            raise PlateFormatError(msg)
        self.levels = int(levels)
        self.chunks = tuple(int(c) for c in chunks) if chunks is not None else (1, 256, 256)
        if len(self.chunks) != 3:
            msg = f"{path}: chunks must be (c, y, x), got {self.chunks}"
            raise PlateFormatError(msg)
        colors = list(channel_colors) if channel_colors is not None else default_channel_colors(self.channel_names)
        if len(colors) != len(self.channel_names):
            msg = f"{path}: {len(colors)} channel colours for {len(self.channel_names)} channels"
            raise PlateFormatError(msg)
        self.channel_colors = [str(c).lstrip("#").upper() for c in colors]
        for color in self.channel_colors:
            if len(color) != 6 or any(ch not in "0123456789ABCDEF" for ch in color):
                msg = f"{path}: channel colour {color!r} is not hex RRGGBB"
                raise PlateFormatError(msg)
        self._wells: dict[tuple[str, str], list[str]] = {}
        self._root: zarr.Group | None = None

    # -- context management -------------------------------------------------------------------

    def __enter__(self) -> PlateWriter:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            logger.warning("%s: writing failed, plate metadata not written (%s)", self.path, exc_type.__name__)
            self._root = None

    def open(self, *, replace: bool = True) -> None:
        """Create the store (replacing an existing zarr store at the path).

        With ``replace=False`` an existing plate store is opened to add fields to it instead: how
        worker processes write the fields that the plate's own writer, in another process, reserved
        with :meth:`reserve_field` (such a writer is never closed; the reserving one finalises the plate).
        """
        if not replace:
            if not any((self.path / f).exists() for f in ("zarr.json", ".zgroup")):
                msg = f"{self.path}: no zarr store to add fields to; open the plate's own writer first"
                raise RunDirectoryError(msg)
            self._root = zarr.open_group(str(self.path), mode="r+", zarr_format=3 if self.version == "0.5" else 2)
            return
        if self.path.exists():
            is_store = any((self.path / f).exists() for f in ("zarr.json", ".zgroup", ".zarray"))
            if self.path.is_dir() and (is_store or not any(self.path.iterdir())):
                logger.info("%s: replacing existing store", self.path)
                shutil.rmtree(self.path)
            else:
                msg = f"{self.path}: exists and is not a zarr store; refusing to overwrite it"
                raise RunDirectoryError(msg)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._root = zarr.open_group(str(self.path), mode="w", zarr_format=3 if self.version == "0.5" else 2)

    def _fmt(self) -> Any:
        from ome_zarr.format import FormatV04, FormatV05

        return FormatV05() if self.version == "0.5" else FormatV04()

    # -- writing ---------------------------------------------------------------------------------

    def write_field(
        self,
        well: str,
        field: str | int,
        image: np.ndarray,
        labels: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Write one field: ``image`` (c, y, x) in channel order, plus named (y, x) label images.

        Writing the same well and field again replaces it.
        """
        from ome_zarr.writer import write_multiscales_metadata
        from ome_zarr_models.common.omero import Omero

        if self._root is None:
            msg = f"{self.path}: PlateWriter is not open; use it as a context manager"
            raise RunDirectoryError(msg)
        row, column = parse_well_name(well)
        field = str(field)
        where = f"{self.path} {well_name(row, column)}/{field}"
        if not field.isalnum():
            msg = f"{where}: field path {field!r} must be letters and digits only"
            raise PlateFormatError(msg)
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[0] != len(self.channel_names):
            msg = (f"{where}: image must be (c, y, x) with c = {len(self.channel_names)} channels "
                   f"{self.channel_names}, got shape {image.shape}")
            raise PlateFormatError(msg)
        if image.dtype.kind not in "uif" or image.dtype.itemsize > 8:
            msg = f"{where}: image dtype {image.dtype} is not a numeric pixel type"
            raise PlateFormatError(msg)

        key = (row, str(column))
        fields = self._wells.setdefault(key, [])
        well_group = self._root.require_group(row).require_group(str(column))
        if field in fields:
            del well_group[field]
        else:
            fields.append(field)
        group = well_group.require_group(field)
        pyramid = image_pyramid(image, self.levels)
        axes = ["c", "y", "x"]
        paths = [f"s{i}" for i in range(len(pyramid))]
        for path, level in zip(paths, pyramid):
            write_level(group, path, level, self.chunks, axes)
        transforms = level_transforms([p.shape for p in pyramid], [1.0, *self.pixel_size])
        omero = Omero.model_validate(self._omero(image, field)).model_dump(exclude_none=True)
        write_multiscales_metadata(
            group,
            datasets=[{"path": p, "coordinateTransformations": t} for p, t in zip(paths, transforms)],
            fmt=self._fmt(),
            axes=axes,
            axes_units={"y": "micrometer", "x": "micrometer"},
            name=field,
            metadata={"omero": omero},
        )
        for label_name, label_image in (labels or {}).items():
            write_label_image(group, label_name, label_image, where=where)

    def reserve_field(self, well: str, field: str | int) -> None:
        """Announce a field that another writer will write into this store (e.g. a worker process).

        The well's groups are created now, so writers working in parallel never race to create them,
        and :meth:`close` lists the field in the well and plate metadata like one written here.
        """
        if self._root is None:
            msg = f"{self.path}: PlateWriter is not open; use it as a context manager"
            raise RunDirectoryError(msg)
        row, column = parse_well_name(well)
        field = str(field)
        if not field.isalnum():
            msg = f"{self.path} {well_name(row, column)}/{field}: field path {field!r} must be letters and digits only"
            raise PlateFormatError(msg)
        self._root.require_group(row).require_group(str(column))
        fields = self._wells.setdefault((row, str(column)), [])
        if field not in fields:
            fields.append(field)

    def _omero(self, image: np.ndarray, field: str) -> dict[str, Any]:
        if image.dtype.kind in "ui":
            info = np.iinfo(image.dtype)
            lo, hi = float(info.min), float(info.max)
        else:
            lo, hi = float(np.nanmin(image)), float(np.nanmax(image))
        channels = []
        for i, (label, color) in enumerate(zip(self.channel_names, self.channel_colors)):
            plane = image[i]
            start, end = (float(plane.min()), float(plane.max())) if plane.size else (lo, hi)
            channels.append({
                "label": label,
                "color": color,
                "active": True,
                "coefficient": 1.0,
                "family": "linear",
                "inverted": False,
                "window": {"min": lo, "max": hi, "start": start, "end": max(end, start + 1e-6)},
            })
        return {"name": field, "channels": channels,
                "rdefs": {"defaultT": 0, "defaultZ": 0, "model": "color"}}

    # -- finalising -----------------------------------------------------------------------------

    def close(self) -> None:
        """Write every well's and the plate's metadata; the plate is complete afterwards."""
        from ome_zarr.writer import write_plate_metadata, write_well_metadata

        if self._root is None:
            return
        if not self._wells:
            msg = f"{self.path}: no fields were written; an HCS plate needs at least one well"
            raise PlateFormatError(msg)
        fmt = self._fmt()
        rows, columns = self._layout()
        wells = sorted(self._wells, key=lambda rc: (row_index(rc[0]), int(rc[1])))
        for row, column in wells:
            group = self._root[row][column]
            write_well_metadata(group, [{"path": f} for f in self._wells[(row, column)]], fmt=fmt)
        field_count = max(self.field_count, *(len(f) for f in self._wells.values()))
        write_plate_metadata(
            self._root,
            rows,
            columns,
            [f"{r}/{c}" for r, c in wells],
            fmt=fmt,
            name=self.name,
            field_count=field_count,
        )
        logger.info("%s: wrote plate %r (%d wells, NGFF %s)", self.path, self.name, len(wells), self.version)
        self._root = None

    def _layout(self) -> tuple[list[str], list[str]]:
        used_rows = {r for r, _ in self._wells}
        used_cols = {c for _, c in self._wells}
        n_rows = max(row_index(r) for r in used_rows) + 1
        n_cols = max(int(c) for c in used_cols)
        rows, columns = self.rows, self.columns
        if rows is None or columns is None:
            fit = next(((r, c) for r, c in PLATE_FORMATS if r >= n_rows and c >= n_cols), (n_rows, n_cols))
            rows = rows if rows is not None else [row_name(i) for i in range(fit[0])]
            columns = columns if columns is not None else [str(i + 1) for i in range(fit[1])]
        missing = sorted({r for r in used_rows if r not in rows}) + sorted({c for c in used_cols if c not in columns})
        if missing:
            msg = f"{self.path}: wells use rows/columns {missing} that are not in the plate layout {rows} x {columns}"
            raise PlateFormatError(msg)
        return list(rows), list(columns)
