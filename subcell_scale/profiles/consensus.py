"""Consensus profiles: one row per perturbation (or any replicate grouping) from its replicate wells.

``median`` and ``mean`` are plain per-feature aggregates; ``modz`` weights each replicate by how well
it agrees with the others (mean Spearman correlation, clipped at ``min_weight``), as
``pycytominer.consensus(operation="modz")`` does, so one failed well does not drag the profile.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from .._constants import Keys
from ..errors import ProfilingError
from ._frame import dense_features
from ._steps import record_step

logger = logging.getLogger(__name__)

ConsensusOperation = Literal["median", "mean", "modz"]


def consensus(
    adata: AnnData,
    *,
    by: str | Sequence[str] = ("compound",),
    operation: ConsensusOperation = "median",
    modz_method: str = "spearman",
    modz_min_weight: float = 0.01,
    modz_precision: int = 4,
) -> AnnData:
    """Collapse replicate profiles into one consensus profile per group.

    Parameters
    ----------
    adata
        Profiles (e.g. normalised well profiles).
    by
        obs columns identifying replicates (pycytominer's ``replicate_columns``), e.g.
        ``("compound",)`` or ``("plate", "compound")`` for per-plate consensus.
    operation
        ``"median"``, ``"mean"`` or ``"modz"`` (replicate-correlation weighted sum).
    modz_method, modz_min_weight, modz_precision
        Correlation between replicates (``"spearman"``, ``"pearson"``, ``"kendall"``), the floor
        of a replicate's weight, and the number of decimals the weights are rounded to.

    Returns
    -------
    AnnData with one row per group sorted by the ``by`` values: ``X`` float32; ``obs`` = the
    ``by`` columns, obs columns constant within every group (e.g. ``moa`` for a compound),
    ``n_profiles`` (replicates) and ``n_cells`` (sum, when the input has it); a ``"consensus"``
    step in ``uns["profiling"]`` (earlier steps kept).
    """
    if operation not in ("median", "mean", "modz"):
        raise ProfilingError(f"consensus: operation must be 'median', 'mean' or 'modz', got {operation!r}")
    if modz_method not in ("spearman", "pearson", "kendall"):
        raise ProfilingError(f"consensus: modz_method must be 'spearman', 'pearson' or 'kendall', got {modz_method!r}")
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in by if c not in adata.obs.columns]
    if not by or missing:
        raise ProfilingError(f"consensus: by={by!r} must name obs columns; missing {missing}, obs columns are "
                             f"{list(adata.obs.columns)}")
    if adata.n_obs == 0:
        raise ProfilingError("consensus: the profiles have no rows")
    x = dense_features(adata, "consensus")
    obs = adata.obs.reset_index(drop=True)
    codes = obs[by].groupby(by, sort=True, dropna=False, observed=True).ngroup().to_numpy()
    n_groups = int(codes.max()) + 1
    values = np.empty((n_groups, x.shape[1]), dtype=np.float64)
    members = [np.flatnonzero(codes == g) for g in range(n_groups)]
    for g, rows in enumerate(members):
        block = x[rows]
        if operation == "median":
            values[g] = np.nanmedian(block, axis=0) if np.isnan(block).any() else np.median(block, axis=0)
        elif operation == "mean":
            values[g] = np.nanmean(block, axis=0) if np.isnan(block).any() else block.mean(axis=0)
        else:
            values[g] = _modz(block, modz_method, modz_min_weight, modz_precision)
    out_obs = _group_obs(obs, by, members)
    out = AnnData(X=values.astype(np.float32), obs=out_obs, var=adata.var.copy(), uns=_carried_uns(adata))
    params = {"by": by, "operation": operation}
    if operation == "modz":
        params.update(modz_method=modz_method, modz_min_weight=float(modz_min_weight),
                      modz_precision=int(modz_precision))
    record_step(out, "consensus", **params)
    logger.info("consensus: %d profiles -> %d groups of %s (%s)", adata.n_obs, n_groups, "+".join(by), operation)
    return out


def _modz(block: np.ndarray, method: str, min_weight: float, precision: int) -> np.ndarray:
    """Replicate-weighted sum: weight = mean correlation with the other replicates (clipped, normalised)."""
    k = len(block)
    if k == 1:
        return block[0].copy()
    corr = pd.DataFrame(block.T).corr(method=method).to_numpy(copy=True)
    np.fill_diagonal(corr, np.nan)
    corr = np.where(np.isnan(corr), np.nan, np.clip(corr, 0, None))
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):  # a replicate with no valid pair
        raw = np.nanmean(corr, axis=1)
    raw = np.where(np.isnan(raw), np.nan, np.clip(raw, min_weight, None))
    total = np.nansum(raw)
    weights = np.full(k, 1 / k) if total == 0 else raw / total
    weights = np.round(weights, precision)
    return np.nansum(block * weights[:, None], axis=0)


def _group_obs(obs: pd.DataFrame, by: list[str], members: list[np.ndarray]) -> pd.DataFrame:
    first = np.array([rows[0] for rows in members])
    keep = list(by)
    for column in obs.columns:
        if column in by or column in (Keys.N_CELLS, Keys.N_PROFILES):
            continue
        try:
            constant = all(obs[column].iloc[rows].nunique(dropna=False) <= 1 for rows in members)
        except TypeError:  # unhashable values
            continue
        if constant:
            keep.append(column)
    out = obs.iloc[first][keep].reset_index(drop=True)
    for column in keep:
        if isinstance(out[column].dtype, pd.CategoricalDtype):
            out[column] = out[column].cat.remove_unused_categories()
    out[Keys.N_PROFILES] = np.array([len(rows) for rows in members], dtype=np.int64)
    if Keys.N_CELLS in obs.columns:
        out[Keys.N_CELLS] = np.array([obs[Keys.N_CELLS].iloc[rows].sum() for rows in members], dtype=np.int64)
    names = pd.Index(out[by].astype(str).agg("_".join, axis=1).to_numpy(), dtype=str)
    if not names.is_unique:
        from anndata.utils import make_index_unique

        names = make_index_unique(names)
    out.index = names
    return out


def _carried_uns(adata: AnnData) -> dict:
    return {key: adata.uns[key] for key in (Keys.PROVENANCE, Keys.PROFILING) if key in adata.uns}
