"""Average precision and mean average precision with copairs' names, columns and semantics.

What users of copairs 0.5.5 know holds here: the same arguments, output columns, pair rules, ties,
NaN for queries without positives, the null per (n_pos_pairs, n_total_pairs) configuration with the
same seeds (so p-values are identical), Benjamini-Hochberg q-values and the multilabel variant. What
differs is how it is computed: copairs lists every pair (a self-join) and sorts one long rank list,
which runs out of memory at about 9,000 profiles in "vs all other perturbations" designs. Here one
block of query rows is compared with all profiles by a matrix product, and each query's AP comes from
counting, for every positive, the negatives ranked above it, in one pass over the block with the pair
rules read from integer group codes (:mod:`._ranks`); memory is one block, whatever the number of
pairs. The multilabel variant reads its positives from each label's member list and its negatives
from the same codes, with the query's labels stamped once per row (no per-label masks).

Precision and ties follow copairs: similarities are rounded to float32 and ranked by
``float32(1) - similarity``; a negative with exactly the same rounded similarity as a positive is
ranked after it (positives win ties). With float64 features the APs equal copairs' to rounding
(about 1e-15).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from .._anndata import rows_matching
from .._docs import doc_params
from ..errors import ProfilingError
from ._pairs import (
    Rule,
    apply_queries,
    as_list,
    check_columns,
    label_lists,
    make_rule,
    parse_labels,
    split_queries,
)
from ._similarity import Distance, Similarity
from ._sweep import LabelRankTask, RankResult, RankTask, sweep

logger = logging.getLogger(__name__)

AP_COLUMNS = ("n_pos_pairs", "n_total_pairs", "average_precision", "normalized_average_precision")
MAP_COLUMNS = ("mean_average_precision", "indices", "mean_normalized_average_precision", "p_value",
               "corrected_p_value", "below_p", "below_corrected_p")
"""Result columns (copairs 0.5.5 names); everything else in a result frame is metadata."""

_NULL_CHUNK_VALUES = 1 << 24  # entries of one shuffled block when drawing null rank lists


# --------------------------------------------------------------------------------------------
# expected AP under random ranking (copairs >= 0.5.5 normalized AP)


def _harmonic(n_max: int) -> np.ndarray:
    h = np.zeros(n_max + 1)
    if n_max:
        h[1:] = np.cumsum(1.0 / np.arange(1, n_max + 1))
    return h


def expected_average_precision(n_pos: np.ndarray, n_total: np.ndarray) -> np.ndarray:
    """Exact mean AP of a random ranking of ``n_pos`` positives among ``n_total`` items.

    ``mu0 = (1/L) [(M-1)/(L-1) (L - H_L) + H_L]`` with ``H_L`` the L-th harmonic number.
    """
    m = np.asarray(n_pos, dtype=np.float64)
    total = np.asarray(n_total, dtype=np.int64)
    h = _harmonic(int(total.max()) if total.size else 0)[total]
    length = total.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = (1.0 / length) * (((m - 1.0) / (length - 1.0)) * (length - h) + h)
    mu0 = np.where(m == length, 1.0, mu0)
    mu0 = np.where(length == 1, np.where(m == 1, 1.0, 0.0), mu0)
    return np.where(m == 0, 0.0, mu0)


def normalized_average_precision(ap: np.ndarray, n_pos: np.ndarray, n_total: np.ndarray) -> np.ndarray:
    """``clip((AP - mu0) / (1 - mu0), -1, 1)``: 0 at chance, 1 for a perfect ranking (copairs PR #98)."""
    mu0 = expected_average_precision(n_pos, n_total)
    return np.clip((np.asarray(ap, dtype=np.float64) - mu0) / np.maximum(1.0 - mu0, 1e-10), -1.0, 1.0)


# --------------------------------------------------------------------------------------------
# average precision


def _prepare(meta: pd.DataFrame, feats: np.ndarray, rules: Sequence[Sequence[str]]
             ) -> tuple[pd.DataFrame, np.ndarray, list[list[str]]]:
    if not isinstance(meta, pd.DataFrame):
        msg = f"meta must be a pandas DataFrame, got {type(meta).__name__}"
        raise ProfilingError(msg)
    feats = np.asarray(feats)
    if feats.ndim != 2 or len(meta) != feats.shape[0]:
        msg = (f"meta has {len(meta)} rows but feats has shape {feats.shape}; they must describe the "
               "same profiles in the same order")
        raise ProfilingError(msg)
    cleaned, queries = split_queries(meta, *rules)
    keep = apply_queries(meta, queries)
    meta = meta.iloc[keep].reset_index(drop=True).copy()
    return meta, feats[keep], cleaned


@doc_params
def average_precision(
    meta: pd.DataFrame,
    feats: np.ndarray,
    pos_sameby: Sequence[str],
    pos_diffby: Sequence[str],
    neg_sameby: Sequence[str],
    neg_diffby: Sequence[str],
    batch_size: int | None = None,
    distance: Distance = "cosine",
    progress_bar: bool = False,
    *,
    multilabel_col: str | None = None,
    device: str | None = None,
) -> pd.DataFrame:
    """Average precision of every profile retrieving its positives among its negatives.

    Parameters
    ----------
    meta
        One row per profile; holds the columns named by the rules.
    feats
        (n_profiles, n_features) in the row order of ``meta``.
    pos_sameby, pos_diffby
        Positive pairs share every ``pos_sameby`` value and differ in every ``pos_diffby`` value:
        replicates of a compound are ``pos_sameby=["compound"]``; add ``pos_diffby=["plate"]`` to
        count only replicates on other plates (plate effects then cannot help).
    neg_sameby, neg_diffby
        Negative pairs, the same way. ``neg_diffby=["compound"]`` ranks a replicate against all
        other compounds; ``neg_sameby=["plate"]`` keeps those on the query's plate. To rank against
        controls only, mark controls with :func:`assign_reference_index` and use
        ``pos_sameby=[pert, ref]``, ``neg_diffby=[pert, ref]`` (copairs' convention).
        Any entry that is not a column is read as a pandas query (``"control_type != 'negcon'"``)
        selecting the profiles that take part; queries are ANDed and add no pairing constraint.
    {similarity_batch_size}
        Unlike copairs (pairs per batch) it bounds memory, not thread chunks.
    {distance}
    progress_bar
        Show a tqdm bar over blocks (off by default, unlike copairs).
    multilabel_col
        A column holding several labels per profile (lists or ``"|"``-separated strings, e.g. MoAs).
        It must be in ``pos_sameby``: two profiles are positive for label ``l`` when both carry it,
        and each profile gets one row per label it shares with a positive (copairs'
        ``multilabel.average_precision``). In ``neg_diffby`` negatives share no label; in
        ``neg_sameby`` they share at least one.
    device
        A torch device (``"cuda"``) to compute single-label APs on (built-in metrics); the result is
        the same as on the CPU (see :mod:`subcell_scale.metrics._ranks_torch`). ``None``: the CPU.

    Returns
    -------
    pandas.DataFrame
        ``meta`` (rows kept by any query, index reset) plus ``n_pos_pairs``, ``n_total_pairs``,
        ``average_precision`` (NaN without positives) and ``normalized_average_precision``. With
        ``multilabel_col``, one row per (profile, label) holding that label in ``multilabel_col``,
        sorted by label then profile.
    """
    t0 = time.perf_counter()
    meta, feats, (pos_same, pos_diff, neg_same, neg_diff) = _prepare(
        meta, feats, (pos_sameby, pos_diffby, neg_sameby, neg_diffby))
    columns = [*pos_same, *pos_diff, *neg_same, *neg_diff]
    check_columns(meta, columns, label_col=multilabel_col)
    sim = Similarity(feats, distance)
    if multilabel_col is not None:
        result = _average_precision_multilabel(meta, sim, pos_same, pos_diff, neg_same, neg_diff,
                                               multilabel_col, batch_size, progress_bar)
    else:
        result = _average_precision_single(meta, sim, make_rule(pos_same, pos_diff, "positive pairs"),
                                           make_rule(neg_same, neg_diff, "negative pairs"), batch_size,
                                           progress_bar, device)
    logger.info("average precision of %d queries from %d profiles in %.2f s", len(result), len(meta),
                time.perf_counter() - t0)
    return result


def _average_precision_single(meta: pd.DataFrame, sim: Similarity, pos_rule: Rule, neg_rule: Rule,
                              batch_size: int | None, progress_bar: bool, device: str | None) -> pd.DataFrame:
    task = RankTask.of(meta, pos_rule, neg_rule)
    ranks, _ = sweep(sim, np.arange(len(meta)), ranks=task, batch_size=batch_size, progress_bar=progress_bar,
                     device=device)
    return ap_frame(meta, ranks, pos_rule, neg_rule)


def ap_frame(meta: pd.DataFrame, ranks: RankResult, pos_rule: Rule, neg_rule: Rule) -> pd.DataFrame:
    """``meta`` with copairs' AP columns from a sweep's ranks of every profile (raises without pairs)."""
    _check_pairs(ranks.n_pos, ranks.n_neg, pos_rule, neg_rule)
    ap, n_pos, n_total = ranks.ap, ranks.n_pos, ranks.n_pos + ranks.n_neg
    out = meta
    out["n_pos_pairs"] = n_pos
    out["n_total_pairs"] = n_total
    out["average_precision"] = ap
    norm = normalized_average_precision(np.nan_to_num(ap), n_pos, n_total)
    out["normalized_average_precision"] = np.where(np.isnan(ap), np.nan, norm)
    return out


def _check_pairs(n_pos: np.ndarray, n_neg: np.ndarray, pos_rule: Rule, neg_rule: Rule) -> None:
    if not n_pos.any():
        msg = (f"no positive pairs: no two profiles share {list(pos_rule.sameby)} and differ in "
               f"{list(pos_rule.diffby)}")
        raise ProfilingError(msg)
    if not n_neg.any():
        msg = (f"no negative pairs: no two profiles share {list(neg_rule.sameby)} and differ in "
               f"{list(neg_rule.diffby)}")
        raise ProfilingError(msg)


def _average_precision_multilabel(meta: pd.DataFrame, sim: Similarity, pos_same: list[str],
                                  pos_diff: list[str], neg_same: list[str], neg_diff: list[str],
                                  label_col: str, batch_size: int | None, progress_bar: bool) -> pd.DataFrame:
    if label_col not in pos_same:
        msg = (f"multilabel_col {label_col!r} must be in pos_sameby (profiles are positive when they "
               f"share a label); pos_sameby is {pos_same}")
        raise ProfilingError(msg)
    if label_col in pos_diff or (label_col in neg_same and label_col in neg_diff):
        msg = f"multilabel_col {label_col!r} can be in pos_sameby and one of neg_sameby / neg_diffby only"
        raise ProfilingError(msg)
    pos_rule = Rule(tuple(c for c in pos_same if c != label_col), tuple(pos_diff))
    neg_rule = Rule(tuple(c for c in neg_same if c != label_col), tuple(c for c in neg_diff if c != label_col))
    if label_col not in neg_same and label_col not in neg_diff and not (neg_rule.sameby or neg_rule.diffby):
        msg = "negative pairs: give at least one neg_sameby or neg_diffby column"
        raise ProfilingError(msg)
    label_ptr, labels, names = label_lists(parse_labels(meta[label_col]))
    label_neg = 1 if label_col in neg_same else 2 if label_col in neg_diff else 0
    task = LabelRankTask.of(meta, label_ptr, labels, pos_rule, neg_rule, label_neg)
    ranks, _ = sweep(sim, np.arange(len(meta)), ranks=task, batch_size=batch_size, progress_bar=progress_bar)
    if not ranks.n_pos.any():
        msg = f"no positive pairs: no two profiles share a label in {label_col!r} and the rules {pos_rule}"
        raise ProfilingError(msg)
    if not ranks.n_neg.any():
        msg = f"no negative pairs under neg_sameby={neg_same}, neg_diffby={neg_diff}"
        raise ProfilingError(msg)
    entry = np.flatnonzero(ranks.n_pos)
    row = np.repeat(np.arange(len(meta)), np.diff(label_ptr))[entry]
    lab = labels[entry]
    order = np.lexsort((row, lab))
    entry, row, lab = entry[order], row[order], lab[order]
    ap, n_pos, n_total = ranks.ap[entry], ranks.n_pos[entry], ranks.n_total[entry]
    out = meta.drop(columns=[label_col]).iloc[row].reset_index(drop=True)
    out["average_precision"] = ap
    out["normalized_average_precision"] = normalized_average_precision(ap, n_pos, n_total)
    out["n_pos_pairs"] = n_pos
    out["n_total_pairs"] = n_total
    out[label_col] = np.asarray(names, dtype=object)[lab]
    return out


def assign_reference_index(df: pd.DataFrame, condition: str | pd.Index, reference_col: str = "Metadata_Reference_Index",
                           default_value: int = -1, inplace: bool = False) -> pd.DataFrame | None:
    """Give each reference row (e.g. a negative control) its own id and every other row ``default_value``.

    With ``reference_col`` in ``pos_sameby`` and ``neg_diffby`` (next to the perturbation column)
    references never pair with each other and only pair with treatments as negatives: the
    phenotypic-activity design of copairs.
    """
    if not inplace:
        df = df.copy()
    df[reference_col] = default_value
    if isinstance(condition, str):
        condition = df.index[rows_matching(df, condition, what="reference condition")]
    df.loc[condition, reference_col] = condition
    return None if inplace else df


# --------------------------------------------------------------------------------------------
# null distributions and p-values


def _null_average_precision(null_size: int, n_pos: int, n_total: int, seed: int) -> np.ndarray:
    """AP of ``null_size`` random rank lists, drawn exactly as copairs' ``random_ap`` (float32).

    Rows are shuffled in chunks (the generator consumes the same stream row by row), so memory
    stays bounded for long lists.
    """
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if n_total < 2**16 else np.uint32
    chunk = max(1, _NULL_CHUNK_VALUES // max(1, n_total))
    ranks = np.arange(1, n_pos + 1, dtype=np.float32)
    out = np.empty(null_size, dtype=np.float32)
    base = np.arange(n_total, dtype=dtype)
    for start in range(0, null_size, chunk):
        stop = min(null_size, start + chunk)
        idx = np.tile(base, (stop - start, 1))
        rng.permuted(idx, axis=1, out=idx)
        first = np.sort(idx[:, :n_pos], axis=1)
        out[start:stop] = (ranks / (first + 1)).sum(axis=1) / n_pos
    return out


def _exact_null(n_pos: int, n_total: int) -> np.ndarray:
    """AP of every one of the comb(L, M) rank lists, sorted (float64)."""
    count = math.comb(n_total, n_pos)
    combos = np.fromiter(itertools.combinations(range(1, n_total + 1), n_pos),
                         dtype=np.dtype((np.int32, (n_pos,))), count=count)
    ap = (np.arange(1, n_pos + 1, dtype=np.float64) / combos).sum(axis=1) / n_pos
    ap.sort()
    return ap


def _null_cached(null_size: int, n_pos: int, n_total: int, seed: int, cache_dir: Path | None) -> np.ndarray:
    if cache_dir is None:
        return _null_average_precision(null_size, n_pos, n_total, seed)
    path = cache_dir / f"ns{null_size}" / f"seed{seed}" / f"n{n_total}_k{n_pos}.npy"
    if path.exists():
        try:
            values = np.load(path)
            if values.shape == (null_size,):
                return values
        except (OSError, ValueError, EOFError):
            logger.warning("null cache file %s is unreadable; drawing it again", path)
    values = _null_average_precision(null_size, n_pos, n_total, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{time.time_ns()}.tmp.npy")
    np.save(tmp, values)
    tmp.replace(path)
    return values


def benjamini_hochberg(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), clipped at 1; order of the input kept."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(q)
    out[order] = np.minimum(q, 1.0)
    return out


def mean_average_precision(
    ap_scores: pd.DataFrame,
    sameby: str | Sequence[str],
    null_size: int,
    threshold: float,
    seed: int,
    progress_bar: bool = False,
    max_workers: int | None = None,
    cache_dir: str | Path | None = None,
    *,
    exact: bool | Literal["auto"] = False,
    max_exact: int = 1_000_000,
) -> pd.DataFrame:
    """mAP per group with permutation p-values, BH q-values and significance flags.

    Parameters
    ----------
    ap_scores
        Output of :func:`average_precision`.
    sameby
        Columns defining a group (``["compound"]``; the label column for multilabel results).
    null_size
        Random rank lists per (n_pos_pairs, n_total_pairs) configuration. The smallest possible
        p-value is ``1 / (null_size + 1)``.
    threshold
        Significance level for ``below_p`` and ``below_corrected_p`` (usually 0.05).
    seed
        Seeds the nulls exactly as copairs does (one ``integers(8096)`` per configuration, in
        sorted (M, L) order), so p-values are identical to copairs' for the same inputs.
    progress_bar, max_workers
        tqdm bar (off by default, unlike copairs) and threads used while drawing null distributions.
    cache_dir
        Keep drawn nulls as ``.npy`` files here. The key includes each configuration's own seed,
        so unlike copairs' cache the result never depends on earlier runs.
    exact
        ``True``: for groups whose members all share one configuration and whose number of rank
        orders ``comb(L, M)`` is at most ``max_exact``, enumerate every rank order and report the
        exact permutation p-value ``P(AP_null >= mAP)`` (ties count as at least as extreme, so a
        perfect AP with 1 positive among 17 gives 1/17, not ``1/(null_size+1)``; copairs issues
        #49 and #105). ``"auto"``: do this only where ``comb(L, M) <= null_size``, i.e. where
        enumeration is cheaper than sampling. Other groups keep copairs' Monte-Carlo p-value
        ``(#{null > mAP} + 1) / (null_size + 1)``. A ``p_value_method`` column says which was used.
    max_exact
        Largest ``comb(L, M)`` enumerated when ``exact=True``.

    Returns
    -------
    pandas.DataFrame
        One row per group: ``sameby`` columns, ``mean_average_precision``, ``indices`` (rows of
        the filtered ``ap_scores`` in the group), ``mean_normalized_average_precision``,
        ``p_value``, ``corrected_p_value`` (Benjamini-Hochberg over all groups), ``below_p``,
        ``below_corrected_p``. Rows with NaN AP or no positive pair are left out first.
    """
    sameby = as_list(sameby)
    if null_size < 1:
        msg = f"null_size must be at least 1, got {null_size}"
        raise ProfilingError(msg)
    if exact not in (True, False, "auto"):
        msg = f"exact must be True, False or 'auto', got {exact!r}"
        raise ProfilingError(msg)
    needed = [*sameby, "average_precision", "n_pos_pairs", "n_total_pairs"]
    missing = [c for c in needed if c not in ap_scores.columns]
    if missing:
        msg = f"ap_scores has no column(s) {missing}; pass the output of average_precision"
        raise ProfilingError(msg)
    scores = ap_scores[ap_scores["average_precision"].notna() & (ap_scores["n_pos_pairs"] > 0)]
    scores = scores.reset_index(drop=True).copy()
    if scores.empty:
        msg = "no profile has an average precision (no positive pairs); nothing to average"
        raise ProfilingError(msg)
    if "normalized_average_precision" not in scores.columns:
        scores["normalized_average_precision"] = normalized_average_precision(
            scores["average_precision"].to_numpy(), scores["n_pos_pairs"].to_numpy(),
            scores["n_total_pairs"].to_numpy())
    confs, rev = np.unique(scores[["n_pos_pairs", "n_total_pairs"]].to_numpy(), axis=0, return_inverse=True)
    rev = np.asarray(rev).reshape(-1)
    seeds = np.random.default_rng(seed).integers(8096, size=len(confs))

    map_scores = scores.groupby(sameby, observed=True, as_index=False).agg(
        {"average_precision": ["mean", lambda x: list(x.index)], "normalized_average_precision": "mean"})
    map_scores.columns = [*sameby, "mean_average_precision", "indices", "mean_normalized_average_precision"]

    limit = 0 if exact is False else (min(null_size, max_exact) if exact == "auto" else max_exact)
    group_confs = [np.unique(rev[ix]) for ix in map_scores["indices"]]
    use_exact = np.array([len(c) == 1 and math.comb(int(confs[c[0], 1]), int(confs[c[0], 0])) <= limit
                          for c in group_confs], dtype=bool)
    sampled = sorted({int(c) for g, e in zip(group_confs, use_exact) if not e for c in g})
    null_dists = np.empty((len(confs), null_size), dtype=np.float32)
    cache = None if cache_dir is None else Path(cache_dir).expanduser()

    def draw(c: int) -> None:
        null_dists[c] = _null_cached(null_size, int(confs[c, 0]), int(confs[c, 1]), int(seeds[c]), cache)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        jobs = pool.map(draw, sampled)
        if progress_bar:
            from tqdm.auto import tqdm

            jobs = tqdm(jobs, total=len(sampled), desc="null distributions", leave=False)
        for _ in jobs:
            pass
    logger.info("drew %d null distributions of size %d in %.2f s", len(sampled), null_size, time.perf_counter() - t0)

    exact_nulls: dict[int, np.ndarray] = {}
    p_values = np.empty(len(map_scores))
    for g, (score, ix) in enumerate(zip(map_scores["mean_average_precision"], map_scores["indices"])):
        if use_exact[g]:
            c = int(group_confs[g][0])
            if c not in exact_nulls:
                exact_nulls[c] = _exact_null(int(confs[c, 0]), int(confs[c, 1]))
            values = exact_nulls[c]
            p_values[g] = (values.size - np.searchsorted(values, score - 1e-12, side="left")) / values.size
        else:
            null = null_dists[rev[ix]].mean(axis=0)
            p_values[g] = ((null > score).sum() + 1) / (null_size + 1)
    map_scores["p_value"] = p_values
    map_scores["corrected_p_value"] = benjamini_hochberg(p_values)
    map_scores["below_p"] = map_scores["p_value"] < threshold
    map_scores["below_corrected_p"] = map_scores["corrected_p_value"] < threshold
    if exact is not False:
        map_scores["p_value_method"] = np.where(use_exact, "exact", "permutation")
    return map_scores


def fraction_retrieved(map_scores: pd.DataFrame, column: str = "below_corrected_p") -> float:
    """Fraction of groups retrieved (significant after BH), the JUMP / CPJUMP1 summary."""
    if column not in map_scores.columns:
        msg = f"map_scores has no column {column!r}; pass the output of mean_average_precision"
        raise ProfilingError(msg)
    if map_scores.empty:
        return float("nan")
    return float(map_scores[column].astype(bool).mean())
