"""The cells AnnData: how fields' shards become one AnnData, and how it is written and read back.

This module holds the contract scanpy users rely on (DESIGN.md, "Cells AnnData"):

- ``X`` float32 embeddings (passes concatenated), ``var_names`` ``subcell_0000`` ... (multi-pass:
  ``subcell_<pass>_0000`` ...);
- ``obs_names`` ``"{plate}_{well}_{field}_{label}"``; ``obs``: plate, well, row, column, field
  (categoricals), label, area, centroid_y, centroid_x (pixels), then the platemap's columns;
- ``obsm["spatial"]`` (x, y) in micrometres, ``obsm["localization"]`` (n, 31 x passes, pass-major),
  ``uns["localization_classes"]``, ``uns["subcell_scale"]`` (provenance).

Rows follow the fields in plate, well, field order and cells by label within a field, whatever order
the fields were computed in, so a resumed or distributed run gives the same AnnData.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._constants import VAR_PREFIX, Files, Keys, Obs
from ._version import __version__
from .errors import ConfigError, RunDirectoryError
from .store import FieldId, RunPath, Shard

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from .io import Plate
    from .models import ResolvedModel
    from .params import PlatePlan, RunParams

log = logging.getLogger(__name__)

OBS_UNITS = {
    Obs.LABEL: "value of the cell in the field's label image",
    Obs.AREA: "pixels of the field at level 0 (square micrometres: area x pixel_size y x x)",
    Obs.CENTROID_Y: "pixels of the field at level 0, from its top edge",
    Obs.CENTROID_X: "pixels of the field at level 0, from its left edge",
    Keys.SPATIAL: "obsm: micrometres (x, y) from the field's top-left corner",
}
"""Units of the per-cell columns, recorded in ``uns["subcell_scale"]["obs_units"]``: areas and centroids are
in the field's own pixels (level 0), as the label image counts them; the cell filter's bounds
(``min_area_um2``, ``max_area_um2``) and ``obsm["spatial"]`` are in micrometres."""

FORMATS = ("zarr", "h5ad")
"""File formats of the cells AnnData in a run directory."""


@dataclass(frozen=True)
class RunContext:
    """What the cells AnnData records beside the cells: the run's plates, plans, parameters and model."""

    plates: Sequence[Plate]
    plans: Sequence[PlatePlan]
    params: RunParams
    model: ResolvedModel
    platemap: Any = None

    def plan_of(self, plate_name: str) -> PlatePlan:
        return next(p for p in self.plans if p.name == plate_name)


def var_names(width: int, pass_names: Sequence[str]) -> list[str]:
    """``subcell_0000`` ...; with passes ``subcell_<pass>_0000`` ..., pass after pass."""
    if not pass_names:
        return [f"{VAR_PREFIX}{i:04d}" for i in range(width)]
    per = width // len(pass_names)
    return [f"{VAR_PREFIX}{name}_{i:04d}" for name in pass_names for i in range(per)]


class ObsBuilder:
    """The obs rows of a run, gathered field by field as plain arrays and made a DataFrame once.

    A run may hold a million cells: per-field DataFrames concatenated at the end would need the obs
    twice over; arrays per column, joined once, keep the client at about the size of ``obs`` itself.
    """

    def __init__(self, context: RunContext) -> None:
        self.context = context
        self._plates = {p.name: p for p in context.plates}
        self._fields: list[FieldId] = []
        self._counts: list[int] = []
        self._columns: dict[str, list[np.ndarray]] = {Obs.LABEL: [], Obs.AREA: [], Obs.CENTROID_Y: [],
                                                      Obs.CENTROID_X: []}

    def add(self, fid: FieldId, cells: pd.DataFrame) -> np.ndarray:
        """Add one field's cells (in label order); returns the order that sorts the shard's rows so."""
        order = np.argsort(cells[Obs.LABEL].to_numpy(), kind="stable")
        self._fields.append(fid)
        self._counts.append(len(order))
        self._columns[Obs.LABEL].append(cells[Obs.LABEL].to_numpy()[order].astype(np.int64))
        self._columns[Obs.AREA].append(cells[Obs.AREA].to_numpy()[order])
        for col in (Obs.CENTROID_Y, Obs.CENTROID_X):
            self._columns[col].append(cells[col].to_numpy(dtype=np.float64)[order])
        return order

    def build(self) -> tuple[pd.DataFrame, np.ndarray]:
        """``obs`` (categoricals for plate, well, row, column and field; platemap joined) and ``spatial``.

        Names and micrometre positions are written field by field into arrays of the final size,
        and each column's per-field pieces are released once joined, so building needs little more
        than the result (and can be done once).
        """
        counts = np.asarray(self._counts, dtype=np.int64)
        total = int(counts.sum())
        starts = np.concatenate([[0], np.cumsum(counts)])
        names = np.empty(total, dtype=object)
        spatial = np.empty((total, 2), dtype=np.float64)
        for fid, pieces_y, pieces_x, labels, lo, hi in zip(
                self._fields, self._columns[Obs.CENTROID_Y], self._columns[Obs.CENTROID_X],
                self._columns[Obs.LABEL], starts[:-1], starts[1:], strict=True):
            names[lo:hi] = [f"{fid.obs_prefix}_{label}" for label in labels]
            py, px = self.context.plan_of(fid.plate).pixel_size
            spatial[lo:hi, 0] = pieces_x * px
            spatial[lo:hi, 1] = pieces_y * py
        columns = {}
        for column, pieces in self._columns.items():
            dtype = np.float64 if column in (Obs.CENTROID_Y, Obs.CENTROID_X) else np.int64
            columns[column] = np.concatenate(pieces) if pieces else np.zeros(0, dtype)
            pieces.clear()
        rows_columns = [self._plates[f.plate].row_column(f.well) for f in self._fields]
        obs = pd.DataFrame({
            Obs.PLATE: self._categorical([f.plate for f in self._fields], counts),
            Obs.WELL: self._categorical([f.well for f in self._fields], counts),
            Obs.ROW: self._categorical([row for row, _ in rows_columns], counts),
            Obs.COLUMN: self._categorical([int(column) for _, column in rows_columns], counts),
            Obs.FIELD: self._categorical([f.field for f in self._fields], counts),
            **columns,
        }, index=pd.Index(names, copy=False))
        del names, columns
        if self.context.platemap is not None:
            from .io.platemap import join_platemap, read_platemap

            joined = join_platemap(obs, read_platemap(self.context.platemap), plates=list(self.context.plates))
            joined.index = obs.index
            obs = joined
        return obs, spatial

    @staticmethod
    def _categorical(per_field: list[Any], counts: np.ndarray) -> pd.Categorical:
        categories = _ordered_unique(per_field)
        codes = pd.Index(categories).get_indexer(per_field) if per_field else np.zeros(0, np.int64)
        return pd.Categorical.from_codes(np.repeat(codes, counts), categories=categories)


def assemble(fields: Sequence[tuple[FieldId, Shard]], context: RunContext, failed: Sequence[str]) -> AnnData:
    """Concatenate the fields' shards, in the order given, into the cells AnnData (held in memory)."""
    builder = ObsBuilder(context)
    emb, probs = [], []
    for fid, shard in fields:
        order = builder.add(fid, shard.cells)
        emb.append(shard.embedding[order])
        if shard.probabilities is not None:
            probs.append(shard.probabilities[order])
    width = int(emb[0].shape[1]) if emb else _default_width(context)
    X = np.concatenate(emb).astype(np.float32, copy=False) if emb else np.zeros((0, width), np.float32)
    localization = np.concatenate(probs).astype(np.float32, copy=False) if probs and len(probs) == len(emb) else None
    return _anndata(builder, X, localization, width, context, failed, classes=localization is not None)


def _default_width(context: RunContext) -> int:
    return context.model.embedding_dim * len(context.plans[0].passes)


def _anndata(builder: ObsBuilder, X: np.ndarray | None, localization: np.ndarray | None, width: int,
             context: RunContext, failed: Sequence[str], *, classes: bool) -> AnnData:
    """The cells AnnData around ``X`` and ``localization``, with the obs the builder gathered.

    ``X`` None leaves the matrix out (the streamed store writes it itself); ``classes`` records the
    localization class names.
    """
    import anndata as ad

    from .models.registry import CLASS_NAMES

    obs, spatial = builder.build()
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=var_names(width, context.plans[0].pass_names)))
    adata.strings_to_categoricals()  # as writing would: the returned object equals the one read back
    adata.obsm[Keys.SPATIAL] = spatial
    if localization is not None:
        adata.obsm[Keys.LOCALIZATION] = localization
    if classes:
        adata.uns[Keys.LOCALIZATION_CLASSES] = list(CLASS_NAMES)
    adata.uns[Keys.PROVENANCE] = provenance(context, failed, width)
    return adata


def _ordered_unique(values: Sequence[Any]) -> list[Any]:
    seen: dict[Any, None] = {}
    for v in values:
        seen.setdefault(v, None)
    try:
        return sorted(seen)
    except TypeError:  # pragma: no cover - mixed types
        return list(seen)


def provenance(context: RunContext, failed: Sequence[str], width: int) -> dict[str, Any]:
    """``uns["subcell_scale"]``: how the cells were made (model, parameters, channels, plates)."""
    params, model, first = context.params, context.model, context.plans[0]
    mapping: dict[str, Any] = {}
    for plan in context.plans:
        if plan.pass_names:
            mapping[plan.name] = {name: dict(m) for name, m in zip(plan.pass_names, plan.channel_mapping, strict=True)}
        else:
            mapping[plan.name] = dict(plan.channel_mapping[0])
    record = params.to_dict()
    return {
        "version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "preset": params.preset,
        "variant": model.identity.get("variant") or model.variant or "",
        "checkpoint_sha256": model.checkpoint_sha256 or "",
        "model": json.dumps(model.identity, sort_keys=True, default=str),
        "model_channels": list(first.model_channels),
        "embedding_dim": int(width // max(1, len(first.passes))),
        "passes": list(first.pass_names),
        "channel_mapping": mapping,
        "crop": {k: v for k, v in record["crop"].items() if v is not None},
        "normalization": params.crop.normalization,
        "mask_mode": params.crop.mask_mode,
        "pixel_size": {p.name: list(p.pixel_size) for p in context.plans},
        "crop_window_px": {p.name: list(p.window_px) for p in context.plans},
        "plates": {p.name: str(p.path) for p in context.plates},
        "label_name": params.label_name,
        "localization_layout": "pass-major: column p * 31 + k is class k of pass p",
        "obs_units": dict(OBS_UNITS),
        "failed_fields": sorted(failed),
        "parameters": json.dumps(record, sort_keys=True),
    }


def cells_name(fmt: str = "zarr") -> str:
    """The name of a run directory's cells AnnData in format ``fmt``."""
    return Files.CELLS_H5AD if fmt == "h5ad" else Files.CELLS_ZARR


def cells_path(root: str | os.PathLike[str], fmt: str = "zarr") -> Path:
    """Where a local run directory keeps its cells AnnData."""
    return Path(root) / cells_name(fmt)


CHUNK_BYTES = 16 << 20
"""Target size of one row chunk of ``X`` in the cells store: big enough for fast reads, small enough
that the few in flight while the store is written stay small beside the client's ``obs`` (measured
on 200k cells of 4608 values: 32 MiB chunks copy ~10% faster but double the peak, ~240 MB)."""


def stream_cells(fields: Sequence[tuple[FieldId, str | RunPath]], context: RunContext, failed: Sequence[str],
                 root: str | os.PathLike[str] | RunPath, fmt: str = "zarr") -> AnnData:
    """Write the cells AnnData of a run from its shards in one streamed pass, and open it backed.

    Only ``obs`` is built in memory (from the shards' cell tables, the embeddings unread); ``X`` and
    ``obsm["localization"]`` are lazy concatenations of the shards' arrays, copied into the store
    one row chunk at a time by a few threads, so the memory used stays about
    :attr:`subcell_scale.settings.memory_budget` whatever the number of cells. The store replaces an
    older one only once it is whole. ``root`` may be a URL (:class:`~subcell_scale.store.RunPath`):
    the store is written there through zarr's fsspec store and read back from it.

    Returns
    -------
    The cells AnnData as :func:`read_cells` opens it: ``X`` and ``obsm["localization"]`` backed by
    the store (dask arrays), everything else in memory.
    """
    from ._settings import settings
    from .store import read_shard_cells

    builder = ObsBuilder(context)
    pieces = []
    width = n_prob = None
    for fid, path in fields:
        cells, shapes = read_shard_cells(path)
        order = builder.add(fid, cells)
        width = shapes["embedding"][1]
        n_prob = shapes["probabilities"][1] if "probabilities" in shapes else None
        if len(order):
            pieces.append((path, order))
    width = width if width is not None else _default_width(context)
    rows = max(1, CHUNK_BYTES // (4 * width))
    matrices = {"X": ShardRows(tuple(pieces), "embedding", width, rows)}
    if n_prob is not None:
        matrices[f"obsm/{Keys.LOCALIZATION}"] = ShardRows(tuple(pieces), "probabilities", n_prob, rows)
    adata = _anndata(builder, None, None, width, context, failed, classes=n_prob is not None)
    del builder
    threads = int(max(1, min(4, settings.memory_budget // (3 * CHUNK_BYTES))))
    with _large_blocks_returned():
        path = write_cells(adata, root, fmt, matrices=matrices, threads=threads)
    if fmt == "h5ad":
        return read_cells(path.local)
    return _open_zarr(path, obs=adata.obs)  # obs as built, not read again: the client holds it once


_M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number of the mmap threshold."""
_GLIBC_MMAP_THRESHOLD = 128 << 10
"""glibc's initial mmap threshold (``DEFAULT_MMAP_THRESHOLD_MIN``)."""
_WRITER_MMAP_THRESHOLD = 1 << 20
"""The mmap threshold while a cells store is written: blocks of 1 MiB and more go back when freed."""
_tuning = {"writers": 0}
_tuning_lock = threading.Lock()


@contextmanager
def _large_blocks_returned() -> Iterator[None]:
    """Inside the block, glibc hands blocks of 1 MiB and more back to the system when they are freed.

    By default glibc raises its mmap threshold after each large block it frees, up to 32 MiB, so the
    shards and chunks of a copy end up in the heap and stay in the process's memory after the copy
    (measured with ``benchmarks/bench_cells_store.py``: ~1.8 KB more peak memory per cell of a run,
    ~1.7 KB held after it, against ~0.5 and ~0.3 with the fixed threshold). The streaming writer
    therefore fixes the threshold at 1 MiB while it copies, and sets it back when the last writer of
    the process ends.

    glibc has no getter for the threshold and no way back to its adaptive threshold once one is set:
    "back" is glibc's initial threshold (128 KiB, fixed from then on: freed blocks of 128 KiB and more
    are returned at once, as in a process that has freed no large block yet). Nothing is changed when
    :attr:`subcell_scale.settings.tune_allocator` is False, when the threshold was chosen for the
    process (``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...``), or when
    the C library is not glibc (macOS, musl).
    """
    from ._settings import settings

    libc = _glibc()
    if libc is None or not settings.tune_allocator or _threshold_chosen():
        yield
        return
    with _tuning_lock:
        _tuning["writers"] += 1
        if _tuning["writers"] == 1:
            libc.mallopt(_M_MMAP_THRESHOLD, _WRITER_MMAP_THRESHOLD)
    try:
        yield
    finally:
        with _tuning_lock:
            _tuning["writers"] -= 1
            if _tuning["writers"] == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_THRESHOLD)


def _threshold_chosen() -> bool:
    """Whether the process was started with an mmap threshold of its own (glibc's environment variables)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return bool(os.environ.get("MALLOC_MMAP_THRESHOLD_", "").strip()) or "glibc.malloc.mmap_threshold=" in tunables


def _trim_heap() -> None:
    """Give the heap's free pages back to the system (once ``obs`` is written, and after each chunk).

    Writing ``obs`` makes and frees a few small objects per cell, and each copy thread leaves freed
    blocks in its own heap; glibc keeps those pages, and the copy's peak would stand on them
    (measured: ~55 bytes per cell of a run, and a few MB more per 100k cells copied). Not glibc:
    nothing to do.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc() -> Any:
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None; looked up
    once (``find_library`` asks ``ldconfig``), as the heap is trimmed after every chunk copied."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and libc.mallopt and libc.malloc_trim else None
    except (OSError, AttributeError):
        return None


@dataclass(frozen=True)
class ShardRows:
    """A (cells x width) matrix made of the shards' ``name`` arrays, built one row chunk at a time.

    Each chunk reads only the shards its rows come from, so writing the matrix holds a few chunks in
    memory whatever the number of cells.
    """

    pieces: tuple[tuple[str | RunPath, np.ndarray], ...]  # shard path, the row order that sorts it by label
    name: str
    width: int
    rows: int

    @functools.cached_property
    def starts(self) -> np.ndarray:
        """First row of each piece, and the number of rows last."""
        return np.cumsum([0] + [len(order) for _, order in self.pieces])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.starts[-1]), self.width

    def spans(self) -> list[tuple[int, int]]:
        """(first, stop) rows of every chunk."""
        total = self.shape[0]
        return [(lo, min(lo + self.rows, total)) for lo in range(0, total, self.rows)]

    def chunk(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi``, read from the shards that hold them."""
        from .store import read_shard_array

        starts = self.starts
        first = int(np.searchsorted(starts, lo, side="right")) - 1
        out = np.empty((hi - lo, self.width), np.float32)
        for i in range(first, len(self.pieces)):
            start = int(starts[i])
            if start >= hi:
                break
            path, order = self.pieces[i]
            a, b = max(lo, start), min(hi, start + len(order))
            out[a - lo:b - lo] = read_shard_array(path, self.name)[order[a - start:b - start]]
        return out


_ROOT_METADATA = ("zarr.json", ".zgroup", ".zattrs", ".zmetadata")
"""The objects at the root of a zarr store (v3, v2): written last, they make the store appear whole."""


def write_cells(adata: AnnData, root: str | os.PathLike[str] | RunPath, fmt: str = "zarr", *,
                matrices: Mapping[str, ShardRows] | None = None, threads: int = 1) -> RunPath:
    """Write the cells AnnData into a run directory, replacing an older one only once the new one is whole.

    ``matrices`` (``"X"``, ``"obsm/localization"``) are written chunk by chunk from the shards, by
    ``threads`` threads for zarr (each writes whole chunks: no chunk is written twice at once).

    ``cells.zarr`` is laid out first in a local staging folder (everything but the matrices' chunks,
    with the consolidated listing that names them), whose files are then moved into the store (renamed
    on a local disk, uploaded together to object storage) except its root metadata; the chunks are
    written straight into the store; the root metadata comes last. Until then ``cells.zarr`` opens as
    no store at all, never as part of one (whose missing chunks zarr would read as zeros), on a file
    system and on object storage alike, which has no rename. ``cells.h5ad`` (one file, written beside
    and renamed) needs a local directory.
    """
    root = RunPath.of(root)
    if fmt == "h5ad" and not root.is_local:
        msg = f"{root}: cells.h5ad needs a local output directory; use format='zarr' on object storage"
        raise ConfigError(msg)
    root.mkdir()
    path = root / cells_name(fmt)
    matrices = dict(matrices or {})
    if fmt == "h5ad":
        tmp = root / f".{path.name}.tmp"
        _write_h5ad(adata, tmp.local, matrices)
        path.remove()
        tmp.move(path)
    else:
        with _staging(root, path.name) as staging:
            _write_layout(adata, staging, matrices)
            _trim_heap()
            path.remove()
            path.put_tree(staging, skip=_ROOT_METADATA)
            _write_rows(path, matrices, threads)
            path.put_tree(staging)
    log.info("cells written to %s (%d cells x %d)", path, adata.n_obs, adata.n_vars)
    return path


@contextmanager
def _staging(root: RunPath, name: str) -> Iterator[Path]:
    """A local folder to lay the store ``name`` out in: beside it in a local run directory (its files are
    then renamed into place; one left by a killed run is cleared first), a temporary one for object storage."""
    if not root.is_local:
        with tempfile.TemporaryDirectory(prefix="subcell-scale-") as folder:
            yield Path(folder)
        return
    folder = root / f".{name}.tmp"
    folder.remove()
    folder.local.mkdir()
    try:
        yield folder.local
    finally:
        folder.remove()


def _write_layout(adata: AnnData, folder: Path, matrices: dict[str, ShardRows]) -> None:
    """Everything of a zarr cells store but the chunks of ``matrices``, with a consolidated listing."""
    import anndata as ad
    import zarr

    from .io.consolidated import quiet_consolidation

    with ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=False), quiet_consolidation():
        adata.write_zarr(folder)
    if not matrices:
        return
    group = zarr.open_group(str(folder), mode="r+", use_consolidated=False)
    for name, source in matrices.items():
        target = group.create_array(name, shape=source.shape, chunks=(source.rows, source.width), dtype="float32",
                                    compressors=zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"))
        target.attrs.update(_DENSE)
    with quiet_consolidation():
        zarr.consolidate_metadata(str(folder))  # the listing anndata wrote does not name the matrices


def _write_rows(path: RunPath, matrices: dict[str, ShardRows], threads: int) -> None:
    """The chunks of ``matrices``, copied from the shards into the store at ``path`` by ``threads`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    import zarr

    if not matrices:
        return
    store = path.zarr_store(read_only=False)
    work = []
    for name, source in matrices.items():
        target = zarr.open_array(store, path=name, mode="r+")
        work += [(source, target, lo, hi) for lo, hi in source.spans()]

    def copy(item: tuple[ShardRows, Any, int, int]) -> None:
        source, target, lo, hi = item
        target[lo:hi] = source.chunk(lo, hi)
        _trim_heap()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(copy, work))


def _write_h5ad(adata: AnnData, path: Path, matrices: dict[str, ShardRows]) -> None:
    import h5py

    adata.write_h5ad(path)
    if not matrices:
        return
    _trim_heap()
    with h5py.File(path, "a") as handle:
        for name, source in matrices.items():
            target = handle.create_dataset(name, shape=source.shape, dtype="float32",
                                           chunks=(max(1, min(source.rows, source.shape[0])), source.width))
            target.attrs.update(_DENSE)
            for lo, hi in source.spans():  # h5py writes from one thread
                target[lo:hi] = source.chunk(lo, hi)


_DENSE = {"encoding-type": "array", "encoding-version": "0.2.0"}
"""anndata's encoding attributes of a dense matrix."""


def read_cells(run: str | os.PathLike[str] | RunPath, *, load: bool = False,
               storage_options: Mapping[str, Any] | None = None) -> AnnData:
    """The cells AnnData of a run directory (or a ``cells.zarr`` / ``cells.h5ad`` path).

    Parameters
    ----------
    run
        The run directory, or the cells store itself: a local path or an fsspec URL
        (``s3://bucket/run``), as :func:`subcell_scale.embed_plate` wrote it.
    load
        Read everything into memory. By default ``X`` and ``obsm["localization"]`` stay in the store
        (dask arrays for ``cells.zarr``, anndata's backed mode for ``cells.h5ad``): the object opens
        at once whatever the number of cells, scanpy and :func:`subcell_scale.profiles.aggregate`
        read it in chunks, and ``adata.to_memory()`` loads it when it fits. The object reads the
        store as it is on disk: a later run into the same directory replaces the store, so load a
        copy first to keep the cells of an earlier run.
    storage_options
        fsspec options of a URL (credentials, endpoint).

    Raises
    ------
    RunDirectoryError
        The directory holds no cells AnnData (the run did not finish its first step).
    """
    import anndata as ad

    path = RunPath.of(run, storage_options)
    if not path.name.endswith(".h5ad") and not _is_zarr(path):
        candidates = [path / cells_name(fmt) for fmt in FORMATS if (path / cells_name(fmt)).exists()]
        if not candidates:
            msg = f"{path}: no {Files.CELLS_ZARR} or {Files.CELLS_H5AD} (has the run finished embedding?)"
            raise RunDirectoryError(msg)
        path = candidates[0]
    if path.name.endswith(".h5ad"):
        with path.local_copy() as local:  # a cells.h5ad on object storage is read whole
            if load or not path.is_local:
                return ad.read_h5ad(local)
            return ad.read_h5ad(local, backed="r")
    if load:
        return ad.read_zarr(path.zarr_store(read_only=True))
    return _open_zarr(path)


def _is_zarr(path: RunPath) -> bool:
    """Whether ``path`` is a zarr store itself (its root metadata is there)."""
    return (path / "zarr.json").exists() or (path / ".zgroup").exists()


def _open_zarr(path: RunPath, obs: pd.DataFrame | None = None) -> AnnData:
    """A zarr cells store with its matrices as dask arrays over the store's row chunks (and ``obs``
    as given, when the caller holds it already)."""
    import anndata as ad
    import dask.array as da
    import zarr
    from anndata.io import read_elem

    group = zarr.open_group(path.zarr_store(read_only=True), mode="r")

    def lazy(node: Any) -> Any:
        dense = isinstance(node, zarr.Array) and node.attrs.get("encoding-type") == "array" and node.ndim == 2
        return da.from_zarr(node) if dense else read_elem(node)

    obsm = {k: lazy(v) for k, v in group["obsm"].members()} if "obsm" in group else {}
    for key in (Keys.SPATIAL,):  # small: in memory, as users index it freely
        if key in obsm and isinstance(obsm[key], da.Array):
            obsm[key] = obsm[key].compute()
    X = lazy(group["X"]) if "X" in group else None
    return ad.AnnData(X=X, obs=read_elem(group["obs"]) if obs is None else obs, var=read_elem(group["var"]),
                      uns=read_elem(group["uns"]) if "uns" in group else {}, obsm=obsm)
