"""Open an NGFF HCS plate lazily: wells, fields, channels, pixel size, levels and label images.

:func:`open_plate` reads the plate's own metadata and nothing else; a well's metadata is read the
first time the well is asked about, a field's when the field is, and pixels only when an array is
computed. So a 384-well plate opens instantly, and a :class:`Plate` is cheap to send to workers,
which then read their fields themselves.

NGFF 0.4 (Zarr v2) and 0.5 (Zarr v3) plates open identically, from local paths or fsspec URLs.
Level array paths always come from the ``multiscales`` metadata ("0" and "s0" styles both occur).
What is in the store counts: consolidated metadata (which ngff-zarr writes into every image, and
users add before uploading a plate) is never read, so label images added after a plate was written
are found (see :mod:`subcell_scale.io.consolidated`).

z and t: analysis is 2-D. By default time point 0 is used and z stacks are max-projected (the usual
choice for widefield HCS); ``open_plate(path, z=INDEX)`` selects one plane instead and
``t=INDEX`` another time point. Label images are read at the same t and must have one z plane
unless a plane is selected.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Any, Literal

import dask.array as da
from dask.base import tokenize
import numpy as np
import xarray as xr
import zarr
import zarr.errors

from .._docs import doc_params
from ..errors import PlateFormatError, PlateNotFoundError, SubcellScaleError, WellNameError
from ._ngff import SUPPORTED_AXES, axis_names, dataset_scale, ngff_version, ome_attrs, um_per_unit
from .consolidated import open_on_disk
from .wells import normalize_well_name, row_index, well_name

logger = logging.getLogger(__name__)


MissingChunks = Literal["raise", "fill"]
"""What reading a field does where an image chunk is not in the store: fail, or read the fill value."""

_SHOWN_KEYS = 8


class _NamedArray:
    """A zarr array whose read errors name the plate, well, field and level they came from.

    Dask reads chunks through ``__getitem__``, so a corrupt chunk surfaces as a
    :class:`PlateFormatError` saying where it is, not as a codec traceback. Zarr reads a chunk that
    is not in the store as the array's fill value; with ``missing_chunks="raise"`` every chunk a
    read touches must be stored (one listing of the array's keys, on its first read), so a lost or
    unreadable chunk fails the read, naming its keys, instead of giving black pixels.
    """

    def __init__(self, array: zarr.Array, where: str, *, missing_chunks: MissingChunks = "raise") -> None:
        self.array = array
        self.where = where
        self.missing_chunks = missing_chunks
        self.shape = array.shape
        self.dtype = array.dtype
        self.ndim = array.ndim
        self.chunks = array.chunks
        self._stored: frozenset[str] | None = None

    def __getitem__(self, key: Any) -> np.ndarray:
        if self.missing_chunks == "raise":
            self._check_stored(key)
        try:
            return self.array[key]
        except SubcellScaleError:
            raise
        except Exception as exc:
            msg = f"{self.where}: cannot read a chunk ({type(exc).__name__}: {exc}); the store is damaged"
            raise PlateFormatError(msg) from exc

    def _stored_keys(self) -> frozenset[str]:
        """Keys of the objects stored under the array (chunk or shard files, relative to the array)."""
        if self._stored is None:
            from zarr.core.sync import collect_aiterator

            prefix = f"{self.array.path}/" if self.array.path else ""
            try:
                keys = collect_aiterator(self.array.store.list_prefix(prefix))
            except Exception as exc:
                msg = f"{self.where}: cannot list the array's chunks ({type(exc).__name__}: {exc})"
                raise PlateFormatError(msg) from exc
            self._stored = frozenset(k[len(prefix):] if k.startswith(prefix) else k for k in keys)
        return self._stored

    def _check_stored(self, key: Any) -> None:
        grid = self.array.shards or self.array.chunks  # what the store holds: shards, or chunks
        ranges = _grid_ranges(key, self.shape, grid)
        if ranges is None:  # not a plain block selection: every stored object of the array counts
            ranges = [range(-(-n // size)) for n, size in zip(self.shape, grid)]
        if any(len(r) == 0 for r in ranges):
            return
        stored = self._stored_keys()
        encode = self.array.metadata.encode_chunk_key
        missing = [encode(coords) for coords in itertools.product(*ranges) if encode(coords) not in stored]
        if missing:  # counted over the whole array: a read of one channel must not report its share only
            every = [range(-(-n // size)) for n, size in zip(self.shape, grid)]
            missing = [encode(coords) for coords in itertools.product(*every) if encode(coords) not in stored]
            path = self.array.path
            shown = ", ".join(f"{path}/{k}" for k in missing[:_SHOWN_KEYS])
            more = f" and {len(missing) - _SHOWN_KEYS} more" if len(missing) > _SHOWN_KEYS else ""
            msg = (f"{self.where}: {len(missing)} chunk(s) inside the array's extent {self.shape} are missing from "
                   f"the store: {shown}{more}; zarr would read them as the fill value "
                   f"{self.array.fill_value} (black pixels). Restore them, or open the plate with "
                   "missing_chunks='fill' if it was written sparsely on purpose")
            raise PlateFormatError(msg)


def _grid_ranges(key: Any, shape: tuple[int, ...], grid: tuple[int, ...]) -> list[range] | None:
    """Per dimension, the grid cells (chunks or shards) a basic selection touches; None if not basic."""
    if not isinstance(key, tuple):
        key = (key,)
    ellipsis = [i for i, k in enumerate(key) if k is Ellipsis]
    if ellipsis:
        i = ellipsis[0]
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1:]
    key = key + (slice(None),) * (len(shape) - len(key))
    ranges = []
    for k, n, size in zip(key, shape, grid):
        if isinstance(k, (int, np.integer)):
            i = int(k) + n if k < 0 else int(k)
            ranges.append(range(i // size, i // size + 1))
        elif isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step != 1:
                return None
            ranges.append(range(start // size, (stop - 1) // size + 1) if stop > start else range(0))
        else:
            return None
    return ranges


class Plate:
    """A lazily opened NGFF HCS plate. Create it with :func:`open_plate`.

    Attributes
    ----------
    path
        The plate's location as given (local path made absolute, or a URL).
    name
        The plate name from its metadata, or the store name without ``.zarr``.
    version
        NGFF version of the plate, "0.4" or "0.5".
    wells
        Normalised well names ("B03"), in the order the plate lists them.
    missing_chunks
        "raise" or "fill": what reading an image chunk that is not in the store does (see
        :func:`open_plate`).
    """

    def __init__(
        self,
        path: str,
        root: zarr.Group,
        *,
        storage_options: dict[str, Any] | None = None,
        z: int | Literal["max"] = "max",
        t: int = 0,
        missing_chunks: MissingChunks = "raise",
    ) -> None:
        self.path = path
        self.storage_options = storage_options
        self.z = z
        self.t = int(t)
        self.missing_chunks = missing_chunks
        self._root: zarr.Group | None = root
        attrs = ome_attrs(root)
        plate = attrs.get("plate")
        if not isinstance(plate, dict):
            raise PlateFormatError(_not_a_plate_message(path, attrs))
        self._plate_meta = plate
        version = ngff_version(attrs, "plate")
        if version is None:
            version = "0.5" if root.metadata.zarr_format == 3 else "0.4"
            logger.warning("%s: plate metadata has no version; reading it as NGFF %s", path, version)
        self.version = version
        stem = Path(str(path).rstrip("/")).name
        self.name = str(plate.get("name") or (stem[: -len(".zarr")] if stem.endswith(".zarr") else stem))
        self._well_paths: dict[str, str] = {}
        self._row_column: dict[str, tuple[str, int]] = {}
        for entry in plate.get("wells", []):
            well_path = str(entry.get("path", "")) if isinstance(entry, dict) else ""
            parts = well_path.split("/")
            if len(parts) != 2:
                msg = f"{path}: plate well path {well_path!r} is not 'row/column'"
                raise PlateFormatError(msg)
            try:
                row_index(parts[0])
                column = int(parts[1])
                name = well_name(parts[0], column)
            except (ValueError, WellNameError):
                msg = f"{path}: well path {well_path!r} is not row letters / column number"
                raise PlateFormatError(msg) from None
            if name in self._well_paths:
                msg = f"{path}: wells {self._well_paths[name]!r} and {well_path!r} are both well {name}"
                raise PlateFormatError(msg)
            self._well_paths[name] = well_path
            self._row_column[name] = (parts[0], column)
        if not self._well_paths:
            msg = f"{path}: the plate metadata lists no wells"
            raise PlateFormatError(msg)
        self.wells = list(self._well_paths)
        self._well_meta: dict[str, dict[str, Any]] = {}
        self._field_meta: dict[tuple[str, str], dict[str, Any]] = {}
        self._label_meta: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._unit_warned = False

    @property
    def open_options(self) -> dict[str, Any]:
        """The :func:`open_plate` keyword arguments this plate was opened with (workers reopen it so)."""
        return {"storage_options": self.storage_options, "z": self.z, "t": self.t,
                "missing_chunks": self.missing_chunks}

    # -- pickling: workers reopen the store themselves -------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_root"] = None
        return state

    @property
    def root(self) -> zarr.Group:
        """The plate's root zarr group (reopened read-only after unpickling)."""
        if self._root is None:
            self._root = _open_root(self.path, self.storage_options)
        return self._root

    def __repr__(self) -> str:
        return f"Plate({self.path!r}, name={self.name!r}, version={self.version!r}, wells={len(self.wells)})"

    # -- plate-level metadata ---------------------------------------------------------------------

    @property
    def rows(self) -> list[str]:
        """Row names of the plate layout (every physical row, as the plate lists them)."""
        return [str(r["name"]) for r in self._plate_meta.get("rows", [])]

    @property
    def columns(self) -> list[str]:
        """Column names of the plate layout."""
        return [str(c["name"]) for c in self._plate_meta.get("columns", [])]

    @property
    def acquisitions(self) -> list[dict[str, Any]]:
        """The plate's acquisitions (``id``, ``name``, ...), empty when it declares none."""
        return [dict(a) for a in self._plate_meta.get("acquisitions", []) or []]

    @property
    def field_count(self) -> int | None:
        """The plate's declared maximum number of fields per well, if it says."""
        value = self._plate_meta.get("field_count")
        return int(value) if value is not None else None

    def row_column(self, well: str) -> tuple[str, int]:
        """(row name, column number as on the plate, 1-based) of a well: "B03" -> ("B", 3)."""
        return self._row_column[self._well(well)]

    def well_path(self, well: str) -> str:
        """The well's path inside the store ("B/3")."""
        return self._well_paths[self._well(well)]

    def _well(self, well: str) -> str:
        try:
            name = normalize_well_name(well)
        except WellNameError as exc:
            raise PlateNotFoundError(f"{self.path}: {exc}") from None
        if name not in self._well_paths:
            shown = ", ".join(self.wells[:8]) + (", ..." if len(self.wells) > 8 else "")
            msg = f"{self.path}: well {name} is not in the plate (wells: {shown})"
            raise PlateNotFoundError(msg)
        return name

    def _group(self, path: str, what: str) -> zarr.Group:
        try:
            node = self.root[path]
        except (KeyError, FileNotFoundError, zarr.errors.NodeNotFoundError):
            msg = f"{self.path}: {what} is listed in the metadata but {path!r} is missing from the store"
            raise PlateFormatError(msg) from None
        except ValueError as exc:  # json.JSONDecodeError
            raise _invalid_metadata(f"{self.path}: {what}", path, exc) from None
        if not isinstance(node, zarr.Group):
            msg = f"{self.path}: {what} at {path!r} is an array, expected a group"
            raise PlateFormatError(msg)
        return node

    # -- wells and fields --------------------------------------------------------------------------

    def _well_images(self, well: str) -> list[dict[str, Any]]:
        name = self._well(well)
        if name not in self._well_meta:
            group = self._group(self._well_paths[name], f"well {name}")
            meta = ome_attrs(group).get("well")
            if not isinstance(meta, dict):
                msg = f"{self.path}: well {name} ({self._well_paths[name]}) has no 'well' metadata"
                raise PlateFormatError(msg)
            images = [i for i in meta.get("images", []) if isinstance(i, dict) and "path" in i]
            if not images:
                msg = f"{self.path}: well {name} is empty (its 'well' metadata lists no images)"
                raise PlateFormatError(msg)
            self._well_meta[name] = {"images": images}
        return self._well_meta[name]["images"]

    def fields(self, well: str, *, acquisition: int | None = None) -> list[str]:
        """Field (image) paths of a well, in the well's order; optionally of one acquisition."""
        images = self._well_images(well)
        if acquisition is not None:
            images = [i for i in images if i.get("acquisition") == acquisition]
        return [str(i["path"]) for i in images]

    def _field(self, well: str, field: str | int) -> tuple[str, dict[str, Any]]:
        name = self._well(well)
        field = str(field)
        key = (name, field)
        if key not in self._field_meta:
            if field not in self.fields(name):
                msg = f"{self.path}: well {name} has no field {field!r} (fields: {self.fields(name)})"
                raise PlateNotFoundError(msg)
            where = f"{self.path} {name}/{field}"
            path = f"{self._well_paths[name]}/{field}"
            self._field_meta[key] = _image_meta(self.root, path, self._group(path, f"field {name}/{field}"), where)
        return name, self._field_meta[key]

    def n_levels(self, well: str, field: str | int) -> int:
        """Number of resolution levels of a field's image."""
        return len(self._field(well, field)[1]["datasets"])

    def field_channel_names(self, well: str, field: str | int) -> list[str]:
        """Channel names of one field (omero labels; "c0", "c1", ... when it has none)."""
        return list(self._field(well, field)[1]["channel_names"])

    def field_pixel_size(self, well: str, field: str | int, level: int = 0) -> tuple[float, float]:
        """(y, x) pixel size in micrometres of one field at one level."""
        name, meta = self._field(well, field)
        self._check_level(name, field, meta, level)
        scale = meta["scales"][level]
        axes = meta["axes"]
        factors = meta["um_per_unit"]
        if None in (factors["y"], factors["x"]) and not self._unit_warned:
            logger.warning("%s %s/%s: spatial axes have no length unit; assuming micrometres", self.path, name, field)
            self._unit_warned = True
        iy, ix = axes.index("y"), axes.index("x")
        return (scale[iy] * (factors["y"] or 1.0), scale[ix] * (factors["x"] or 1.0))

    @property
    def channel_names(self) -> list[str]:
        """Channel names of the plate (those of its first field)."""
        well = self.wells[0]
        return self.field_channel_names(well, self.fields(well)[0])

    @property
    def pixel_size(self) -> tuple[float, float]:
        """(y, x) micrometres per pixel at level 0 (of the first field)."""
        well = self.wells[0]
        return self.field_pixel_size(well, self.fields(well)[0])

    def _check_level(self, well: str, field: str | int, meta: dict[str, Any], level: int) -> None:
        n = len(meta["datasets"])
        if not 0 <= int(level) < n:
            msg = f"{self.path} {well}/{field}: level {level} does not exist (the image has {n} levels)"
            raise PlateNotFoundError(msg)

    # -- pixels ----------------------------------------------------------------------------------

    def _level_array(self, group_path: str, dataset_path: str, where: str, *,
                     missing_chunks: MissingChunks = "fill") -> _NamedArray:
        full = f"{group_path}/{dataset_path}"
        try:
            node = self.root[full]
        except (KeyError, FileNotFoundError, zarr.errors.NodeNotFoundError):
            msg = f"{where}: level array {dataset_path!r} is listed in multiscales but missing from the store"
            raise PlateFormatError(msg) from None
        except ValueError as exc:  # json.JSONDecodeError
            raise _invalid_metadata(where, full, exc) from None
        if not isinstance(node, zarr.Array):
            msg = f"{where}: level {dataset_path!r} is a group, expected an array"
            raise PlateFormatError(msg)
        return _NamedArray(node, where, missing_chunks=missing_chunks)

    def image(self, well: str, field: str | int, level: int = 0) -> xr.DataArray:
        """A field's image as a dask-backed DataArray with dims ("c", "y", "x").

        The ``c`` coordinate holds the channel names; ``attrs`` holds plate, well, field, level and
        ``pixel_size`` (y, x micrometres at this level). t and z are reduced as the plate was opened.
        """
        name, meta = self._field(well, field)
        field = str(field)
        self._check_level(name, field, meta, level)
        dataset = meta["datasets"][level]
        where = f"{self.path} {name}/{field} level {level}"
        source = self._level_array(f"{self._well_paths[name]}/{field}", dataset, where,
                                   missing_chunks=self.missing_chunks)
        axes = meta["axes"]
        if source.ndim != len(axes):
            msg = f"{where}: array has {source.ndim} dimensions but the axes are {axes}"
            raise PlateFormatError(msg)
        token = "plate-image-" + tokenize(self.path, name, field, dataset)
        data = da.from_array(source, chunks=source.chunks, name=token, asarray=True, fancy=False,
                             meta=np.empty((0,) * source.ndim, dtype=source.dtype))
        data, axes = self._reduce_t_z(data, axes, where, labels=False)
        if "c" not in axes:
            data, axes = data[None], ["c", *axes]
        data = data.transpose(*[axes.index(a) for a in ("c", "y", "x")])
        channels = meta["channel_names"]
        if len(channels) != data.shape[0]:
            msg = f"{where}: omero lists {len(channels)} channels but the c axis has {data.shape[0]}"
            raise PlateFormatError(msg)
        return xr.DataArray(
            data,
            dims=("c", "y", "x"),
            coords={"c": list(channels)},
            name=f"{self.name}/{name}/{field}",
            attrs={"plate": self.name, "well": name, "field": field, "level": int(level),
                   "pixel_size": self.field_pixel_size(name, field, level)},
        )

    def _reduce_t_z(self, data: da.Array, axes: list[str], where: str, *, labels: bool) -> tuple[da.Array, list[str]]:
        axes = list(axes)
        if "t" in axes:
            i = axes.index("t")
            if not 0 <= self.t < data.shape[i]:
                msg = f"{where}: time point t={self.t} does not exist ({data.shape[i]} time points)"
                raise PlateNotFoundError(msg)
            data = data[(slice(None),) * i + (self.t,)]
            axes.pop(i)
        if "z" in axes:
            i = axes.index("z")
            n = data.shape[i]
            if self.z == "max":
                if n == 1:
                    data = data[(slice(None),) * i + (0,)]
                elif labels:
                    msg = (f"{where}: label image has {n} z planes; open the plate with z=INDEX "
                           "to pick the plane the labels belong to")
                    raise PlateFormatError(msg)
                else:
                    data = data.max(axis=i)
            else:
                z = int(self.z)
                if n == 1:
                    z = 0
                elif not 0 <= z < n:
                    msg = f"{where}: plane z={z} does not exist ({n} planes)"
                    raise PlateNotFoundError(msg)
                data = data[(slice(None),) * i + (z,)]
            axes.pop(i)
        return data, axes

    def read_field(self, well: str, field: str | int, level: int = 0) -> np.ndarray:
        """A field's pixels as a numpy array (c, y, x); a damaged chunk raises PlateFormatError."""
        return np.asarray(self.image(well, field, level).data.compute(scheduler="synchronous"))

    # -- labels ----------------------------------------------------------------------------------

    def label_names(self, well: str, field: str | int) -> list[str]:
        """Names of the label images of a field, as the store holds them now (empty when it has none).

        The names listed by the field's ``labels`` group come first, then those listed by the image
        group itself (where iohub keeps them), then label images present in the ``labels`` group but
        listed nowhere (written by a tool that did not update the listing). Consolidated metadata is
        never consulted, so labels added after the plate was written are found.
        """
        name, _ = self._field(well, field)
        field = str(field)
        field_path = f"{self._well_paths[name]}/{field}"
        try:
            group = open_on_disk(self.root.store, f"{field_path}/labels")
        except (KeyError, FileNotFoundError, zarr.errors.NodeNotFoundError, zarr.errors.ContainsArrayError):
            return []
        names = [str(n) for n in ome_attrs(group).get("labels", []) or []]
        image_listing = ome_attrs(self.root[field_path]).get("labels")
        if isinstance(image_listing, dict):
            image_listing = image_listing.get("labels")
        if isinstance(image_listing, list):
            names += [str(n) for n in image_listing]
        for key in sorted(group.group_keys()):
            if key not in names and "multiscales" in ome_attrs(group[key]):
                names.append(key)
        return list(dict.fromkeys(names))

    def check_labels(self, well: str, field: str | int, name: str) -> None:
        """Raise :class:`PlateFormatError` when a level the label image lists is not in the store (a write cut
        short, by a crash or by another process): reading level 0 alone would not notice."""
        for level in range(1, len(self._labels_meta(well, field, name)[1]["datasets"])):
            self.labels(well, field, name, level)

    def _labels_meta(self, well: str, field: str | int, name: str) -> tuple[str, dict[str, Any]]:
        """The group path and the (cached) multiscales of a label image."""
        well_name_, _ = self._field(well, field)
        field = str(field)
        group_path = f"{self._well_paths[well_name_]}/{field}/labels/{name}"
        key = (well_name_, field, name)
        if key not in self._label_meta:
            group = self._group(group_path, f"labels {name!r}")
            where = f"{self.path} {well_name_}/{field} labels {name!r}"
            self._label_meta[key] = _image_meta(self.root, group_path, group, where)
        return group_path, self._label_meta[key]

    def labels(self, well: str, field: str | int, name: str, level: int = 0) -> xr.DataArray:
        """A label image of a field as a dask-backed DataArray with dims ("y", "x")."""
        well_name_, _ = self._field(well, field)
        field = str(field)
        if name not in self.label_names(well_name_, field):
            msg = (f"{self.path} {well_name_}/{field}: no label image {name!r} "
                   f"(labels: {self.label_names(well_name_, field)})")
            raise PlateNotFoundError(msg)
        where = f"{self.path} {well_name_}/{field} labels {name!r}"
        group_path, meta = self._labels_meta(well_name_, field, name)
        self._check_level(well_name_, field, meta, level)
        source = self._level_array(group_path, meta["datasets"][level], f"{where} level {level}")
        token = "plate-labels-" + tokenize(self.path, well_name_, field, name, meta["datasets"][level])
        data = da.from_array(source, chunks=source.chunks, name=token, asarray=True, fancy=False,
                             meta=np.empty((0,) * source.ndim, dtype=source.dtype))
        data, axes = self._reduce_t_z(data, meta["axes"], where, labels=True)
        if "c" in axes:
            i = axes.index("c")
            if data.shape[i] != 1:
                msg = f"{where}: label image has {data.shape[i]} channels, expected 1"
                raise PlateFormatError(msg)
            data = data[(slice(None),) * i + (0,)]
            axes.pop(i)
        data = data.transpose(axes.index("y"), axes.index("x"))
        return xr.DataArray(data, dims=("y", "x"), name=name,
                            attrs={"plate": self.name, "well": well_name_, "field": field, "level": int(level)})

    def level_path(self, well: str, field: str | int, level: int = 0, *, label: str | None = None) -> str:
        """Store path of the array a field's image (or its label image ``label``) has at ``level``.

        Relative to the plate root, e.g. "B/3/0/s0" or "B/3/0/labels/cells/0": the array whose chunk
        files are read when that image is computed.
        """
        name, meta = self._field(well, field)
        field = str(field)
        group_path = f"{self._well_paths[name]}/{field}"
        if label is not None:
            self.labels(name, field, label, level)  # checks the label image and caches its metadata
            meta = self._label_meta[(name, field, label)]
            group_path = f"{group_path}/labels/{label}"
        self._check_level(name, field, meta, level)
        return f"{group_path}/{meta['datasets'][level]}"

    def forget_labels(self, well: str, field: str | int, name: str) -> None:
        """Drop cached metadata of a label image (after it was rewritten)."""
        self._label_meta.pop((normalize_well_name(well), str(field), name), None)

    def read_labels(self, well: str, field: str | int, name: str, level: int = 0) -> np.ndarray:
        """A label image as a numpy array (y, x)."""
        return np.asarray(self.labels(well, field, name, level).data.compute(scheduler="synchronous"))


def _image_meta(root: zarr.Group, path: str, group: zarr.Group, where: str) -> dict[str, Any]:
    """What the reader needs from the multiscales and omero of the image (or label image) ``group``.

    ``group`` is the node at ``path`` of the plate ``root``; its arrays are looked up through the
    root, which reads the store rather than a consolidated listing.
    """
    attrs = ome_attrs(group)
    multiscales = attrs.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales:
        msg = f"{where}: no 'multiscales' metadata (not an NGFF image)"
        raise PlateFormatError(msg)
    multiscale = multiscales[0]
    raw_axes = multiscale.get("axes")
    if not raw_axes:
        msg = f"{where}: multiscales has no 'axes'"
        raise PlateFormatError(msg)
    axes = axis_names(raw_axes)
    if any(a not in SUPPORTED_AXES for a in axes) or len(set(axes)) != len(axes) or not {"y", "x"} <= set(axes):
        msg = f"{where}: unsupported axes {axes}; subcell-scale reads images whose axes are among t, c, z, y, x"
        raise PlateFormatError(msg)
    units = {}
    for a, raw in zip(axes, raw_axes):
        if a in ("y", "x"):
            unit = raw.get("unit") if isinstance(raw, dict) else None
            factor = um_per_unit(unit)
            if unit is not None and factor is None:
                msg = f"{where}: axis {a!r} has unit {unit!r}, which is not a length subcell-scale can convert"
                raise PlateFormatError(msg)
            units[a] = factor
    datasets = multiscale.get("datasets") or []
    if not datasets or not all(isinstance(d, dict) and "path" in d for d in datasets):
        msg = f"{where}: multiscales lists no dataset paths"
        raise PlateFormatError(msg)
    scales = []
    for level in range(len(datasets)):
        scale = dataset_scale(multiscale, level)
        if scale is None or len(scale) != len(axes):
            msg = f"{where}: level {level} has no 'scale' transformation with one value per axis"
            raise PlateFormatError(msg)
        scales.append(scale)
    channels = [c.get("label") for c in (attrs.get("omero") or {}).get("channels", []) if isinstance(c, dict)]
    if not channels or any(not c for c in channels):
        n_channels = None
        if "c" in axes:
            try:
                first = root[f"{path}/{datasets[0]['path']}"]
            except (KeyError, FileNotFoundError, zarr.errors.NodeNotFoundError):
                first = None
            n_channels = first.shape[axes.index("c")] if isinstance(first, zarr.Array) else None
        channels = [f"c{i}" for i in range(n_channels or 1)]
    return {
        "axes": axes,
        "datasets": [str(d["path"]) for d in datasets],
        "scales": scales,
        "um_per_unit": units,
        "channel_names": [str(c) for c in channels],
    }


def _not_a_plate_message(path: str, attrs: dict[str, Any]) -> str:
    if "multiscales" in attrs:
        return f"{path}: this is a single NGFF image (multiscales), not an HCS plate; no 'plate' metadata"
    if "well" in attrs:
        return f"{path}: this is one well of a plate, not the plate; open its plate (two levels up)"
    if "labels" in attrs or "image-label" in attrs:
        return f"{path}: this is a labels group, not an HCS plate"
    return f"{path}: a zarr group without NGFF 'plate' metadata, not an HCS plate"


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def local_path(path: str) -> str:
    """A local plate path without its ``file://`` prefix."""
    return path[len("file://"):] if path.startswith("file://") else path


def _invalid_metadata(where: str, path: str, exc: ValueError) -> PlateFormatError:
    return PlateFormatError(f"{where}: the metadata of {path!r} is not valid JSON ({exc})")


def _open_root(path: str, storage_options: dict[str, Any] | None) -> zarr.Group:
    try:
        if _is_url(path):
            return open_on_disk(path, storage_options=storage_options)
        return open_on_disk(local_path(path))
    except zarr.errors.ContainsArrayError:
        msg = f"{path}: a bare zarr array, not an HCS plate (a plate is a group with 'plate' metadata)"
        raise PlateFormatError(msg) from None
    except (zarr.errors.NodeNotFoundError, FileNotFoundError) as exc:
        msg = f"{path}: no zarr group here ({exc})"
        raise PlateFormatError(msg) from None
    except OSError as exc:  # a server or bucket that cannot be reached
        msg = f"{path}: the plate cannot be reached ({type(exc).__name__}: {exc})"
        raise PlateNotFoundError(msg) from None
    except ValueError as exc:  # json.JSONDecodeError: a metadata file cut short or overwritten
        names = [n for n in ("zarr.json", ".zgroup", ".zattrs") if not _is_url(path)
                 and (Path(local_path(path)) / n).is_file()] or ["zarr.json"]
        msg = f"{path}/{names[0]}: the plate's metadata is not valid JSON ({exc})"
        raise PlateFormatError(msg) from None


@doc_params
def open_plate(
    path: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    z: int | Literal["max"] = "max",
    t: int = 0,
    missing_chunks: MissingChunks = "raise",
) -> Plate:
    """Open an NGFF HCS plate (0.4 or 0.5) lazily, reading only its plate metadata.

    Parameters
    ----------
    path
        A local path (``str`` or ``Path``), a ``file://`` URL or any fsspec URL (``s3://``,
        ``memory://``, ...).
    {storage_options}
    z
        "max" (default) max-projects z stacks; an int selects that plane.
    t
        The time point to read (default 0).
    {missing_chunks}

    Raises
    ------
    PlateNotFoundError
        Nothing exists at a local ``path``.
    PlateFormatError
        Something exists but is not an HCS plate (a bare image file, a zarr array, a group without
        plate metadata, a single image or well), naming what it is.
    """
    if z != "max" and not isinstance(z, (int, np.integer)):
        msg = f"z must be 'max' or a plane index, got {z!r}"
        raise PlateFormatError(msg)
    if missing_chunks not in ("raise", "fill"):
        msg = f"missing_chunks must be 'raise' or 'fill', got {missing_chunks!r}"
        raise PlateFormatError(msg)
    text = os.fspath(path)
    if not _is_url(text):
        local = Path(text[len("file://"):] if text.startswith("file://") else text)
        if not local.exists():
            msg = f"{text}: no such plate (the path does not exist)"
            raise PlateNotFoundError(msg)
        if local.is_file():
            msg = (f"{text}: a file, not an OME-Zarr plate; convert plain images with "
                   "`subcell-scale convert`")
            raise PlateFormatError(msg)
        text = text if text.startswith("file://") else str(local.resolve())
    root = _open_root(text, storage_options)
    return Plate(text, root, storage_options=storage_options, z=z, t=t, missing_chunks=missing_chunks)

