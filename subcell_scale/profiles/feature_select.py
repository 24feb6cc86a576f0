"""Feature selection on profiles with pycytominer's operations and rules.

Operations run in the order given, each on the features the previous ones kept, exactly as
``pycytominer.feature_select``; the correlation rule is pycytominer's all-pairs one (for every pair
correlated above the threshold, drop the member with the larger total absolute correlation), not a
greedy sequential pruning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from ..errors import ProfilingError
from ._frame import dense_features, query_rows
from ._steps import record_step

logger = logging.getLogger(__name__)

OPERATIONS = ("variance_threshold", "correlation_threshold", "drop_na_columns", "drop_outliers", "blocklist")
CORRELATION_METHODS = ("pearson", "spearman", "kendall")


def feature_select(
    adata: AnnData,
    *,
    operation: str | Sequence[str] = ("variance_threshold", "correlation_threshold"),
    min_variance: float = 1e-6,
    corr_threshold: float = 0.9,
    corr_method: str = "pearson",
    na_cutoff: float = 0.05,
    outlier_cutoff: float = 500.0,
    blocklist: Sequence[str] | str | os.PathLike | None = None,
    samples: str = "all",
    copy: bool = True,
) -> AnnData:
    """Drop uninformative or redundant features.

    Parameters
    ----------
    adata
        Profiles, usually normalised (``drop_outliers`` and the thresholds assume a common scale).
    operation
        One or more of ``"variance_threshold"`` (variance <= ``min_variance``, as sklearn's
        VarianceThreshold), ``"correlation_threshold"``, ``"drop_na_columns"`` (fraction of missing
        values > ``na_cutoff``), ``"drop_outliers"`` (any ``|value| > outlier_cutoff``) and
        ``"blocklist"``; run in this order. Put ``drop_na_columns`` first on large tables: the
        correlation step then works on fewer features.
    corr_threshold, corr_method
        Pairs with signed correlation above the threshold (``"pearson"``, ``"spearman"`` or
        ``"kendall"``) lose one member.
    blocklist
        Feature names to drop, or a text file with one name per line (a CSV with a ``blocklist``
        column, pycytominer's format, also works). Required by the ``"blocklist"`` operation.
    samples
        pandas query on ``obs`` choosing the rows the statistics are computed on (``"all"``).
    copy
        Return a new AnnData (default) or, with ``False``, subset ``adata`` in place and return it.

    Returns
    -------
    The profiles without the dropped features; a ``"feature_select"`` step in ``uns["profiling"]``
    with the parameters, ``dropped_features`` and the features each operation dropped.
    """
    operations = [operation] if isinstance(operation, str) else list(operation)
    unknown = [op for op in operations if op not in OPERATIONS]
    if unknown or not operations:
        raise ProfilingError(f"feature_select: unknown operation(s) {unknown or operations}; choose from {OPERATIONS}")
    if not 0 <= corr_threshold <= 1:
        raise ProfilingError(f"feature_select: corr_threshold must be within [0, 1], got {corr_threshold}")
    if corr_method not in CORRELATION_METHODS:
        raise ProfilingError(f"feature_select: corr_method must be one of {CORRELATION_METHODS}, got {corr_method!r}")
    if not 0 <= na_cutoff <= 1:
        raise ProfilingError(f"feature_select: na_cutoff must be within [0, 1], got {na_cutoff}")
    if min_variance < 0:
        raise ProfilingError(f"feature_select: min_variance must be >= 0, got {min_variance}")
    blocked = _read_blocklist(blocklist) if "blocklist" in operations else []
    rows = query_rows(adata.obs, samples, "feature_select", what="samples")
    if not rows.any():
        raise ProfilingError(f"feature_select: samples query {samples!r} matches no rows")
    x = dense_features(adata, "feature_select")[rows]
    names = np.asarray(adata.var_names, dtype=object)
    kept = np.ones(len(names), dtype=bool)
    by_operation: dict[str, list[str]] = {}
    for op in operations:
        columns = np.flatnonzero(kept)
        sub = x[:, columns]
        if op == "variance_threshold":
            drop = _low_variance(sub, min_variance)
        elif op == "correlation_threshold":
            drop = _correlated(sub, corr_threshold, corr_method)
        elif op == "drop_na_columns":
            drop = np.isnan(sub).mean(axis=0) > na_cutoff
        elif op == "drop_outliers":
            with np.errstate(invalid="ignore"):
                drop = np.nanmax(np.abs(sub), axis=0, initial=0.0) > outlier_cutoff
        else:
            drop = np.isin(names[columns], blocked)
        kept[columns[drop]] = False
        by_operation[op] = names[columns[drop]].tolist()
        logger.info("feature_select: %s dropped %d of %d features", op, int(drop.sum()), len(columns))
    if not kept.any():
        raise ProfilingError(f"feature_select: operations {operations} dropped all {len(names)} features; "
                             "loosen the thresholds")
    dropped = names[~kept].tolist()
    if copy:
        result = adata[:, kept].copy()
    else:
        if not kept.all():
            adata._inplace_subset_var(kept)
        result = adata
    params = {"operation": operations, "samples": samples}
    if "variance_threshold" in operations:
        params["min_variance"] = float(min_variance)
    if "correlation_threshold" in operations:
        params.update(corr_threshold=float(corr_threshold), corr_method=corr_method)
    if "drop_na_columns" in operations:
        params["na_cutoff"] = float(na_cutoff)
    if "drop_outliers" in operations:
        params["outlier_cutoff"] = float(outlier_cutoff)
    if "blocklist" in operations:
        params["blocklist"] = str(blocklist) if isinstance(blocklist, str | os.PathLike) else "list"
    record_step(result, "feature_select", dropped_features=dropped, dropped_by_operation=by_operation, **params)
    return result


def _low_variance(x: np.ndarray, min_variance: float) -> np.ndarray:
    """sklearn's VarianceThreshold rule: keep variance > threshold (peak-to-peak too at threshold 0)."""
    with np.errstate(invalid="ignore"):
        variance = np.nanvar(x, axis=0)
        if min_variance == 0:
            variance = np.nanmin(np.vstack([variance, np.ptp(x, axis=0)]), axis=0)
    return ~(variance > min_variance)


def _correlated(x: np.ndarray, threshold: float, method: str) -> np.ndarray:
    """pycytominer's correlation_threshold: all pairs above the threshold, drop the busier member."""
    d = x.shape[1]
    if d < 2:
        return np.zeros(d, dtype=bool)
    if method == "pearson" and np.isfinite(x).all():
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.corrcoef(x, rowvar=False)
    else:
        corr = pd.DataFrame(x).corr(method=method).to_numpy()
    total = np.nansum(np.abs(corr), axis=0)
    # rank by total |corr| the way pandas' sort_values does (NaN last); higher rank = more redundant
    finite = ~np.isnan(total)
    order = np.concatenate([np.flatnonzero(finite)[total[finite].argsort(kind="quicksort")], np.flatnonzero(~finite)])
    rank = np.empty(d, dtype=np.int64)
    rank[order] = np.arange(d)
    a, b = np.tril_indices(d, k=-1)
    with np.errstate(invalid="ignore"):
        above = corr[a, b] > threshold
    a, b = a[above], b[above]
    drop = np.zeros(d, dtype=bool)
    drop[np.where(rank[a] > rank[b], a, b)] = True
    return drop


def _read_blocklist(blocklist: Sequence[str] | str | os.PathLike | None) -> list[str]:
    if blocklist is None:
        raise ProfilingError("feature_select: the 'blocklist' operation needs blocklist= (feature names or a file)")
    if isinstance(blocklist, str | os.PathLike):
        path = Path(blocklist)
        if not path.is_file():
            raise ProfilingError(f"feature_select: blocklist file not found: {path}")
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if lines and lines[0] == "blocklist":  # pycytominer's CSV layout: a header named 'blocklist'
            lines = [line.split(",")[0] for line in lines[1:]]
        return lines
    return [str(name) for name in blocklist]
