"""Positive ranks and nearest neighbours read from a block of similarities in one pass per row.

The similarity product is the floor of any retrieval metric; what comes after it should cost no more
than reading the block once. For each query row these kernels gather the positives' ranking keys
from the group lists (a few loads), then walk the row once: every candidate is tested against the
pair rules on integer group codes, and a negative ranked above the worst positive adds one to a
histogram over the sorted positive keys. The cumulative histogram is each positive's count of
negatives above it, from which the AP follows. Nearest neighbours keep a sorted top-k buffer filled in
the same walk. No (rows x profiles) mask or copy is made.

Ranking keys follow copairs: ``float32(1) - float32(similarity)``, smaller is better, and a negative
with exactly the same key as a positive is ranked after it.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(inline="always")
def _holds(codes: np.ndarray, i: int, j: int, same: np.ndarray, diff: np.ndarray) -> bool:
    for c in same:
        if codes[c, j] != codes[c, i]:
            return False
    for c in diff:
        if codes[c, j] == codes[c, i]:
            return False
    return True


@njit(inline="always")
def _key(s: float) -> np.float32:
    return np.float32(1.0) - np.float32(s)


@njit(parallel=True, cache=True, nogil=True)
def ap_block(sims: np.ndarray, rows: np.ndarray, codes: np.ndarray, pos_same: np.ndarray, pos_diff: np.ndarray,
             neg_same: np.ndarray, neg_diff: np.ndarray, members: np.ndarray, group_start: np.ndarray,
             group_of: np.ndarray, ap: np.ndarray, n_pos: np.ndarray, n_neg: np.ndarray) -> None:
    """AP, positives and negatives of each query row of ``sims`` (len(rows), n_profiles).

    ``members[group_start[g]:group_start[g + 1]]`` lists the profiles of positive group ``g`` (all
    profiles in one group when the positive rule has no ``sameby`` column); ``group_of`` gives each
    profile's group. Outputs are written at the block's row positions.
    """
    n = sims.shape[1]
    for r in prange(rows.size):
        i = rows[r]
        g = group_of[i]
        lo, hi = group_start[g], group_start[g + 1]
        keys = np.empty(hi - lo, dtype=np.float32)
        m = 0
        for t in range(lo, hi):
            j = members[t]
            if j != i and _holds(codes, i, j, pos_same, pos_diff):
                keys[m] = _key(sims[r, j])
                m += 1
        keys = np.sort(keys[:m])
        worst = keys[m - 1] if m else np.float32(-np.inf)
        above = np.zeros(m + 1, dtype=np.int64)
        negatives = 0
        for j in range(n):
            if j == i or not _holds(codes, i, j, neg_same, neg_diff):
                continue
            negatives += 1
            v = _key(sims[r, j])
            if v < worst:
                above[_slot(keys, m, v)] += 1
        n_pos[r] = m
        n_neg[r] = negatives
        if m == 0:
            ap[r] = np.nan
            continue
        total = 0.0
        count = 0
        for k in range(m):
            count += above[k]
            total += (k + 1) / (k + 1 + count)
        ap[r] = total / m


@njit(parallel=True, cache=True, nogil=True)
def nearest_block(sims: np.ndarray, rows: np.ndarray, codes: np.ndarray, exclude: np.ndarray, pool: np.ndarray,
                  label_ptr: np.ndarray, labels: np.ndarray, kmax: int, nearest: np.ndarray,
                  possible: np.ndarray) -> None:
    """The ``kmax`` most similar allowed profiles of each query row, best first (ties: lower index).

    Allowed: in ``pool``, not the query, and different in every ``exclude`` column. ``possible`` says
    whether any allowed profile shares a label (``labels[label_ptr[j]:label_ptr[j + 1]]``, sorted)
    with the query. Unfilled slots of ``nearest`` hold -1.
    """
    n = sims.shape[1]
    none = np.empty(0, dtype=np.int64)
    for r in prange(rows.size):
        i = rows[r]
        best = np.full(kmax, -np.inf)
        idx = np.full(kmax, -1, dtype=np.int64)
        found = False
        for j in range(n):
            if j == i or not pool[j] or not _holds(codes, i, j, none, exclude):
                continue
            if not found:
                found = _share(labels, label_ptr, i, j)
            s = sims[r, j]
            if s <= best[kmax - 1]:
                continue
            p = kmax - 1
            while p > 0 and s > best[p - 1]:
                best[p] = best[p - 1]
                idx[p] = idx[p - 1]
                p -= 1
            best[p] = s
            idx[p] = j
        nearest[r] = idx
        possible[r] = found


@njit(inline="always")
def _slot(keys: np.ndarray, m: int, v: np.float32) -> int:
    """Number of positive keys <= v (a scan for a few positives, bisection beyond)."""
    if m <= 16:
        k = 0
        while keys[k] <= v:
            k += 1
        return k
    lo, hi = 0, m
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] <= v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(inline="always")
def _share(labels: np.ndarray, ptr: np.ndarray, i: int, j: int) -> bool:
    a, a_end, b, b_end = ptr[i], ptr[i + 1], ptr[j], ptr[j + 1]
    while a < a_end and b < b_end:
        if labels[a] == labels[b]:
            return True
        if labels[a] < labels[b]:
            a += 1
        else:
            b += 1
    return False
