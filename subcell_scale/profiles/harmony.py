"""Harmony batch correction of profiles (harmonypy), the last step of the JUMP compound chain.

``broadinstitute/jump-profiling-recipe`` (``correct/harmony.py``) runs
``harmonypy.run_harmony(features, meta[[batch]], batch, max_iter_harmony=20, nclust=300)`` on the
whole table and names the corrected features ``harmony_0`` ... This wraps the same call. harmonypy
is an optional dependency (``pip install "subcell-scale[harmony]"``).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from anndata import AnnData

from .._docs import doc_params
from ..errors import ProfilingError
from ._frame import dense_features
from ._steps import record_step

logger = logging.getLogger(__name__)


@doc_params
def harmony(
    adata: AnnData,
    *,
    batch: str = "batch",
    nclust: int | None = 300,
    max_iter_harmony: int = 20,
    seed: int = 0,
    copy: bool = True,
) -> AnnData:
    """Remove the batch effect named by an obs column with Harmony.

    Parameters
    ----------
    adata
        Profiles, usually normalised and feature-selected; every value must be finite.
    batch
        obs column naming each row's batch (the recipe: ``Metadata_Batch``); at least two batches.
    nclust
        Harmony clusters: 300 in the recipe ("number of compounds"); ``None`` lets harmonypy choose
        ``min(n / 30, 100)``. Must be smaller than the number of rows.
    max_iter_harmony
        Harmony iterations (20 in the recipe).
    seed
        harmonypy's ``random_state`` (its k-means initialisation).
    {copy}

    Returns
    -------
    The corrected profiles, features renamed ``harmony_0`` ...; a ``"harmony"`` step in
    ``uns["profiling"]``.
    """
    try:
        import harmonypy
    except ImportError as exc:
        raise ProfilingError("harmony needs the optional package harmonypy: pip install "
                             "'subcell-scale[harmony]' (or pip install harmonypy)") from exc
    if batch not in adata.obs.columns:
        raise ProfilingError(f"harmony: batch column {batch!r} is not in obs (columns: {list(adata.obs.columns)})")
    x = dense_features(adata, "harmony")
    if not np.isfinite(x).all():
        raise ProfilingError("harmony: features have NaN/inf values; drop or impute them first")
    labels = adata.obs[batch].astype(str).reset_index(drop=True)
    if labels.nunique() < 2:
        raise ProfilingError(f"harmony: obs[{batch!r}] has a single batch ({labels.iloc[0]!r}); nothing to correct")
    if nclust is not None and not 1 <= nclust < adata.n_obs:
        raise ProfilingError(f"harmony: nclust={nclust} must be between 1 and the number of rows minus one "
                             f"({adata.n_obs - 1}); pass a smaller nclust or None")
    meta = pd.DataFrame({batch: pd.Categorical(labels)})
    out = harmonypy.run_harmony(x, meta, batch, nclust=nclust, max_iter_harmony=max_iter_harmony,
                                random_state=seed, verbose=False)
    z = np.asarray(out.Z_corr, dtype=np.float64)
    if z.shape != x.shape:  # harmonypy < 2 returns features x rows
        z = z.T
    result = adata.copy() if copy else adata
    result.X = z.astype(np.float32)
    result.var = pd.DataFrame(index=pd.Index([f"harmony_{i}" for i in range(z.shape[1])], dtype=str))
    record_step(result, "harmony", batch=batch, nclust=nclust, max_iter_harmony=int(max_iter_harmony),
                seed=int(seed), n_batches=int(labels.nunique()))
    return result
