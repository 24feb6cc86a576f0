"""One sweep over blocks of query rows: each similarity block is computed once and read once.

Average precision and nearest neighbours both need every query's similarities to every profile. A
sweep computes them one block of query rows at a time and hands each block to the kernels of
:mod:`._ranks` (or, on a GPU, of :mod:`._ranks_torch`) for every metric asked for, so evaluating both
costs one product. Pair rules travel as integer group codes; memory is one block.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._pairs import Rule
from ._similarity import Similarity, rows_per_block


@dataclass(frozen=True)
class Codes:
    """Rule columns as one (n_columns, n_profiles) int32 matrix and each column's row in it."""

    matrix: np.ndarray
    index: dict[str, int]

    @classmethod
    def of(cls, meta: pd.DataFrame, columns: Iterable[str]) -> Codes:
        cols = list(dict.fromkeys(columns))
        matrix = np.empty((len(cols), len(meta)), dtype=np.int32)
        for k, c in enumerate(cols):
            matrix[k] = pd.factorize(meta[c], use_na_sentinel=True)[0]
        return cls(matrix, {c: k for k, c in enumerate(cols)})

    def rows(self, columns: Sequence[str]) -> np.ndarray:
        return np.array([self.index[c] for c in columns], dtype=np.int64)


@dataclass(frozen=True)
class RankTask:
    """What the AP kernel needs: rule columns and the profiles of each query's positive group."""

    codes: Codes
    pos_same: np.ndarray
    pos_diff: np.ndarray
    neg_same: np.ndarray
    neg_diff: np.ndarray
    members: np.ndarray
    group_start: np.ndarray
    group_of: np.ndarray

    @classmethod
    def of(cls, meta: pd.DataFrame, pos: Rule, neg: Rule) -> RankTask:
        codes = Codes.of(meta, [*pos.sameby, *pos.diffby, *neg.sameby, *neg.diffby])
        n = len(meta)
        if pos.sameby:
            _, group_of = np.unique(codes.matrix[codes.rows(pos.sameby)], axis=1, return_inverse=True)
            group_of = np.asarray(group_of, dtype=np.int64).reshape(-1)
        else:  # positives may be anywhere: one group of every profile
            group_of = np.zeros(n, dtype=np.int64)
        members = np.argsort(group_of, kind="stable").astype(np.int64)
        group_start = np.searchsorted(group_of[members], np.arange(int(group_of.max()) + 2)).astype(np.int64)
        return cls(codes, codes.rows(pos.sameby), codes.rows(pos.diffby), codes.rows(neg.sameby),
                   codes.rows(neg.diffby), members, group_start, group_of)


@dataclass(frozen=True)
class NearestTask:
    """What the nearest-neighbour kernel needs: exclusion columns, the pool and labels as sorted CSR."""

    codes: Codes
    exclude: np.ndarray
    pool: np.ndarray
    label_ptr: np.ndarray
    labels: np.ndarray
    kmax: int


@dataclass
class RankResult:
    ap: np.ndarray
    n_pos: np.ndarray
    n_neg: np.ndarray


@dataclass
class NearestResult:
    nearest: np.ndarray
    possible: np.ndarray


def sweep(sim: Similarity, queries: np.ndarray, *, ranks: RankTask | None = None, nearest: NearestTask | None = None,
          batch_size: int | None = None, progress_bar: bool = False, device: str | None = None
          ) -> tuple[RankResult | None, NearestResult | None]:
    """AP and/or nearest neighbours of ``queries`` (profile positions), one product per block.

    ``device`` names a torch device (``"cuda"``) to compute on it instead (built-in metrics only).
    """
    q = len(queries)
    rank_out = None if ranks is None else RankResult(np.full(q, np.nan), np.zeros(q, np.int64), np.zeros(q, np.int64))
    nn_out = None if nearest is None else NearestResult(np.full((q, nearest.kmax), -1, np.int64), np.zeros(q, bool))
    if device is not None:
        from ._ranks_torch import sweep_torch

        sweep_torch(sim, queries, ranks, nearest, rank_out, nn_out, batch_size, device)
        return rank_out, nn_out
    from . import _ranks

    rows_per = rows_per_block(sim.n, batch_size)
    for start in _progress(range(0, q, rows_per), math.ceil(q / rows_per), progress_bar):
        part = slice(start, min(q, start + rows_per))
        rows = np.ascontiguousarray(queries[part], dtype=np.int64)
        block = sim.block64(rows)
        if ranks is not None:
            _ranks.ap_block(block, rows, ranks.codes.matrix, ranks.pos_same, ranks.pos_diff, ranks.neg_same,
                            ranks.neg_diff, ranks.members, ranks.group_start, ranks.group_of,
                            rank_out.ap[part], rank_out.n_pos[part], rank_out.n_neg[part])
        if nearest is not None:
            _ranks.nearest_block(block, rows, nearest.codes.matrix, nearest.exclude, nearest.pool,
                                 nearest.label_ptr, nearest.labels, nearest.kmax, nn_out.nearest[part],
                                 nn_out.possible[part])
    return rank_out, nn_out


def _progress(starts: Iterable[int], total: int, show: bool) -> Iterable[int]:
    if not show:
        return starts
    from tqdm.auto import tqdm

    return tqdm(starts, total=total, desc="similarity blocks", leave=False)
