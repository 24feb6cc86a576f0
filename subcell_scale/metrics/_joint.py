"""Replicate average precision and k-NN accuracy of the same profiles from one sweep of similarity blocks.

An evaluation asks both questions of the same wells: are a compound's replicates its nearest
profiles (AP), and which compounds are nearest (k-NN). Both read every query's similarities to
every profile, so when they rank the same profiles one product per block serves both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._pairs import check_columns, make_rule, split_queries
from ._similarity import Distance, Similarity
from ._sweep import NearestResult, RankTask, sweep
from .map import ap_frame
from .nn import NearestPlan


@dataclass(frozen=True)
class Joint:
    """Both results of one sweep; each is built on request, so each can fail on its own."""

    ap: Callable[[], pd.DataFrame]
    nn: Callable[[], pd.DataFrame]


def ap_and_nn(meta: pd.DataFrame, feats: np.ndarray, rules: Mapping[str, Sequence[str]], label_col: str,
              exclude_sameby: Sequence[str], k: Sequence[int], *, distance: Distance = "cosine", match: str = "any",
              query_rows: np.ndarray | None = None, count_all_queries: bool = False,
              device: str | None = None) -> Joint | None:
    """What ``average_precision(meta, feats, **rules)`` and ``nn_accuracy(meta, feats, label_col, ...)`` give.

    ``None`` when the two would not rank the same profiles (a query entry in the rules, or profiles
    without a label), so the caller runs them apart.
    """
    order = ("pos_sameby", "pos_diffby", "neg_sameby", "neg_diffby")
    (pos_same, pos_diff, neg_same, neg_diff), queries = split_queries(meta, *(rules[r] for r in order))
    plan = NearestPlan.of(meta, feats, label_col, exclude_sameby, k, mode="any", match=match, query_rows=query_rows,
                          sep="|")
    if queries or plan.keep.size != len(meta):
        return None
    check_columns(meta, [*pos_same, *pos_diff, *neg_same, *neg_diff])
    pos_rule = make_rule(pos_same, pos_diff, "positive pairs")
    neg_rule = make_rule(neg_same, neg_diff, "negative pairs")
    meta = meta.reset_index(drop=True).copy()
    ranks, found = sweep(Similarity(feats, distance), np.arange(len(meta)), ranks=RankTask.of(meta, pos_rule, neg_rule),
                         nearest=plan.task, device=device)
    q = plan.queries
    of_queries = NearestResult(found.nearest[q], found.shares[q], found.possible[q])
    return Joint(lambda: ap_frame(meta, ranks, pos_rule, neg_rule),
                 lambda: plan.table(of_queries, count_all_queries=count_all_queries))
