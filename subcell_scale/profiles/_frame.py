"""Shared helpers of the profile steps: dense float64 features, reference rows, strata."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._anndata import rows_matching
from ..errors import ProfilingError


def dense_features(adata: AnnData, step: str, *, float64: bool = True) -> np.ndarray:
    """``X`` as a float64 array (a copy), the precision pycytominer computes in; with ``float64=False``
    ``X`` itself when dense, for steps that only read it and accumulate in float64 where it matters."""
    if adata.X is None:
        raise ProfilingError(f"{step}: the AnnData has no X matrix")
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    if x.dtype.kind not in "fiub":
        raise ProfilingError(f"{step}: X has dtype {x.dtype}; features must be numeric")
    return x.astype(np.float64, copy=True) if float64 else x


def query_rows(obs: pd.DataFrame, query: str, step: str, what: str = "reference") -> np.ndarray:
    """Boolean mask of the rows matching a pandas query on obs (``"all"`` selects every row)."""
    return rows_matching(obs, query, what=f"{step}: {what}")


def strata(obs: pd.DataFrame, by: str | Sequence[str] | None, step: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, boolean row mask) for each stratum; one stratum named "all" without ``by``."""
    if by is None:
        yield "all", np.ones(len(obs), dtype=bool)
        return
    columns = [by] if isinstance(by, str) else list(by)
    missing = [c for c in columns if c not in obs.columns]
    if missing:
        raise ProfilingError(f"{step}: by={by!r} names obs column(s) {missing} that do not exist; obs columns are "
                             f"{list(obs.columns)}")
    codes = obs[columns].reset_index(drop=True).groupby(columns, sort=True, dropna=False, observed=True).ngroup()
    codes = codes.to_numpy()
    _, first = np.unique(codes, return_index=True)
    for code, row in enumerate(first):
        values = obs[columns].iloc[row].tolist()
        name = ", ".join(f"{c}={v!r}" for c, v in zip(columns, values, strict=True))
        yield name, codes == code


def keep_features(adata: AnnData, kept: np.ndarray, *, copy: bool, x: np.ndarray | None = None) -> AnnData:
    """``adata`` restricted to the features ``kept`` marks: a new object with ``copy``, else in place.

    With ``x`` (the new feature matrix, one column per kept feature) it becomes ``X`` and the old
    ``X`` is never copied: a step that computes new values pays for no copy of the ones it replaces.
    """
    if copy:
        source = adata if kept.all() else adata[:, kept]
        return source._mutated_copy(X=x) if x is not None else source.copy()
    if not kept.all():
        adata._inplace_subset_var(kept)
    if x is not None:
        adata.X = x
    return adata
