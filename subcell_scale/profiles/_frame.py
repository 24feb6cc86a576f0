"""Shared helpers of the profile steps: dense float64 features, reference rows, strata."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..errors import ProfilingError


def dense_features(adata: AnnData, step: str) -> np.ndarray:
    """``X`` as a float64 array (a copy), the precision pycytominer computes in."""
    if adata.X is None:
        raise ProfilingError(f"{step}: the AnnData has no X matrix")
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    if x.dtype.kind not in "fiub":
        raise ProfilingError(f"{step}: X has dtype {x.dtype}; features must be numeric")
    return x.astype(np.float64, copy=True)


def query_rows(obs: pd.DataFrame, query: str, step: str, what: str = "reference") -> np.ndarray:
    """Boolean mask of the rows matching a pandas query on obs (``"all"`` selects every row)."""
    if query == "all":
        return np.ones(len(obs), dtype=bool)
    if not isinstance(query, str):
        raise ProfilingError(f"{step}: {what} must be 'all' or a pandas query string on obs, got {query!r}")
    frame = obs.reset_index(drop=True)
    try:
        selected = frame.query(query).index.to_numpy()
    except Exception as exc:  # pandas raises many types for a bad expression (UndefinedVariableError, SyntaxError)
        raise ProfilingError(f"{step}: cannot evaluate {what} query {query!r} on obs columns "
                             f"{list(obs.columns)}: {type(exc).__name__}: {exc}") from exc
    mask = np.zeros(len(obs), dtype=bool)
    mask[selected] = True
    return mask


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
