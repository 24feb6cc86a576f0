"""One sweep over blocks of query rows: each similarity block is computed once and read once.

Average precision and nearest neighbours both need every query's similarities to every profile. A
sweep computes them one block of query rows at a time and hands each block to the kernels of
:mod:`._ranks` (or, on a GPU, of :mod:`._ranks_torch`) for every metric asked for, so evaluating both
costs one product. Pair rules travel as integer group codes; memory is one block.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._pairs import Rule
from ._similarity import Similarity, rows_per_block


def codes(meta: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """(len(columns), n_profiles) int32 codes, one row per column (equal values, equal codes)."""
    out = np.empty((len(columns), len(meta)), dtype=np.int32)
    for k, c in enumerate(columns):
        out[k] = pd.factorize(meta[c], use_na_sentinel=True)[0]
    return out


def combined(meta: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """One int64 code per profile for its values in all ``columns`` (all zero without columns)."""
    if not columns:
        return np.zeros(len(meta), dtype=np.int64)
    _, inverse = np.unique(codes(meta, columns), axis=1, return_inverse=True)
    return np.asarray(inverse, dtype=np.int64).reshape(-1)


@dataclass(frozen=True)
class RankTask:
    """What the AP kernel needs: each profile's positive group and its members, and the rule codes.

    The first ``neg_diffby`` column's groups are listed too (``neg_members`` / ``neg_start``), and
    the size of each ``neg_sameby`` group, so the kernel can count a query's negatives as its
    ``neg_sameby`` group less its own group.
    """

    group_of: np.ndarray
    members: np.ndarray
    group_start: np.ndarray
    pos_diff: np.ndarray
    neg_same: np.ndarray
    neg_diff: np.ndarray
    neg_members: np.ndarray
    neg_start: np.ndarray
    neg_size: np.ndarray

    @classmethod
    def of(cls, meta: pd.DataFrame, pos: Rule, neg: Rule) -> RankTask:
        group_of = combined(meta, pos.sameby)
        members, group_start = _groups(group_of)
        neg_diff = codes(meta, neg.diffby)
        neg_members, neg_start = _groups(neg_diff[0]) if len(neg.diffby) else (np.zeros(0, np.int64),) * 2
        neg_same = combined(meta, neg.sameby).astype(np.int32)
        return cls(group_of, members, group_start, codes(meta, pos.diffby), neg_same, neg_diff, neg_members, neg_start,
                   np.bincount(neg_same).astype(np.int64))


def _groups(code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Profiles ordered by code and where each code's run starts (codes 0..max, one more start at the end)."""
    members = np.argsort(code, kind="stable").astype(np.int64)
    start = np.searchsorted(code[members], np.arange(int(code.max(initial=-1)) + 2)).astype(np.int64)
    return members, start


def _label_members(label_ptr: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each label's profiles (``members[start[l]:start[l + 1]]``) from the profiles' labels as CSR."""
    entries, start = _groups(labels)
    owner = np.repeat(np.arange(label_ptr.size - 1, dtype=np.int64), np.diff(label_ptr))
    return owner[entries], start


@dataclass(frozen=True)
class LabelRankTask:
    """What the multilabel AP kernel needs: each profile's labels and each label's members (both CSR,
    sorted), the other columns' rule codes and how negatives treat labels (0: not at all, 1: they
    share one with the query, 2: they share none)."""

    label_ptr: np.ndarray
    labels: np.ndarray
    label_members: np.ndarray
    label_start: np.ndarray
    pos_same: np.ndarray
    pos_diff: np.ndarray
    neg_same: np.ndarray
    neg_diff: np.ndarray
    label_neg: int

    @classmethod
    def of(cls, meta: pd.DataFrame, label_ptr: np.ndarray, labels: np.ndarray, pos: Rule, neg: Rule,
           label_neg: int) -> LabelRankTask:
        return cls(label_ptr, labels, *_label_members(label_ptr, labels), combined(meta, pos.sameby),
                   codes(meta, pos.diffby), combined(meta, neg.sameby).astype(np.int32), codes(meta, neg.diffby),
                   label_neg)


@dataclass(frozen=True)
class NearestTask:
    """What the nearest-neighbour kernel needs: exclusion codes, the pool, labels as sorted CSR and
    each label's members."""

    exclude: np.ndarray
    pool: np.ndarray
    label_ptr: np.ndarray
    labels: np.ndarray
    label_members: np.ndarray
    label_start: np.ndarray
    kmax: int

    @classmethod
    def of(cls, exclude: np.ndarray, pool: np.ndarray, label_ptr: np.ndarray, labels: np.ndarray,
           kmax: int) -> NearestTask:
        return cls(exclude, pool, label_ptr, labels, *_label_members(label_ptr, labels), kmax)


@dataclass
class RankResult:
    ap: np.ndarray
    n_pos: np.ndarray
    n_neg: np.ndarray


@dataclass
class LabelRankResult:
    """Multilabel AP per (profile, label) entry of the task's CSR; negatives per profile."""

    ap: np.ndarray
    n_pos: np.ndarray
    n_total: np.ndarray
    n_neg: np.ndarray


@dataclass
class NearestResult:
    nearest: np.ndarray
    shares: np.ndarray
    possible: np.ndarray


def sweep(sim: Similarity, queries: np.ndarray, *, ranks: RankTask | LabelRankTask | None = None,
          nearest: NearestTask | None = None, batch_size: int | None = None, progress_bar: bool = False,
          device: str | None = None) -> tuple[RankResult | LabelRankResult | None, NearestResult | None]:
    """AP and/or nearest neighbours of ``queries`` (profile positions), one product per block.

    Multilabel AP (a :class:`LabelRankTask`) takes every profile as a query, on the CPU.

    On the CPU, one worker thread per core computes a block's product (BLAS limited to one thread
    for the duration) and runs the kernels on it while the block is fresh.

    ``device`` names a torch device (``"cuda"``) to compute on it instead (built-in metrics only).
    """
    q = len(queries)
    rank_out = None if ranks is None else RankResult(np.full(q, np.nan), np.zeros(q, np.int64), np.zeros(q, np.int64))
    if isinstance(ranks, LabelRankTask):
        e = ranks.labels.size
        rank_out = LabelRankResult(np.full(e, np.nan), np.zeros(e, np.int64), np.zeros(e, np.int64),
                                   np.zeros(q, np.int64))
    nn_out = None if nearest is None else NearestResult(np.full((q, nearest.kmax), -1, np.int64),
                                                         np.zeros((q, nearest.kmax), bool), np.zeros(q, bool))
    if device is not None:
        from ._ranks_torch import sweep_torch

        sweep_torch(sim, queries, ranks, nearest, rank_out, nn_out, batch_size, device)
        return rank_out, nn_out
    workers = max(1, min(os.cpu_count() or 1, math.ceil(q / 64)))
    rows_per = max(1, rows_per_block(sim.n, batch_size) // workers)  # the workers' blocks together: one block

    def one(start: int) -> None:
        part = slice(start, min(q, start + rows_per))
        rows = np.ascontiguousarray(queries[part], dtype=np.int64)
        _run_kernels(sim.block64(rows), rows, part, ranks, nearest, rank_out, nn_out)

    # one single-threaded product and kernel per worker: a multi-threaded BLAS would leave its threads
    # spinning against the kernels between products
    with _SINGLE_THREADED_BLAS.held(), ThreadPoolExecutor(workers) as pool:
        for _ in _progress(pool.map(one, range(0, q, rows_per)), math.ceil(q / rows_per), progress_bar):
            pass
    return rank_out, nn_out


class _SharedLimit:
    """BLAS limited to one thread while any sweep runs; the first to start sets it, the last to end
    restores it (sweeps in several threads must not restore each other's limit)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._limiter = None

    @contextmanager
    def held(self) -> Iterator[None]:
        from threadpoolctl import threadpool_limits

        with self._lock:
            if self._users == 0:
                self._limiter = threadpool_limits(1, user_api="blas")
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._limiter.restore_original_limits()


_SINGLE_THREADED_BLAS = _SharedLimit()


def _run_kernels(block: np.ndarray, rows: np.ndarray, part: slice, ranks: RankTask | LabelRankTask | None,
                 nearest: NearestTask | None, rank_out: RankResult | LabelRankResult | None,
                 nn_out: NearestResult | None) -> None:
    from . import _ranks

    if isinstance(ranks, LabelRankTask):
        _ranks.ap_label_block(block, rows, ranks.label_ptr, ranks.labels, ranks.label_members, ranks.label_start,
                              ranks.pos_same, ranks.pos_diff, ranks.neg_same, ranks.neg_diff, ranks.label_neg,
                              rank_out.ap, rank_out.n_pos, rank_out.n_total, rank_out.n_neg[part])
    elif ranks is not None:
        _ranks.ap_block(block, rows, ranks.group_of, ranks.members, ranks.group_start, ranks.pos_diff,
                        ranks.neg_same, ranks.neg_diff, ranks.neg_members, ranks.neg_start, ranks.neg_size,
                        rank_out.ap[part], rank_out.n_pos[part], rank_out.n_neg[part])
    if nearest is not None:
        _ranks.nearest_block(block, rows, nearest.exclude, nearest.pool, nearest.label_ptr, nearest.labels,
                             nearest.label_members, nearest.label_start, nearest.kmax, nn_out.nearest[part],
                             nn_out.shares[part], nn_out.possible[part])


def _progress(done: Iterable[None], total: int, show: bool) -> Iterable[None]:
    if not show:
        return done
    from tqdm.auto import tqdm

    return tqdm(done, total=total, desc="similarity blocks", leave=False)
