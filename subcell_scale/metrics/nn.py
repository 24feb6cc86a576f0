"""Nearest-neighbour (k-NN) accuracy for MoA prediction with not-same-compound / plate / batch rules.

For each query profile, its neighbours are all other labelled profiles that share none of the
``exclude_sameby`` values with it (not-same-compound: ``["compound"]``; NSCB: add the batch column;
not-same-plate: ``["plate"]``), ranked by similarity. Excluding other wells of the same compound is
what keeps the task honest: a compound's replicates are its easiest neighbours and say nothing about
its mechanism (Ljosa et al. 2013).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from .._docs import doc_params
from ..errors import ProfilingError
from ._pairs import as_list, check_columns, label_lists, label_matrix, parse_labels
from ._similarity import Distance, Similarity
from ._sweep import NearestResult, NearestTask, codes, sweep

logger = logging.getLogger(__name__)

NN_COLUMNS = ("k", "accuracy", "n_queries", "n_hits", "n_excluded_queries")
_VOTE_CHUNK = 4096  # queries whose (k x labels) votes are held at once


@doc_params
def nn_accuracy(
    meta: pd.DataFrame,
    feats: np.ndarray,
    label_col: str,
    exclude_sameby: str | Sequence[str] = (),
    k: int | Sequence[int] = 1,
    distance: Distance = "cosine",
    *,
    mode: Literal["any", "vote"] = "any",
    match: Literal["any", "identical"] = "any",
    count_all_queries: bool = False,
    query_rows: np.ndarray | None = None,
    batch_size: int | None = None,
    sep: str = "|",
    device: str | None = None,
) -> pd.DataFrame:
    """k-NN accuracy of predicting ``label_col`` from the nearest allowed profiles.

    Parameters
    ----------
    meta, feats
        One row per profile and its features, in the same order.
    label_col
        The label to predict, e.g. the MoA. A cell may hold several labels (a list, or a
        ``sep``-separated string such as ``"tubulin inhibitor|apoptosis"``); sharing one label is a
        match. Rows without a label are left out entirely (neither query nor neighbour).
    exclude_sameby
        Neighbours that share ANY of these columns' values with the query are skipped.
    k
        One or several neighbourhood sizes; one output row each.
    {distance}
    mode
        ``"any"`` (default): a query is a hit at k when at least one of its k nearest allowed
        neighbours shares a label with it (the SubCell benchmark's k-NN accuracy; for k=1 the usual
        1-NN accuracy). ``"vote"``: the labels held by most of the k neighbours are predicted (a tie
        goes to the labels of the nearer neighbour; labels that neighbour holds together stay
        tied) and the query is a hit when it carries one of them. For k=1 both modes agree.
    match
        When a neighbour's labels match the query's: ``"any"`` (default) when they share a label;
        ``"identical"`` when its label list is the same list (same labels, same order). The SubCell
        JUMP benchmark (``scripts/compute_map.py``, ``compute_nn_moa``) computes the latter: it
        compares ``set(str(m).split("|"))`` of MoA *lists*, i.e. their string forms. Only
        ``mode="any"`` is defined for ``"identical"``.
    count_all_queries
        ``False`` (default): queries without any allowed neighbour sharing their label cannot be hit
        and are left out (``n_excluded_queries``). ``True``: every query counts, those as misses,
        as the SubCell JUMP benchmark counts them (its accuracy is the mean over all queries).
    query_rows
        Boolean mask over ``meta`` of the rows that are queries; the others are only neighbours
        (e.g. negative controls kept in the pool). Default: every labelled row.
    {similarity_batch_size}
    sep
        Separator of several labels in a string.
    device
        A torch device (``"cuda"``) to search on (built-in metrics); ``None``: the CPU.

    Returns
    -------
    pandas.DataFrame
        One row per k: ``k``, ``accuracy`` (= n_hits / n_queries), ``n_queries``, ``n_hits`` and
        ``n_excluded_queries``: queries left out because no allowed neighbour shares a label with
        them (no hit is possible, e.g. an MoA with a single compound). If fewer than k neighbours
        are allowed, the available ones are used.
    """
    plan = NearestPlan.of(meta, feats, label_col, exclude_sameby, k, mode=mode, match=match,
                          query_rows=query_rows, sep=sep)
    _, found = sweep(Similarity(plan.feats, distance), plan.queries, nearest=plan.task, batch_size=batch_size,
                     device=device)
    return plan.table(found, count_all_queries=count_all_queries)


@dataclass(frozen=True)
class NearestPlan:
    """A validated k-NN design: the labelled profiles kept, the queries among them and the kernel's task."""

    feats: np.ndarray
    keep: np.ndarray
    queries: np.ndarray
    ind: np.ndarray | None
    task: NearestTask
    ks: list[int]
    mode: str
    label_col: str
    exclude: list[str]

    @classmethod
    def of(cls, meta: pd.DataFrame, feats: np.ndarray, label_col: str, exclude_sameby: str | Sequence[str],
           k: int | Sequence[int], *, mode: str, match: str, query_rows: np.ndarray | None, sep: str) -> NearestPlan:
        if mode not in ("any", "vote"):
            msg = f"mode must be 'any' or 'vote', got {mode!r}"
            raise ProfilingError(msg)
        if match not in ("any", "identical") or (match == "identical" and mode != "any"):
            msg = (f"match must be 'any' or 'identical' (the latter with mode='any'), got match={match!r}, "
                   f"mode={mode!r}")
            raise ProfilingError(msg)
        ks = sorted({int(v) for v in ([k] if np.isscalar(k) else k)})
        if not ks or ks[0] < 1:
            msg = f"k must be positive integers, got {k!r}"
            raise ProfilingError(msg)
        exclude = as_list(exclude_sameby)
        feats = np.asarray(feats)
        if feats.ndim != 2 or len(meta) != feats.shape[0]:
            msg = f"meta has {len(meta)} rows but feats has shape {feats.shape}; they must describe the same profiles"
            raise ProfilingError(msg)
        check_columns(meta, [label_col, *exclude], label_col=label_col)
        labels = parse_labels(meta[label_col], sep)
        labelled = np.array([len(x) > 0 for x in labels])
        if not labelled.all():
            logger.info("nn_accuracy: %d of %d profiles have no %r label and are left out",
                        int((~labelled).sum()), len(meta), label_col)
        keep = np.flatnonzero(labelled)
        if keep.size < 2:
            msg = f"nn_accuracy needs at least 2 profiles with a {label_col!r} label, found {keep.size}"
            raise ProfilingError(msg)
        if query_rows is None:
            is_query = np.ones(keep.size, dtype=bool)
        else:
            query_rows = np.asarray(query_rows, dtype=bool)
            if query_rows.shape != (len(meta),):
                msg = (f"query_rows must be a boolean mask of the {len(meta)} rows of meta, got shape "
                       f"{query_rows.shape}")
                raise ProfilingError(msg)
            is_query = query_rows[keep]
        kept = meta.iloc[keep].reset_index(drop=True)
        kept_labels = [labels[i] for i in keep]
        ind = label_matrix(kept_labels)[0] if mode == "vote" else None  # (profiles x labels): votes only
        task = nearest_task(kept, kept_labels, exclude, match, min(ks[-1], len(kept) - 1))
        return cls(feats[keep], keep, np.flatnonzero(is_query), ind, task, ks, mode, label_col, exclude)

    def table(self, found: NearestResult, *, count_all_queries: bool) -> pd.DataFrame:
        """The accuracy table from the neighbours the sweep found for ``self.queries``."""
        possible = np.ones(self.queries.size, dtype=bool) if count_all_queries else found.possible
        n_queries = int(possible.sum())
        if n_queries == 0:
            msg = (f"no query has an allowed neighbour sharing its {self.label_col!r} label once neighbours with "
                   f"the same {self.exclude} are skipped; every label needs profiles from at least two groups")
            raise ProfilingError(msg)
        kmax = self.task.kmax
        hits = {}
        if self.mode == "any":
            first = np.cumsum(found.shares[possible], axis=1) > 0
            for kk in self.ks:
                hits[kk] = int(first[:, min(kk, kmax) - 1].sum())
        else:
            rows, nearest = self.queries[possible], found.nearest[possible]
            for kk in self.ks:
                top = nearest[:, : min(kk, kmax)]
                hits[kk] = sum(int(_vote_hits(self.ind, rows[c:c + _VOTE_CHUNK], top[c:c + _VOTE_CHUNK]).sum())
                               for c in range(0, rows.size, _VOTE_CHUNK))
        out = pd.DataFrame({"k": self.ks, "n_queries": n_queries, "n_hits": [hits[kk] for kk in self.ks],
                            "n_excluded_queries": int((~possible).sum())})
        out.insert(1, "accuracy", out["n_hits"] / out["n_queries"])
        return out


def nearest_task(meta: pd.DataFrame, labels: list[tuple[str, ...]], exclude: list[str], match: str,
                 kmax: int) -> NearestTask:
    """The kernel's view of a k-NN design: exclusion codes and the labels compared (CSR, sorted)."""
    if match == "identical":  # the label list itself is the one label compared
        label_of = pd.factorize(pd.Series(labels, dtype=object))[0]
        ptr, flat = np.arange(len(labels) + 1, dtype=np.int64), label_of.astype(np.int64)
    else:
        ptr, flat, _ = label_lists(labels)
    return NearestTask.of(codes(meta, exclude), np.ones(len(meta), dtype=bool), ptr, flat, kmax)


def _vote_hits(ind: np.ndarray, rows: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """The most voted labels of the neighbours (ties to the nearer neighbour's) include one of the query's."""
    held = ind[nearest] & (nearest >= 0)[:, :, None]  # (queries, k, labels)
    votes = held.sum(axis=1)
    width = nearest.shape[1]
    first_rank = np.where(held.any(axis=1), np.argmax(held, axis=1), width)
    score = np.where(votes > 0, votes * (width + 1) - first_rank, -1)
    predicted = (score == score.max(axis=1, keepdims=True)) & (votes > 0)
    return (predicted & ind[rows]).any(axis=1)
