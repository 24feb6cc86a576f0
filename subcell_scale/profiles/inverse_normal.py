"""Rank-based inverse normal transform of each feature, as the JUMP profiling recipe computes it.

``broadinstitute/jump-profiling-recipe`` (``preprocessing/transform.py``, step ``int`` of the
compound chain ``var_mad_int_featselect_harmony``) replaces each value by the standard-normal
quantile of its rank, ``Phi^-1((rank - c) / (n - 2c + 1))`` with Blom's ``c = 3/8``, ranks computed
over all rows and ties broken at random (a permutation drawn from ``numpy.random.default_rng(seed)``
for every feature). pycytominer's ``normalize(method="inverse_normal")`` (sklearn's
``QuantileTransformer``) is the other common form; it is
``normalize(method="inverse_normal")`` here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
from anndata import AnnData

from .._docs import doc_params
from ..errors import ProfilingError
from ._frame import dense_features, strata
from ._steps import record_step

logger = logging.getLogger(__name__)

TIES = ("random", "average")


@doc_params
def rank_inverse_normal(
    adata: AnnData,
    *,
    c: float = 3.0 / 8,
    ties: Literal["random", "average"] = "random",
    seed: int = 0,
    by: str | Sequence[str] | None = None,
    copy: bool = True,
) -> AnnData:
    """Map every feature onto normal scores of its ranks.

    Parameters
    ----------
    adata
        Profiles; every value must be finite (run :func:`select_variant_features` first).
    c
        Offset of the plotting position ``(rank - c) / (n - 2c + 1)``: 3/8 (Blom, the recipe),
        1/2 (Hazen), 0 (van der Waerden).
    ties
        ``"random"``: tied values get distinct ranks in a random order (the recipe's
        ``stochastic=True``); ``"average"``: they share their mean rank.
    seed
        Seed of the tie-breaking permutation, drawn afresh for each feature as in the recipe.
    by
        obs column(s) ranked separately; ``None`` (the recipe) ranks over all rows.
    {copy}

    Returns
    -------
    The transformed profiles (float32); a ``"rank_inverse_normal"`` step in ``uns["profiling"]``.
    """
    from scipy.stats import norm, rankdata

    if ties not in TIES:
        raise ProfilingError(f"rank_inverse_normal: ties must be one of {TIES}, got {ties!r}")
    if not 0 <= c < 1:
        raise ProfilingError(f"rank_inverse_normal: c must be in [0, 1), got {c}")
    x = dense_features(adata, "rank_inverse_normal")
    if not np.isfinite(x).all():
        bad = adata.var_names[~np.isfinite(x).all(axis=0)].tolist()
        raise ProfilingError(f"rank_inverse_normal: features {bad[:10]} have NaN/inf values; drop them first "
                             "(select_variant_features or feature_select drop_na_columns)")
    out = np.empty_like(x)
    groups = list(strata(adata.obs, by, "rank_inverse_normal"))
    for _, rows in groups:
        sub = x[rows]
        n = sub.shape[0]
        for j in range(sub.shape[1]):
            column = sub[:, j]
            if ties == "random":
                order = np.random.default_rng(seed).permutation(n)
                rank = np.empty(n)
                rank[order] = rankdata(column[order], method="ordinal")
            else:
                rank = rankdata(column, method="average")
            out[np.flatnonzero(rows), j] = norm.ppf((rank - c) / (n - 2 * c + 1))
    result = adata.copy() if copy else adata
    result.X = out.astype(np.float32)
    record_step(result, "rank_inverse_normal", c=float(c), ties=ties, seed=int(seed), by=by,
                strata=[name for name, _ in groups])
    return result
