"""Well profiles from single cells: exact per-group median or mean, streamed from disk.

The cells AnnData of a plate can be larger than memory, but one well's cells are not. When every
group's rows are contiguous (the pipeline writes cells sorted by plate, well and field), the
feature matrix is read once, front to back, in windows aligned to its chunks (the next window is
read while groups of the current one are reduced on a thread pool); a group crossing a window
edge is carried over. Any other row order works too: whole groups are then gathered in batches,
reading only the windows that hold their rows. Medians are exact per group, as in
``pycytominer.aggregate`` (``groupby(strata).median()`` on float64); each group's result depends
only on its own rows, so the output is identical however it was read.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from anndata.utils import make_index_unique

from .._constants import Keys, Obs
from .._typecheck import check_arguments
from ..errors import ProfilingError
from ._source import CellsSource
from ._steps import record_step

logger = logging.getLogger(__name__)

AggregateOperation = Literal["median", "mean"]

# Bytes of cells gathered per batch of groups (a batch always holds at least one whole group).
BATCH_BYTES = 256 * 2**20

# Bytes of rows one thread reduces at a time (several whole groups, or one larger group).
BATCH_ROWS_BYTES = 8 * 2**20

# Per-cell obs columns never carried to a well profile, even when a group happens to hold one cell.
PER_CELL_COLUMNS = (Obs.FIELD, Obs.LABEL, Obs.AREA, Obs.CENTROID_Y, Obs.CENTROID_X)


@dataclass(frozen=True)
class Aggregation:
    """The part of :func:`aggregate` a protocol fixes: which cells make a profile, and how.

    Attributes
    ----------
    by
        obs columns whose value combinations are the profiles.
    operation
        ``"median"`` or ``"mean"``.
    per_field
        Aggregate each field first, then average the fields of a group.
    """

    by: tuple[str, ...] = (Obs.PLATE, Obs.WELL)
    operation: AggregateOperation = "median"
    per_field: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | Aggregation | None = None) -> Aggregation:
        """Checked now against :func:`aggregate`'s parameters (names and types), not when cells exist.

        Raises
        ------
        ConfigError
            An unknown key or a value of the wrong type, named.
        """
        if isinstance(values, Aggregation):
            return values
        values = dict(values or {})
        check_arguments(aggregate, values, "aggregation", skip=("adata", "field_key", "layer", "obsm", "n_jobs"))
        if isinstance(values.get("by"), str):
            values["by"] = (values["by"],)
        if "by" in values:
            values["by"] = tuple(values["by"])
        return cls(**values)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`aggregate`."""
        return {"by": list(self.by), "operation": self.operation, "per_field": self.per_field}


def aggregate(
    adata: AnnData | str | os.PathLike,
    *,
    by: str | Sequence[str] = (Obs.PLATE, Obs.WELL),
    operation: AggregateOperation = "median",
    per_field: bool = False,
    field_key: str = Obs.FIELD,
    layer: str | None = None,
    obsm: str | None = None,
    use_rep: str | None = None,
    n_jobs: int | None = None,
) -> AnnData:
    """One profile per group of cells (per well by default): the median or mean of each feature.

    Parameters
    ----------
    adata
        Cells AnnData in memory, or the path of one on disk (``.zarr`` or ``.h5ad``); a path is
        streamed: ``obs``, two read windows (about 64 MB each) and the groups being reduced are in
        memory at a time, never the whole matrix.
    by
        obs columns whose value combinations are the profiles (pycytominer's ``strata``).
    operation
        ``"median"`` (pycytominer's default, robust to debris and mis-segmented cells) or ``"mean"``.
    per_field
        Aggregate each field of view first, then take the MEAN of the field profiles of each group,
        as the SubCell JUMP analysis does; fields with many cells then weigh no more than sparse ones.
    field_key
        obs column naming the field, used with ``per_field``.
    layer, obsm
        Aggregate ``layers[layer]`` or ``obsm[obsm]`` (e.g. ``"localization"``) instead of ``X``.
    use_rep
        The view of the cells to profile: ``"X"`` (None; SubCell's embedding) or an ``obsm`` key
        (``"cellprofiler"``, a user's model); the profiles' ``X`` is then that view, its column names
        the ``var_names``.
    n_jobs
        Threads reducing groups in parallel (default: every core this process may use); results do
        not depend on it.

    Returns
    -------
    AnnData with one row per group, sorted by the ``by`` values: ``X`` float32; ``obs`` = the
    ``by`` columns, every obs column constant within each group (platemap columns, row, column),
    and ``n_cells``; ``var`` from the cells; ``uns["subcell_scale"]`` carried over and an
    ``"aggregate"`` step appended to ``uns["profiling"]``.
    """
    if operation not in ("median", "mean"):
        raise ProfilingError(f"aggregate: operation must be 'median' or 'mean', got {operation!r}")
    n_jobs = len(os.sched_getaffinity(0)) if n_jobs is None else n_jobs
    if n_jobs < 1:
        raise ProfilingError(f"aggregate: n_jobs must be >= 1, got {n_jobs}")
    if use_rep not in (None, "X"):
        if obsm is not None and obsm != use_rep:
            raise ProfilingError(f"aggregate: give use_rep= or obsm=, not both (got {use_rep!r}, {obsm!r})")
        obsm = use_rep
    by = [by] if isinstance(by, str) else list(by)
    if not by:
        raise ProfilingError("aggregate: by= must name at least one obs column (e.g. ('plate', 'well'))")
    started = time.perf_counter()
    with CellsSource(adata, layer=layer, obsm=obsm) as source:
        obs = source.obs
        keys = [*by, field_key] if per_field else by
        _check_columns(obs, keys, source.description)
        if source.n_rows == 0:
            raise ProfilingError(f"aggregate: {source.description} has no cells")
        codes, first_rows = _group_codes(obs, keys)
        values, counts = _reduce_groups(source, codes, len(first_rows), operation, n_jobs)
        logger.info("aggregate: %d cells -> %d groups of %s (%s) in %.1f s", source.n_rows, len(first_rows),
                    "+".join(keys), operation, time.perf_counter() - started)
        if per_field:
            field_obs = obs.iloc[first_rows][keys].reset_index(drop=True)
            values, counts = _mean_over_fields(values, counts, field_obs, by)
            codes, first_rows = _group_codes(obs, by)
        out_obs = _profile_obs(obs, by, codes, first_rows, counts)
        var = source.var.copy() if source.var is not None else pd.DataFrame(index=source.var_names)
        var.index = source.var_names
        uns = {Keys.PROVENANCE: source.uns[Keys.PROVENANCE]} if Keys.PROVENANCE in source.uns else {}
        profiles = AnnData(X=values.astype(np.float32), obs=out_obs, var=var, uns=uns)
        params = {"by": by, "operation": operation, "per_field": per_field, "source": source.source,
                  "n_cells": int(source.n_rows)}
        if per_field:
            params["field_key"] = field_key
        record_step(profiles, "aggregate", **params)
    return profiles


def _check_columns(obs: pd.DataFrame, keys: list[str], where: str) -> None:
    missing = [k for k in keys if k not in obs.columns]
    if missing:
        raise ProfilingError(f"aggregate: {where} has no obs column(s) {missing}; obs columns are {list(obs.columns)}")


def _group_codes(obs: pd.DataFrame, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Group number of each row (groups sorted by key values, missing keys last) and each group's first row.

    The order of ``groupby(keys, sort=True, dropna=False, observed=True)``, from each key column
    factorised on its own (sorted, missing last) and the codes combined, without groupby's machinery.
    """
    combined = np.zeros(len(obs), dtype=np.int64)
    for key in keys:
        codes, uniques = pd.factorize(obs[key], sort=True)  # missing: -1, a third of the time of keeping them
        codes = np.where(codes < 0, len(uniques), codes)  # missing keys last
        combined = combined * (len(uniques) + 1) + codes
        if combined.max(initial=0) > 2**62 // max(1, len(obs)):  # keep the product in int64
            combined = np.unique(combined, return_inverse=True)[1].astype(np.int64)
    _, first_rows, codes = np.unique(combined, return_index=True, return_inverse=True)
    return codes.astype(np.int64), first_rows


class _Reducer:
    """Reduces runs of groups on a pool of threads (numpy's partition and copies release the GIL), with at
    most two batches per thread in flight so memory stays bounded; results land in ``values``."""

    def __init__(self, operation: AggregateOperation, values: np.ndarray, n_jobs: int) -> None:
        self.operation = operation
        self.values = values
        self.limit = 2 * n_jobs
        self.pool = ThreadPoolExecutor(max_workers=n_jobs) if n_jobs > 1 else None
        self.in_flight: deque[tuple[np.ndarray, Future]] = deque()

    def __call__(self, groups: np.ndarray, rows: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> None:
        """Reduce groups ``groups``, each the rows ``starts[i]:stops[i]`` of ``rows``, in batches of about
        BATCH_ROWS_BYTES of rows."""
        row_bytes = max(1, rows.shape[1] * rows.itemsize)
        ends = np.cumsum(stops - starts)
        first = 0
        while first < len(groups):
            last = max(first + 1, int(np.searchsorted(ends, ends[first] - (stops[first] - starts[first])
                                                      + BATCH_ROWS_BYTES // row_bytes, side="right")))
            self._submit(groups[first:last], rows, starts[first:last], stops[first:last])
            first = last

    def _submit(self, groups: np.ndarray, rows: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> None:
        if self.pool is None:
            self.values[groups] = _reduce_runs_of(self.operation, rows, starts, stops)
            return
        self.in_flight.append((groups, self.pool.submit(_reduce_runs_of, self.operation, rows, starts, stops)))
        while len(self.in_flight) > self.limit:
            self._collect()

    def _collect(self) -> None:
        groups, future = self.in_flight.popleft()
        self.values[groups] = future.result()

    def __enter__(self) -> _Reducer:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            while self.in_flight:
                self._collect()
        finally:
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)


def _reduce_groups(source: CellsSource, codes: np.ndarray, n_groups: int, operation: AggregateOperation,
                   n_jobs: int) -> tuple[np.ndarray, np.ndarray]:
    """Median or mean of every group; one pass over the rows when each group is one contiguous run."""
    values = np.empty((n_groups, source.n_features), dtype=np.float64)
    counts = np.bincount(codes, minlength=n_groups)
    changes = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    with _Reducer(operation, values, n_jobs) as reduce:
        if len(changes) + 1 == n_groups:
            _reduce_runs(source, codes, changes, reduce)
        else:
            logger.info("aggregate: cells are not grouped contiguously; gathering %d groups batch by batch", n_groups)
            _reduce_gathered(source, codes, n_groups, counts, reduce)
    return values, counts


def _reduce_runs(source: CellsSource, codes: np.ndarray, changes: np.ndarray, reduce: _Reducer) -> None:
    """Sorted rows: read windows front to back (the next one is read while this one is reduced);
    the groups inside a window are reduced together on it, a group crossing windows is carried over."""
    starts = np.r_[0, changes]
    stops = np.r_[changes, source.n_rows]
    window_starts = range(0, source.n_rows, source.window_rows)
    run, pending = 0, []
    with ThreadPoolExecutor(max_workers=1) as reader:
        upcoming = reader.submit(source.read, 0, min(source.window_rows, source.n_rows), cache=False)
        for w_start in window_starts:
            w_stop = min(w_start + source.window_rows, source.n_rows)
            window = upcoming.result()
            if w_stop < source.n_rows:
                upcoming = reader.submit(source.read, w_stop, min(w_stop + source.window_rows, source.n_rows),
                                         cache=False)
            if pending:  # the group begun in an earlier window
                if stops[run] > w_stop:
                    pending.append(window.copy())
                    continue
                block = np.concatenate([*pending, window[:stops[run] - w_start]])
                reduce(codes[starts[run:run + 1]], block, np.array([0]), np.array([len(block)]))
                run, pending = run + 1, []
            last = int(np.searchsorted(stops, w_stop, side="right"))  # runs run..last-1 end in this window
            if last > run:
                reduce(codes[starts[run:last]], window, starts[run:last] - w_start, stops[run:last] - w_start)
                run = last
            if run < len(starts) and starts[run] < w_stop:
                pending = [window[starts[run] - w_start:].copy()]


def _reduce_gathered(source: CellsSource, codes: np.ndarray, n_groups: int, counts: np.ndarray,
                     reduce: _Reducer) -> None:
    """Any row order: gather batches of whole groups (about BATCH_BYTES each), reading only the
    windows that hold their rows, in the order the groups first appear; each batch is laid out group
    after group and reduced as runs."""
    order = np.argsort(codes, kind="stable")
    bounds = np.r_[0, np.cumsum(counts)]
    sequence = np.argsort(order[bounds[:-1]], kind="stable")
    budget = max(1, BATCH_BYTES // max(1, source.n_features * 4))
    batch: list[int] = []
    size = 0
    for i, group in enumerate(sequence):
        batch.append(int(group))
        size += counts[group]
        if size >= budget or i == len(sequence) - 1:
            members = np.concatenate([order[bounds[g]:bounds[g + 1]] for g in batch])
            rows = np.sort(members)
            data = source.take(rows)[np.searchsorted(rows, members)]
            ends = np.cumsum(counts[batch])
            reduce(np.asarray(batch), data, ends - counts[batch], ends)
            batch, size = [], 0


def _reduce_runs_of(operation: AggregateOperation, rows: np.ndarray, starts: np.ndarray,
                    stops: np.ndarray) -> np.ndarray:
    """Median or mean of each run ``rows[starts[i]:stops[i]]``, float64: one task of the thread pool."""
    reduce = _median if operation == "median" else _mean
    span = rows[starts[0]:stops[-1]]
    finite = span.dtype.kind != "f" or not np.isnan(span.min())  # one check for all the runs, not one per run
    out = np.empty((len(starts), rows.shape[1]), dtype=np.float64)
    for i, (start, stop) in enumerate(zip(starts.tolist(), stops.tolist(), strict=True)):
        out[i] = reduce(rows[start:stop], finite=finite)
    return out


def _median(block: np.ndarray, *, finite: bool) -> np.ndarray:
    """Exact per-column median in float64 (mean of the two middle values for an even count); ``finite``:
    the caller knows ``block`` holds no NaN.

    One selection per column: after partitioning at k, the lower middle value is the largest of
    the first k (selecting two positions at once is about three times slower in numpy).
    """
    if not finite and block.dtype.kind == "f" and np.isnan(block.min()):
        return np.nanmedian(block.astype(np.float64), axis=0)
    n = len(block)
    k = n // 2
    columns = _transposed(block)  # partition along contiguous memory, never in the caller's rows
    columns.partition(k, axis=1)
    upper = columns[:, k].astype(np.float64)
    if n % 2:
        return upper
    return (columns[:, :k].max(axis=1).astype(np.float64) + upper) / 2


def _transposed(block: np.ndarray, rows: int = 256) -> np.ndarray:
    """A C-contiguous copy of ``block.T``, copied in bands of rows (about twice as fast as one
    strided copy of a (cells, 1536) block, which misses the cache on every element)."""
    out = np.empty((block.shape[1], block.shape[0]), dtype=block.dtype)
    for start in range(0, block.shape[0], rows):
        out[:, start:start + rows] = block[start:start + rows].T
    return out


def _mean(block: np.ndarray, *, finite: bool) -> np.ndarray:
    if not finite and block.dtype.kind == "f" and np.isnan(block.min()):
        return np.nanmean(block.astype(np.float64), axis=0)
    return block.mean(axis=0, dtype=np.float64)


def _mean_over_fields(values: np.ndarray, counts: np.ndarray, field_obs: pd.DataFrame,
                      by: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean of field profiles per ``by`` group (same group order as on the cells); cell counts add up."""
    codes, first = _group_codes(field_obs, by)
    n = len(first)
    sums = np.zeros((n, values.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, values)
    n_fields = np.bincount(codes, minlength=n)
    cells = np.bincount(codes, weights=counts, minlength=n).astype(np.int64)
    return sums / n_fields[:, None], cells


def _profile_obs(obs: pd.DataFrame, by: list[str], codes: np.ndarray, first_rows: np.ndarray,
                 counts: np.ndarray) -> pd.DataFrame:
    """Group keys, the obs columns constant within every group, and the cell count."""
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(len(first_rows)))
    keep = list(by)
    for column in obs.columns:
        if column in by or column in PER_CELL_COLUMNS or column == Keys.N_CELLS:
            continue
        try:
            value_codes, _ = pd.factorize(obs[column], use_na_sentinel=False)
        except TypeError:  # unhashable values (lists) are not well metadata
            continue
        sorted_codes = value_codes[order]
        if np.array_equal(np.minimum.reduceat(sorted_codes, starts), np.maximum.reduceat(sorted_codes, starts)):
            keep.append(column)
    out = obs.iloc[first_rows][keep].reset_index(drop=True)
    for column in keep:
        if isinstance(out[column].dtype, pd.CategoricalDtype):
            out[column] = out[column].cat.remove_unused_categories()
    out[Keys.N_CELLS] = np.asarray(counts, dtype=np.int64)
    joined = out[by[0]].astype(str)
    for column in by[1:]:
        joined = joined + "_" + out[column].astype(str)
    names = pd.Index(joined.to_numpy(), dtype=str)
    out.index = make_index_unique(names) if not names.is_unique else names
    return out
