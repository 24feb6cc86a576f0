"""Writing a run's cells store: from the shards, a chunk of rows at a time, published whole.

:func:`stream_cells` writes ``cells.zarr`` from the fields' shards without holding the run: the rows
are cut into chunks (:data:`CHUNK_BYTES` of ``X``); a few threads each read the shards a chunk's rows
come from and write that chunk of ``X``, ``obsm["localization"]`` and the views, and hand the chunk's cell
tables back, from which this thread writes ``obs`` and ``obsm["spatial"]`` in row order. Memory
stays a few chunks and one ``obs`` buffer, whatever the number of cells or plates; ``obs`` columns,
categories and dtypes come from the run's plates and platemap (:class:`~subcell_scale.cellstore.ObsSchema`).

The new store is written aside (``.cells.zarr.new``) and takes the place of the old one only once it
is whole: a run that fails while writing it (a damaged shard, a full disk) leaves a store that was
valid before as it was. A shard found damaged here is named (:class:`DamagedShards`) so the run
recomputes its field. ``cells.h5ad`` (one file, local only) is written from ``obs`` in memory.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._allocator import large_blocks_returned, trim_heap
from ._constants import Keys
from .cellstore import (ObsSchema, RunContext, cells_anndata, cells_name, default_width, open_zarr, read_cells,
                        schema_of, sorted_cells)
from .errors import ConfigError, RunDirectoryError, resource_error
from .rundir import FieldId, RunPath
from .store import read_shard, read_shard_cells

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

log = logging.getLogger(__name__)

__all__ = ["CHUNK_BYTES", "DamagedShards", "stream_cells", "write_cells"]

CHUNK_BYTES = 16 << 20
"""Target size of one row chunk of ``X`` in the cells store: big enough for fast reads, small enough
that the few in flight while the store is written stay small (measured on 200k cells of 4608 values:
32 MiB chunks copy ~10% faster but double the peak)."""

OBS_CHUNK = 1 << 16
"""Rows per chunk of each ``obs`` column (and ``obsm["spatial"]``) in the store, and rows of cell tables
the writer holds (in flight and buffered) before it writes them: its peak memory is bounded by this, not by the run
(``benchmarks/bench_screen.py``, section 3)."""

_DENSE = {"encoding-type": "array", "encoding-version": "0.2.0"}
"""anndata's encoding attributes of a dense array."""
_STRINGS = {"encoding-type": "string-array", "encoding-version": "0.2.0"}
_ROOT_METADATA = ("zarr.json", ".zgroup", ".zattrs", ".zmetadata")
"""The objects at the root of a zarr store (v3, v2): written last, they make the store appear whole."""

FieldSource = Callable[[], Iterable[tuple[FieldId, Any, int]]]
"""A run's finished fields in row order, afresh at each call: id, shard path, cell count."""


class DamagedShards(RunDirectoryError):
    """Shards that cannot be read while the cells store is written; their fields are computed again."""

    def __init__(self, fields: Mapping[FieldId, str]) -> None:
        self.fields = dict(fields)
        first = next(iter(self.fields.values()))
        super().__init__(f"{len(self.fields)} shard(s) are damaged ({first}); their fields are computed again")


def _reason(path: Any, exc: BaseException) -> str:
    """What is wrong with a shard, without the advice to delete it (the run recomputes it itself)."""
    return f"{path}: {exc.__cause__ or exc}"


# -- from the shards ------------------------------------------------------------------------------------
def stream_cells(fields: FieldSource, context: RunContext, failed: Sequence[str],
                 root: str | os.PathLike[str] | RunPath, fmt: str = "zarr") -> AnnData:
    """Write the cells AnnData of a run from its shards in one streamed pass, and open it backed.

    Parameters
    ----------
    fields
        Called twice: each time an iterable of the finished fields in row order (plate, well, field),
        with their shard and cell count (the records' counts: no shard is read to count).
    context
        The run's plates, plans, parameters and model (provenance, ``obs`` columns).
    failed
        Keys of the fields that failed (recorded in the provenance).
    root
        The run directory (a folder or a URL: the store is written there through zarr's fsspec store).
    fmt
        ``"zarr"`` (streamed) or ``"h5ad"`` (``obs`` built in memory first; local only).

    Returns
    -------
    The cells AnnData as :func:`~subcell_scale.cellstore.read_cells` opens it: ``X`` and
    ``obsm["localization"]`` backed by the store (dask arrays), ``obs`` in memory, or left in the
    store for runs above :attr:`subcell_scale.settings.lazy_obs` cells.

    Raises
    ------
    DamagedShards
        Shards that could not be read; nothing was replaced (their fields must be computed again).
    ResourceError
        The disk (space, quota, file size, permission) or memory ran short; the message names the store.
    """
    from ._settings import settings

    root = RunPath.of(root)
    if fmt == "h5ad" and not root.is_local:
        msg = f"{root}: cells.h5ad needs a local output directory; use format='zarr' on object storage"
        raise ConfigError(msg)
    layout = _Layout.of(fields, context)
    threads = int(max(1, min(4, settings.memory_budget // (3 * CHUNK_BYTES))))
    try:
        with large_blocks_returned():
            if fmt == "h5ad":
                path = _write_h5ad_from_shards(layout, fields, context, failed, root)
                return read_cells(path.local)
            path = _write_zarr_from_shards(layout, fields, context, failed, root, threads)
    except (OSError, MemoryError) as exc:
        error = resource_error(exc, root / cells_name(fmt), "writing the cells store (the shards and any earlier "
                               "cells store are kept; a rerun with the same output writes it)")
        if error is None:
            raise
        raise error from exc
    return open_zarr(path)


@dataclass
class _Layout:
    """What the store will hold, from the records alone: rows, widths, each plate's rows."""

    n_rows: int
    width: int
    n_prob: int | None
    plate_rows: dict[str, tuple[int, int]]
    schema: ObsSchema
    views: dict[str, list[str]]

    @classmethod
    def of(cls, fields: FieldSource, context: RunContext) -> _Layout:
        rows = 0
        plate_rows: dict[str, list[int]] = {}
        first = None
        for fid, path, n in fields():
            span = plate_rows.setdefault(fid.plate, [rows, rows])
            rows += int(n)
            span[1] = rows
            if first is None and n:
                first = fid, path
        width, n_prob, views = default_width(context), None, {}
        if first is not None:
            try:
                _, shapes, meta = read_shard_cells(first[1])
            except RunDirectoryError as exc:
                raise DamagedShards({first[0]: _reason(first[1], exc)}) from exc
            width = int(shapes["embedding"][1])
            n_prob = int(shapes["probabilities"][1]) if "probabilities" in shapes else None
            views = meta.get("views", {})
        spans = {k: (a, b) for k, (a, b) in plate_rows.items() if b > a}
        return cls(rows, width, n_prob, spans, schema_of(context), views)

    def matrices(self) -> dict[str, int]:
        """Every row-chunked float32 matrix of the store, by path, with its width."""
        return {"X": self.width, **({f"obsm/{Keys.LOCALIZATION}": self.n_prob} if self.n_prob else {}),
                **{f"obsm/{name}": len(columns) for name, columns in self.views.items()}}

    @property
    def chunk_rows(self) -> int:
        return max(1, CHUNK_BYTES // (4 * self.width))


@dataclass(frozen=True)
class _Piece:
    """Rows ``a:b`` (in label order) of one field's shard."""

    fid: FieldId
    path: Any
    a: int
    b: int


def _chunks(fields: Iterable[tuple[FieldId, Any, int]], rows: int) -> Iterator[tuple[int, int, list[_Piece]]]:
    """The store's row chunks in order, each with the pieces of shards its rows come from."""
    lo, pieces, need = 0, [], rows
    for fid, path, n in fields:
        start = 0
        while start < n:
            take = min(n - start, need)
            pieces.append(_Piece(fid, path, start, start + take))
            start += take
            need -= take
            if need == 0:
                yield lo, lo + rows, pieces
                lo, pieces, need = lo + rows, [], rows
    if pieces:
        yield lo, lo + sum(p.b - p.a for p in pieces), pieces


def _read_chunk(pieces: Sequence[_Piece], layout: _Layout
                ) -> tuple[dict[str, np.ndarray], list[tuple[FieldId, pd.DataFrame]], dict[FieldId, str]]:
    """A chunk's rows of every matrix (by store path: ``X``, localization, views) and its cell tables,
    read from its shards."""
    rows: dict[str, list[np.ndarray]] = {name: [] for name in layout.matrices()}
    tables, damaged = [], {}
    for piece in pieces:
        try:
            shard = read_shard(piece.path)
            order = sorted_cells(shard.cells)[piece.a:piece.b]
            missing = [name for name in layout.views if name not in shard.views]
            if missing:
                raise RunDirectoryError(f"results shard {piece.path} lacks view(s) {missing}")
        except RunDirectoryError as exc:
            damaged[piece.fid] = _reason(piece.path, exc)
            continue
        held = tuple(str(shard.meta.get(k)) for k in ("plate", "well", "field"))
        if held != (piece.fid.plate, piece.fid.well, piece.fid.field):  # a shard copied or moved over another
            damaged[piece.fid] = f"{piece.path}: holds the cells of {'/'.join(held)}"
            continue
        rows["X"].append(shard.embedding[order])
        if layout.n_prob:
            rows[f"obsm/{Keys.LOCALIZATION}"].append(shard.probabilities[order])
        for name in layout.views:
            rows[f"obsm/{name}"].append(shard.views[name].to_numpy(np.float32)[order])
        tables.append((piece.fid, shard.cells.iloc[order].reset_index(drop=True)))
    if damaged:
        return {}, [], damaged
    return {k: np.concatenate(v).astype(np.float32, copy=False) for k, v in rows.items()}, tables, damaged


def _write_zarr_from_shards(layout: _Layout, fields: FieldSource, context: RunContext, failed: Sequence[str],
                            root: RunPath, threads: int) -> RunPath:
    import zarr

    path = root / cells_name("zarr")
    with _aside(root, path) as (staging, target):
        _write_skeleton(layout, context, failed, staging)
        target.put_tree(staging, skip=_ROOT_METADATA)
        store = target.zarr_store(read_only=False)  # the root metadata is not there yet: nodes by path
        arrays = {name: zarr.open_array(store, path=name, mode="r+") for name in layout.matrices()}
        obs = _ObsWriter(zarr.open_group(store, path="obs", mode="r+", use_consolidated=False),
                         zarr.open_array(store, path=f"obsm/{Keys.SPATIAL}", mode="r+"), layout.schema)
        damaged: dict[FieldId, str] = {}

        def copy(lo: int, hi: int, pieces: list[_Piece]) -> tuple[list[tuple[FieldId, pd.DataFrame]], dict]:
            rows, tables, bad = _read_chunk(pieces, layout)
            if not bad:
                for name, values in rows.items():
                    arrays[name][lo:hi] = values
            del rows
            trim_heap()
            return tables, bad

        with ThreadPoolExecutor(max_workers=threads) as pool:
            flight: deque[tuple[int, Any]] = deque()  # chunks in copy, their rows: their cell tables come back
            in_flight = 0
            for lo, hi, pieces in _chunks(fields(), layout.chunk_rows):
                flight.append((hi - lo, pool.submit(copy, lo, hi, pieces)))
                in_flight += hi - lo
                while len(flight) > 2 * threads or (len(flight) > 1 and in_flight > OBS_CHUNK):
                    rows, done = flight.popleft()
                    in_flight -= rows
                    tables, bad = done.result()
                    damaged.update(bad)
                    obs.add(tables)
            for _, done in flight:
                tables, bad = done.result()
                damaged.update(bad)
                obs.add(tables)
        if damaged:
            raise DamagedShards(damaged)
        obs.close()
        target.put_tree(staging)  # the root metadata last: the store appears whole
    log.info("cells written to %s (%d cells x %d)", path, layout.n_rows, layout.width)
    return path


def _write_skeleton(layout: _Layout, context: RunContext, failed: Sequence[str], folder: Path) -> None:
    """Everything of the store but its chunks of rows: ``var``, ``uns``, and arrays of their final shapes."""
    import anndata as ad
    import zarr

    from .io.consolidated import quiet_consolidation

    obs, spatial = layout.schema.frame([])
    adata = cells_anndata(obs, spatial, None, None, layout.width, context, failed,
                          classes=layout.n_prob is not None, plate_rows=layout.plate_rows, views=layout.views)
    with quiet_consolidation(), ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=False):
        adata.write_zarr(folder)
    group = zarr.open_group(str(folder), mode="r+", use_consolidated=False)
    n = layout.n_rows
    compressor = zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    for name, width in layout.matrices().items():
        array = group.create_array(name, shape=(n, width), chunks=(layout.chunk_rows, width), dtype="float32",
                                   compressors=compressor, overwrite=True)
        array.attrs.update(_DENSE)
    rows = max(1, min(OBS_CHUNK, n))
    spatial_array = group.create_array(f"obsm/{Keys.SPATIAL}", shape=(n, 2), chunks=(rows, 2), dtype="float64",
                                       overwrite=True)
    spatial_array.attrs.update(_DENSE)
    with quiet_consolidation():  # anndata's write_elem of the categories gives its autosharding notice
        _ObsWriter.create(group["obs"], layout.schema, n, rows)
        zarr.consolidate_metadata(str(folder))


class _ObsWriter:
    """``obs`` (and ``obsm["spatial"]``) written in row order, a buffer of :data:`OBS_CHUNK` rows at a time."""

    def __init__(self, group: Any, spatial: Any, schema: ObsSchema) -> None:
        self.group, self.spatial, self.schema = group, spatial, schema
        self.row = 0
        self.buffer: list[tuple[FieldId, pd.DataFrame]] = []
        self.buffered = 0

    @staticmethod
    def create(group: Any, schema: ObsSchema, n: int, rows: int) -> None:
        """Each ``obs`` column at its final length, with anndata's encoding (categories written now)."""
        from anndata.io import write_elem

        for name in [*list(group.array_keys()), *list(group.group_keys())]:
            del group[name]
        group.create_array("_index", shape=(n,), chunks=(rows,), dtype=str, overwrite=True).attrs.update(_STRINGS)
        for name in schema.columns:
            dtype = schema.dtype(name)
            if isinstance(dtype, pd.CategoricalDtype):
                sub = group.create_group(name)
                sub.attrs.update({"encoding-type": "categorical", "encoding-version": "0.2.0",
                                  "ordered": bool(dtype.ordered)})
                write_elem(sub, "categories", pd.Index(dtype.categories).to_numpy())
                codes = pd.Categorical([], dtype=dtype).codes.dtype
                sub.create_array("codes", shape=(n,), chunks=(rows,), dtype=codes).attrs.update(_DENSE)
            else:
                kind = str if dtype == object else dtype
                encoding = _STRINGS if kind is str else _DENSE
                group.create_array(name, shape=(n,), chunks=(rows,), dtype=kind).attrs.update(encoding)
        group.attrs.update({"_index": "_index", "column-order": list(schema.columns), "encoding-type": "dataframe",
                            "encoding-version": "0.2.0"})

    def add(self, tables: list[tuple[FieldId, pd.DataFrame]]) -> None:
        self.buffer += tables
        self.buffered += sum(len(t) for _, t in tables)
        if self.buffered >= OBS_CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        obs, spatial = self.schema.frame(self.buffer)
        lo, hi = self.row, self.row + len(obs)
        self.group["_index"][lo:hi] = obs.index.to_numpy(dtype=str)
        for name in self.schema.columns:
            values = obs[name]
            if isinstance(values.dtype, pd.CategoricalDtype):
                self.group[name]["codes"][lo:hi] = values.cat.codes.to_numpy()
            else:
                self.group[name][lo:hi] = values.to_numpy(dtype=str if values.dtype == object else values.dtype)
        self.spatial[lo:hi] = spatial
        self.row, self.buffer, self.buffered = hi, [], 0

    def close(self) -> None:
        self.flush()


def _write_h5ad_from_shards(layout: _Layout, fields: FieldSource, context: RunContext, failed: Sequence[str],
                            root: RunPath) -> RunPath:
    """``cells.h5ad``: ``obs`` built in memory from the shards' cell tables, the matrices a chunk at a time."""
    import h5py

    pieces, damaged = [], {}
    for fid, shard, n in fields():
        if n:
            try:
                cells, _, _ = read_shard_cells(shard)
            except RunDirectoryError as exc:
                damaged[fid] = _reason(shard, exc)
                continue
            pieces.append((fid, cells.iloc[sorted_cells(cells)].reset_index(drop=True)))
    if damaged:
        raise DamagedShards(damaged)
    obs, spatial = layout.schema.frame(pieces)
    del pieces
    adata = cells_anndata(obs, spatial, None, None, layout.width, context, failed,
                          classes=layout.n_prob is not None, plate_rows=layout.plate_rows, views=layout.views)
    path = root / cells_name("h5ad")
    new = root / f".{path.name}.new"
    adata.write_h5ad(new.local)
    trim_heap()
    try:
        with h5py.File(new.local, "a") as handle:
            targets = {}
            for name, width in layout.matrices().items():
                chunk = (max(1, min(layout.chunk_rows, layout.n_rows)), width)
                targets[name] = handle.create_dataset(name, shape=(layout.n_rows, width), dtype="float32", chunks=chunk)
                targets[name].attrs.update(_DENSE)
            for lo, hi, chunk_pieces in _chunks(fields(), layout.chunk_rows):  # h5py writes from one thread
                rows, _, bad = _read_chunk(chunk_pieces, layout)
                damaged.update(bad)
                for name, values in rows.items():
                    targets[name][lo:hi] = values
        if damaged:
            raise DamagedShards(damaged)
    except BaseException:
        new.remove()
        raise
    os.replace(new.local, path.local)
    return path


# -- an AnnData in memory -----------------------------------------------------------------------------------
def write_cells(adata: AnnData, root: str | os.PathLike[str] | RunPath, fmt: str = "zarr") -> RunPath:
    """Write a cells AnnData held in memory into a run directory (made when missing), replacing an older
    store only once the new one is whole."""
    import anndata as ad

    from .io.consolidated import quiet_consolidation

    root = RunPath.of(root)
    if fmt == "h5ad" and not root.is_local:
        msg = f"{root}: cells.h5ad needs a local output directory; use format='zarr' on object storage"
        raise ConfigError(msg)
    root.mkdir()
    path = root / cells_name(fmt)
    if fmt == "h5ad":
        new = root / f".{path.name}.new"
        adata.write_h5ad(new.local)
        os.replace(new.local, path.local)
        return path
    with _aside(root, path) as (staging, target):
        with quiet_consolidation(), ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=False):
            adata.write_zarr(staging)
        target.put_tree(staging, skip=_ROOT_METADATA)
        target.put_tree(staging)
    log.info("cells written to %s (%d cells x %d)", path, adata.n_obs, adata.n_vars)
    return path


# -- publishing whole ---------------------------------------------------------------------------------------
@contextmanager
def _aside(root: RunPath, path: RunPath) -> Iterator[tuple[Path, RunPath]]:
    """A local staging folder and the place the new store is written (``.cells.zarr.new``); when the block
    ends without error the new store replaces the old one, else the old one is left as it was."""
    new = root / f".{path.name}.new"
    new.remove()
    with tempfile.TemporaryDirectory(prefix="subcell-scale-", dir=None if not root.is_local else root.local) as tmp:
        try:
            yield Path(tmp), new
        except BaseException:
            new.remove()
            raise
    _replace(path, new)


def _replace(path: RunPath, new: RunPath) -> None:
    """Make the store ``new`` the store at ``path``: renames on a file system; on object storage the old
    store's root metadata goes first (it never opens half-replaced), then the objects move, root last."""
    if path.is_local:
        old = path.local.with_name(f".{path.name}.old")
        RunPath(old).remove()
        if path.local.exists():
            os.replace(path.local, old)
        os.replace(new.local, path.local)
        RunPath(old).remove()
        return
    for name in _ROOT_METADATA:
        (path / name).remove()
    path.remove()
    fs = new.fs
    keys = sorted(fs.find(new._key))
    root_keys = [k for k in keys if k.rsplit("/", 1)[-1] in _ROOT_METADATA and k.count("/") == new._key.count("/") + 1]
    for key in [k for k in keys if k not in root_keys] + root_keys:
        fs.mv(key, path._key + key[len(new._key):])
    new.remove()
