"""Positive ranks and nearest neighbours read from a block of similarities in one pass per row.

The similarity product is the floor of any retrieval metric; what comes after it should cost about as
much as reading the block once. For each query row these kernels gather the
positives' ranking keys from the group lists (a few loads), then read the row once into a buffer of
the negatives' keys (+inf elsewhere) decided from integer group codes; the buffer stays in cache
while each positive's count of negatives ranked above it is taken (one vectorised pass per positive
when there are few, a histogram over the sorted positive keys otherwise). Nearest neighbours keep a
sorted top-k buffer filled in one walk over the row. No (rows x profiles) mask or copy is made. The
kernels release the GIL; the sweep runs one per thread, each on its own block.

Ranking keys follow copairs: ``float32(1) - float32(similarity)``, smaller is better, and a negative
with exactly the same key as a positive is ranked after it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_FEW = 16  # up to this many positives, one vectorised counting pass per positive beats a histogram


@njit(inline="always")
def _key(s: float) -> np.float32:
    return np.float32(1.0) - np.float32(s)


@njit(cache=True, nogil=True)
def ap_block(sims: np.ndarray, rows: np.ndarray, group_of: np.ndarray, members: np.ndarray, group_start: np.ndarray,
             pos_diff: np.ndarray, neg_same: np.ndarray, neg_diff: np.ndarray, ap: np.ndarray, n_pos: np.ndarray,
             n_neg: np.ndarray) -> None:
    """AP, positives and negatives of each query row of ``sims`` (len(rows), n_profiles).

    Positives of query ``i`` are the other members of its group (``group_of``: the ``pos_sameby``
    columns as one code; ``members[group_start[g]:group_start[g + 1]]``) that differ from it in every
    ``pos_diff`` row of codes; negatives share its ``neg_same`` code and differ in every ``neg_diff``
    row. Outputs are written at the block's row positions.
    """
    n = sims.shape[1]
    inf = np.float32(np.inf)
    for r in range(rows.size):
        i = rows[r]
        g = group_of[i]
        lo, hi = group_start[g], group_start[g + 1]
        keys = np.empty(hi - lo, dtype=np.float32)
        m = 0
        for t in range(lo, hi):
            j = members[t]
            if j != i and _differs(pos_diff, i, j):
                keys[m] = _key(sims[r, j])
                m += 1
        keys = np.sort(keys[:m])
        # the row's negatives as ranking keys, everything else +inf: vectorised passes over one row, the
        # first also testing the first neg_diff column (codes are never negative: -1 matches nothing)
        neg_keys = np.empty(n, dtype=np.float32)
        same = neg_same[i]
        first = neg_diff[0] if neg_diff.shape[0] else neg_same
        own = first[i] if neg_diff.shape[0] else -1
        negatives = 0
        for j in range(n):
            ok = (neg_same[j] == same) & (first[j] != own)
            neg_keys[j] = _key(sims[r, j]) if ok else inf
            negatives += ok
        if neg_keys[i] != inf:
            neg_keys[i] = inf
            negatives -= 1
        if neg_diff.shape[0] > 1:
            for c in range(1, neg_diff.shape[0]):
                codes = neg_diff[c]
                own_c = codes[i]
                for j in range(n):
                    if codes[j] == own_c:
                        neg_keys[j] = inf
            negatives = 0
            for j in range(n):
                negatives += neg_keys[j] != inf
        n_pos[r] = m
        n_neg[r] = negatives
        ap[r] = _ap(_above(neg_keys, keys), m) if m else np.nan


@njit(inline="always")
def _above(neg_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Negatives ranked above each sorted positive key: one counting pass per key when there are few."""
    m = keys.size
    above = np.zeros(m, dtype=np.int64)
    if m <= _FEW:
        for t in range(m):
            bound = keys[t]
            count = 0
            for v in neg_keys:
                count += v < bound
            above[t] = count
        return above
    worst = keys[m - 1]
    for v in neg_keys:
        if v < worst:
            lo, hi = 0, m
            while lo < hi:
                mid = (lo + hi) >> 1
                if keys[mid] <= v:
                    lo = mid + 1
                else:
                    hi = mid
            above[lo] += 1
    for t in range(1, m):
        above[t] += above[t - 1]
    return above


@njit(inline="always")
def _ap(above: np.ndarray, m: int) -> float:
    total = 0.0
    for k in range(m):
        total += (k + 1) / (k + 1 + above[k])
    return total / m


@njit(inline="always")
def _differs(codes: np.ndarray, i: int, j: int) -> bool:
    for c in range(codes.shape[0]):
        if codes[c, j] == codes[c, i]:
            return False
    return True


@njit(cache=True, nogil=True)
def nearest_block(sims: np.ndarray, rows: np.ndarray, exclude: np.ndarray, pool: np.ndarray,
                  label_ptr: np.ndarray, labels: np.ndarray, kmax: int, nearest: np.ndarray, shares: np.ndarray,
                  possible: np.ndarray) -> None:
    """The ``kmax`` most similar allowed profiles of each query row, best first (ties: lower index).

    Allowed: in ``pool``, not the query, and different in every ``exclude`` row of codes. ``possible`` says
    whether any allowed profile shares a label (``labels[label_ptr[j]:label_ptr[j + 1]]``, sorted)
    with the query, ``shares`` whether each neighbour does. Unfilled slots of ``nearest`` hold -1.
    """
    n = sims.shape[1]
    for r in range(rows.size):
        i = rows[r]
        best = np.full(kmax, -np.inf)
        idx = np.full(kmax, -1, dtype=np.int64)
        found = False
        for j in range(n):
            if j == i or not pool[j] or not _differs(exclude, i, j):
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
        for p in range(kmax):
            shares[r, p] = idx[p] >= 0 and _share(labels, label_ptr, i, idx[p])


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
