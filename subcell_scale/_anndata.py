"""What every function taking AnnData needs alike: a representation as a matrix, rows picked by a query.

Profiles, metrics and tools all take ``use_rep=`` (``X`` or an ``obsm`` key) and pandas queries on
``obs`` (``"control_type == 'negcon'"``); they all go through these two functions, so a bad key or
query reads the same everywhere and names what exists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .errors import ProfilingError

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData


def representation(adata: AnnData, use_rep: str | None = None, *, dtype: type = np.float64,
                   what: str = "use_rep") -> np.ndarray:
    """``X`` (``use_rep`` None or ``"X"``) or ``obsm[use_rep]`` as a dense in-memory array of ``dtype``.

    A sparse matrix is made dense, a dask-backed one (a run's cells store) is read.

    Raises
    ------
    ProfilingError
        ``use_rep`` names no ``obsm`` entry (the message lists them), or ``X`` is empty.
    """
    if use_rep in (None, "X"):
        x = adata.X
        if x is None:
            msg = f"{what}: adata.X is empty; pass use_rep= to use an obsm representation ({list(adata.obsm)})"
            raise ProfilingError(msg)
    elif use_rep in adata.obsm:
        x = adata.obsm[use_rep]
    else:
        msg = f"{what}: adata.obsm has no {use_rep!r} (keys: {list(adata.obsm.keys())}); use 'X' or one of those"
        raise ProfilingError(msg)
    if isinstance(x, pd.DataFrame):
        x = x.to_numpy()
    if hasattr(x, "toarray"):
        x = x.toarray()
    return np.asarray(x, dtype=dtype)


def rows_matching(obs: pd.DataFrame, query: str, *, what: str = "query") -> np.ndarray:
    """Boolean mask of the ``obs`` rows a pandas query selects; ``"all"`` selects every row.

    Raises
    ------
    ProfilingError
        The query is not a string, names a column obs does not have, or is not a condition; the
        message gives the query and the columns.
    """
    if isinstance(query, str) and query.strip() == "all":
        return np.ones(len(obs), dtype=bool)
    if not isinstance(query, str):
        msg = f"{what} must be 'all' or a pandas query string on obs, got {query!r}"
        raise ProfilingError(msg)
    try:
        mask = obs.reset_index(drop=True).eval(query)
    except Exception as exc:  # pandas raises many types for a bad expression (UndefinedVariableError, SyntaxError)
        msg = f"{what}: cannot evaluate {query!r} on obs columns {list(obs.columns)}: {type(exc).__name__}: {exc}"
        raise ProfilingError(msg) from exc
    values = np.asarray(mask)
    if values.shape != (len(obs),) or values.dtype != bool:
        msg = f"{what}: {query!r} is not a condition on the rows of obs (it gives {values.dtype} of shape {values.shape})"
        raise ProfilingError(msg)
    return values
