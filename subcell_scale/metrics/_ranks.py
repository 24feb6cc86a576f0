"""Positive ranks and nearest neighbours read from a block of similarities in one pass per row.

The similarity product is the floor of any retrieval metric; what comes after it should cost about as
much as reading the block once. For each query row these kernels gather the positives' similarities
from the group lists (a few loads). With up to 16 positives and at most one ``neg_diffby`` column,
each positive's ranking key becomes a float64 threshold (a key is better exactly when the similarity
is above it), so one branch-free pass over the row counts, for four positives at a time, the profiles
ranked above them; the query's own ``neg_diffby`` group, found from its member list, is taken back out.
Otherwise the row is read once into a buffer of the negatives' keys (+inf elsewhere) decided from
integer group codes, and each positive's count is taken from the buffer while it is in cache (a
histogram over the sorted positive keys when there are many). Nearest neighbours keep a sorted top-k
buffer filled in one walk over the row. No (rows x profiles) mask or copy is made. The kernels release
the GIL; the sweep runs one per thread, each on its own block.

Ranking keys follow copairs: ``float32(1) - float32(similarity)``, smaller is better, and a negative
with exactly the same key as a positive is ranked after it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_FEW = 16  # up to this many positives, vectorised counting passes beat a histogram
_SIM_MAX = 1e100  # similarities counted against thresholds are finite and far from overflow


@njit(inline="always")
def _key(s: float) -> np.float32:
    return np.float32(1.0) - np.float32(s)


@njit(cache=True, nogil=True)
def ap_block(sims: np.ndarray, rows: np.ndarray, group_of: np.ndarray, members: np.ndarray, group_start: np.ndarray,
             pos_diff: np.ndarray, neg_same: np.ndarray, neg_diff: np.ndarray, neg_members: np.ndarray,
             neg_start: np.ndarray, neg_size: np.ndarray, ap: np.ndarray, n_pos: np.ndarray, n_neg: np.ndarray) -> None:
    """AP, positives and negatives of each query row of ``sims`` (len(rows), n_profiles).

    Positives of query ``i`` are the other members of its group (``group_of``: the ``pos_sameby``
    columns as one code; ``members[group_start[g]:group_start[g + 1]]``) that differ from it in every
    ``pos_diff`` row of codes; negatives share its ``neg_same`` code (``neg_size`` profiles per code)
    and differ in every ``neg_diff`` row (the first row's groups listed as ``neg_members`` /
    ``neg_start``). Outputs are written at the block's row positions.
    """
    for r in range(rows.size):
        i = rows[r]
        g = group_of[i]
        s, keys = _positives(sims, r, i, members[group_start[g]:group_start[g + 1]], pos_diff)
        m = keys.size
        if m <= _FEW and neg_diff.shape[0] <= 1 and np.all(np.abs(s) < _SIM_MAX):
            above, negatives = _above_by_thresholds(sims[r], i, s, keys, neg_same, neg_diff, neg_members, neg_start,
                                                    neg_size)
        else:
            neg_keys = np.empty(sims.shape[1], dtype=np.float32)
            negatives = _negative_keys(sims, r, i, neg_same, neg_diff, neg_keys)
            above = _above(neg_keys, keys)
        n_pos[r] = m
        n_neg[r] = negatives
        ap[r] = _ap(above, m) if m else np.nan


@njit(cache=True, nogil=True)
def ap_label_block(sims: np.ndarray, rows: np.ndarray, label_ptr: np.ndarray, labels: np.ndarray,
                   label_members: np.ndarray, label_start: np.ndarray, pos_same: np.ndarray, pos_diff: np.ndarray,
                   neg_same: np.ndarray, neg_diff: np.ndarray, label_neg: int, ap: np.ndarray, n_pos: np.ndarray,
                   n_total: np.ndarray, n_neg: np.ndarray) -> None:
    """Multilabel AP: one result per (query, label) entry ``e`` in ``label_ptr[i]:label_ptr[i + 1]``.

    Positives of query ``i`` for label ``labels[e]`` are the label's other members
    (``label_members[label_start[l]:label_start[l + 1]]``) with its ``pos_same`` code that differ from
    it in every ``pos_diff`` row. Its negatives, the same for all its labels, follow the ``neg_same``
    and ``neg_diff`` codes and, with ``label_neg`` 1 (2), share at least one (no) label with it: the
    members of its labels are stamped once per query, so no per-label mask is made. ``n_neg`` is
    written at the block's row positions, the others at the entries.
    """
    n = sims.shape[1]
    inf = np.float32(np.inf)
    stamp = np.full(n, -1, dtype=np.int64)
    neg_keys = np.empty(n, dtype=np.float32)
    for r in range(rows.size):
        i = rows[r]
        negatives = _negative_keys(sims, r, i, neg_same, neg_diff, neg_keys)
        if label_neg:
            for e in range(label_ptr[i], label_ptr[i + 1]):
                lab = labels[e]
                for t in range(label_start[lab], label_start[lab + 1]):
                    stamp[label_members[t]] = i
            want = label_neg == 1
            for j in range(n):
                drop = ((stamp[j] == i) != want) & (neg_keys[j] != inf)
                negatives -= drop
                neg_keys[j] = inf if drop else neg_keys[j]
        n_neg[r] = negatives
        for e in range(label_ptr[i], label_ptr[i + 1]):
            lab = labels[e]
            group = label_members[label_start[lab]:label_start[lab + 1]]
            keys = np.empty(group.size, dtype=np.float32)
            m = 0
            for j in group:
                if j != i and pos_same[j] == pos_same[i] and _differs(pos_diff, i, j):
                    keys[m] = _key(sims[r, j])
                    m += 1
            keys = np.sort(keys[:m])
            n_pos[e] = m
            n_total[e] = m + negatives
            ap[e] = _ap(_above(neg_keys, keys), m) if m else np.nan


@njit(inline="always")
def _positives(sims: np.ndarray, r: int, i: int, group: np.ndarray, pos_diff: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Similarities and ranking keys of query ``i``'s positives among ``group``, best key first."""
    s = np.empty(group.size)
    m = 0
    for j in group:
        if j != i and _differs(pos_diff, i, j):
            s[m] = sims[r, j]
            m += 1
    s = s[:m]
    keys = np.empty(m, dtype=np.float32)
    for t in range(m):
        keys[t] = _key(s[t])
    order = np.argsort(keys)
    return s[order], keys[order]


@njit(inline="always")
def _threshold(s: float, k: np.float32) -> float:
    """The largest float64 whose ranking key is not below ``k = _key(s)``: a key is below ``k`` exactly
    when the similarity is above it, so counting needs neither the float32 rounding nor the keys."""
    lo, hi = s, 2.0 * abs(s) + 4.0  # _key(lo) == k, _key(hi) < k
    while True:
        mid = lo + 0.5 * (hi - lo)
        if mid <= lo or mid >= hi:
            return lo
        if _key(mid) < k:
            hi = mid
        else:
            lo = mid


@njit(inline="always")
def _above_by_thresholds(row: np.ndarray, i: int, s: np.ndarray, keys: np.ndarray, neg_same: np.ndarray,
                         neg_diff: np.ndarray, neg_members: np.ndarray, neg_start: np.ndarray, neg_size: np.ndarray
                         ) -> tuple[np.ndarray, int]:
    """Negatives ranked above each positive, counted as similarities above its threshold: four positives per
    branch-free pass over the row's profiles that share ``neg_same``, then the query's own ``neg_diff``
    group (or the query alone) taken back out."""
    m = keys.size
    thresholds = np.full(m + 3, np.inf)
    for t in range(m):
        thresholds[t] = _threshold(s[t], keys[t])
    same = neg_same[i]
    everyone = neg_size.size == 1
    above = np.zeros(m + 3, dtype=np.int64)
    for t in range(0, m, 4):
        t0, t1, t2, t3 = thresholds[t], thresholds[t + 1], thresholds[t + 2], thresholds[t + 3]
        c0 = c1 = c2 = c3 = 0
        if everyone:  # indexed loops: numba vectorises them, not iteration over the array
            for j in range(row.size):
                v = row[j]
                c0 += v > t0
                c1 += v > t1
                c2 += v > t2
                c3 += v > t3
        else:
            for j in range(row.size):
                v = row[j] if neg_same[j] == same else -np.inf
                c0 += v > t0
                c1 += v > t1
                c2 += v > t2
                c3 += v > t3
        above[t], above[t + 1], above[t + 2], above[t + 3] = c0, c1, c2, c3
    negatives = neg_size[same]
    if neg_diff.shape[0]:
        own = neg_diff[0, i]
        out = neg_members[neg_start[own]:neg_start[own + 1]]
    else:
        out = np.array([i], dtype=np.int64)
    for j in out:
        if neg_same[j] == same:
            negatives -= 1
            v = row[j]
            for t in range(m):
                above[t] -= v > thresholds[t]
    return above[:m], negatives


@njit(inline="always")
def _negative_keys(sims: np.ndarray, r: int, i: int, neg_same: np.ndarray, neg_diff: np.ndarray,
                   neg_keys: np.ndarray) -> int:
    """Fill ``neg_keys`` with the row's negatives as ranking keys (+inf elsewhere); return their number.

    Vectorised passes over one row, the first also testing the first ``neg_diff`` row of codes (codes
    are never negative: -1 matches nothing).
    """
    n = sims.shape[1]
    inf = np.float32(np.inf)
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
    return negatives


@njit(inline="always")
def _above(neg_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Negatives ranked above each sorted positive key: one counting pass per key when there are few."""
    m = keys.size
    above = np.zeros(m, dtype=np.int64)
    if m <= _FEW:
        for t in range(m):
            bound = keys[t]
            count = 0
            for j in range(neg_keys.size):
                count += neg_keys[j] < bound
            above[t] = count
        return above
    worst = keys[m - 1]
    for j in range(neg_keys.size):
        v = neg_keys[j]
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
                  label_ptr: np.ndarray, labels: np.ndarray, label_members: np.ndarray, label_start: np.ndarray,
                  kmax: int, nearest: np.ndarray, shares: np.ndarray, possible: np.ndarray) -> None:
    """The ``kmax`` most similar allowed profiles of each query row, best first (ties: lower index).

    Allowed: in ``pool``, not the query, and different in every ``exclude`` row of codes. The walk over
    the row tests similarity against the current k-th best before anything else, so most profiles cost
    one compare; the best ``kmax`` are kept in a heap (worst on top). ``possible`` says whether any
    allowed profile shares a label (``labels[label_ptr[j]:label_ptr[j + 1]]``, sorted) with the query,
    read from the members of its labels (``label_members[label_start[l]:label_start[l + 1]]``);
    ``shares`` whether each neighbour does. Unfilled slots of ``nearest`` hold -1.
    """
    n = sims.shape[1]
    heap_s = np.empty(kmax)
    heap_j = np.empty(kmax, dtype=np.int64)
    for r in range(rows.size):
        i = rows[r]
        size = 0
        worst = -np.inf
        for j in range(n):
            s = sims[r, j]
            if s > worst and j != i and pool[j] and _differs(exclude, i, j):
                if size < kmax:
                    _sift_up(heap_s, heap_j, size, s, j)
                    size += 1
                    if size == kmax:
                        worst = heap_s[0]
                else:  # a later profile with the worst similarity stays out: ties go to the lower index
                    _sift_down(heap_s, heap_j, 0, size, s, j)
                    worst = heap_s[0]
        idx = np.full(kmax, -1, dtype=np.int64)
        for p in range(size - 1, -1, -1):  # the worst first, into the last slot
            idx[p] = heap_j[0]
            _sift_down(heap_s, heap_j, 0, p, heap_s[p], heap_j[p])
        nearest[r] = idx
        found = False
        for e in range(label_ptr[i], label_ptr[i + 1]):
            lab = labels[e]
            for t in range(label_start[lab], label_start[lab + 1]):
                j = label_members[t]
                if j != i and pool[j] and _differs(exclude, i, j):
                    found = True
                    break
            if found:
                break
        possible[r] = found
        for p in range(kmax):
            shares[r, p] = idx[p] >= 0 and _share(labels, label_ptr, i, idx[p])


@njit(inline="always")
def _worse(s: float, j: int, s2: float, j2: int) -> bool:
    """Whether neighbour (s, j) ranks below (s2, j2): less similar, or as similar with a higher index."""
    return s < s2 or (s == s2 and j > j2)


@njit(inline="always")
def _sift_up(heap_s: np.ndarray, heap_j: np.ndarray, p: int, s: float, j: int) -> None:
    """Place (s, j) from slot ``p`` upwards."""
    while p > 0:
        q = (p - 1) >> 1
        if _worse(s, j, heap_s[q], heap_j[q]):
            heap_s[p] = heap_s[q]
            heap_j[p] = heap_j[q]
            p = q
        else:
            break
    heap_s[p] = s
    heap_j[p] = j


@njit(inline="always")
def _sift_down(heap_s: np.ndarray, heap_j: np.ndarray, p: int, size: int, s: float, j: int) -> None:
    """Place (s, j) from slot ``p`` downwards (moving the hole, not swapping pairs)."""
    while True:
        c = 2 * p + 1
        if c >= size:
            break
        d = c + 1
        if d < size and _worse(heap_s[d], heap_j[d], heap_s[c], heap_j[c]):
            c = d
        if _worse(heap_s[c], heap_j[c], s, j):
            heap_s[p] = heap_s[c]
            heap_j[p] = heap_j[c]
            p = c
        else:
            break
    heap_s[p] = s
    heap_j[p] = j


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
