"""Normalise profiles against reference wells (usually negative controls), per plate if asked.

Same methods, parameter names and arithmetic as ``pycytominer.normalize`` 1.7.1, with the sphering
fix of pycytominer PR #748 (the SVD is taken of the centred / standardised reference rows, so the
output is white). Differences, on purpose: strata (``by="plate"``) are handled here rather than by
a loop around the call, and features that are constant or have zero MAD among the reference rows
of any stratum are dropped first and recorded, instead of producing inf/NaN or silently scaling by 1.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ..errors import ProfilingError
from ._frame import dense_features, query_rows, strata
from ._steps import record_step

logger = logging.getLogger(__name__)

NormalizeMethod = Literal["standardize", "robustize", "mad_robustize", "spherize"]
SpherizeMethod = Literal["ZCA-cor", "ZCA", "PCA", "PCA-cor"]

METHODS = ("standardize", "robustize", "mad_robustize", "spherize")
SPHERIZE_METHODS = ("ZCA-cor", "ZCA", "PCA", "PCA-cor")
MAD_SCALE = 1.4826  # MAD of a normal distribution -> its standard deviation


def normalize(
    adata: AnnData,
    *,
    method: NormalizeMethod = "standardize",
    reference: str = "all",
    by: str | Sequence[str] | None = None,
    spherize_method: SpherizeMethod = "ZCA-cor",
    spherize_epsilon: float = 1e-6,
    spherize_center: bool = True,
    mad_robustize_epsilon: float = 1e-18,
    copy: bool = True,
) -> AnnData:
    """Scale each feature (or whiten all features) using statistics of the reference rows.

    Parameters
    ----------
    adata
        Profiles (one row per well), e.g. from :func:`aggregate`.
    method
        ``"standardize"``: (x - mean) / std; ``"robustize"``: (x - median) / IQR;
        ``"mad_robustize"``: (x - median) / (1.4826 MAD + epsilon); ``"spherize"``: whitening so
        the reference rows get identity covariance (removes correlated plate / batch structure).
    reference
        pandas query on ``obs`` selecting the rows the statistics are fitted on, e.g.
        ``"control_type == 'negcon'"`` (JUMP: DMSO wells); ``"all"`` fits on every row. All rows
        are transformed.
    by
        obs column(s) to fit separately, e.g. ``"plate"``, so plate effects are removed; ``None``
        fits once on the whole table.
    spherize_method
        ``"ZCA-cor"`` (default, keeps features aligned with the originals, on standardised data),
        ``"ZCA"``, ``"PCA"`` and ``"PCA-cor"`` (features become ``PC1``, ``PC2``, ...). With no
        more reference rows than features, directions the reference rows do not span get the
        smallest non-zero singular value; the ZCA output is then unique, while PCA components
        beyond the reference rank are one arbitrary orthonormal basis of that space (as in
        pycytominer), so only distances and the leading components are comparable across tools.
    spherize_epsilon
        Added to the singular values; larger values shrink the weight of low-variance directions.
    spherize_center
        Centre before sphering (the ``-cor`` variants always centre).
    mad_robustize_epsilon
        Added to the scaled MAD in the denominator.
    copy
        Return a new AnnData (default) or, with ``False``, change ``adata`` in place and return it.

    Returns
    -------
    The normalised AnnData: ``X`` float32, minus the features that were constant or had zero MAD
    among the reference rows of some stratum; a ``"normalize"`` step in ``uns["profiling"]`` with
    the parameters, the strata, their reference row counts and the dropped features.
    """
    if method not in METHODS:
        raise ProfilingError(f"normalize: method must be one of {METHODS}, got {method!r}")
    if method == "spherize":
        if spherize_method not in SPHERIZE_METHODS:
            raise ProfilingError(f"normalize: spherize_method must be one of {SPHERIZE_METHODS}, "
                                 f"got {spherize_method!r}")
        if spherize_method.endswith("-cor") and not spherize_center:
            raise ProfilingError(f"normalize: spherize_method={spherize_method!r} needs spherize_center=True")
    if mad_robustize_epsilon is None or spherize_epsilon is None:
        raise ProfilingError("normalize: mad_robustize_epsilon and spherize_epsilon must be numbers")
    x = dense_features(adata, "normalize")
    is_reference = query_rows(adata.obs, reference, "normalize")
    groups = list(strata(adata.obs, by, "normalize"))
    fit_rows = []
    for name, rows in groups:
        fit = rows & is_reference
        if not fit.any():
            where = f"stratum {name}" if by is not None else "the profiles"
            raise ProfilingError(f"normalize: reference query {reference!r} matches no rows in {where} "
                                 f"({int(rows.sum())} rows); check the query or use by=None")
        fit_rows.append(fit)
    drop = np.zeros(x.shape[1], dtype=bool)
    for fit in fit_rows:
        drop |= _degenerate(x[fit])
    dropped = adata.var_names[drop].tolist()
    if drop.all():
        raise ProfilingError(f"normalize: every one of the {x.shape[1]} features is constant or has zero MAD among "
                             f"the reference rows ({reference!r}); nothing to normalise")
    if dropped:
        logger.info("normalize: dropping %d features constant or with zero MAD among reference rows: %s",
                    len(dropped), dropped[:10])
    x = x[:, ~drop]
    if method == "spherize" and not np.isfinite(x).all():
        bad = adata.var_names[~drop][~np.isfinite(x).all(axis=0)].tolist()
        raise ProfilingError(f"normalize: spherize needs finite values; features {bad[:10]} have NaN/inf "
                             "(run feature_select(operation='drop_na_columns') or impute first)")
    out = np.empty_like(x)
    for (name, rows), fit in zip(groups, fit_rows, strict=True):
        if method == "spherize":
            out[rows] = _spherize(x[fit], x[rows], spherize_method, spherize_epsilon, spherize_center, name)
        else:
            center, scale = _location_scale(x[fit], method, mad_robustize_epsilon)
            out[rows] = (x[rows] - center) / scale
    if copy:
        result = adata[:, ~drop].copy()
    else:
        if drop.any():
            adata._inplace_subset_var(~drop)
        result = adata
    result.X = out.astype(np.float32)
    if method == "spherize" and spherize_method.startswith("PCA"):
        result.var = pd.DataFrame(index=pd.Index([f"PC{i}" for i in range(1, out.shape[1] + 1)], dtype=str))
    params: dict = {"method": method, "reference": reference, "by": by}
    if method == "spherize":
        params.update(spherize_method=spherize_method, spherize_epsilon=float(spherize_epsilon),
                      spherize_center=bool(spherize_center))
    if method == "mad_robustize":
        params["mad_robustize_epsilon"] = float(mad_robustize_epsilon)
    params.update(strata=[name for name, _ in groups], n_reference=[int(f.sum()) for f in fit_rows])
    record_step(result, "normalize", dropped_features=dropped, **params)
    return result


def _degenerate(x: np.ndarray) -> np.ndarray:
    """Features that cannot be scaled from these rows: all missing, constant, or zero MAD."""
    with np.errstate(all="ignore"), warnings.catch_warnings(action="ignore", category=RuntimeWarning):
        empty = np.isnan(x).all(axis=0)
        constant = np.nanmax(x, axis=0) == np.nanmin(x, axis=0)
        median = np.nanmedian(x, axis=0)
        mad = np.nanmedian(np.abs(x - median), axis=0)
    return empty | constant | (mad == 0)


def _mean_std(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (ddof 0) ignoring NaN, by the corrected two-pass formula.

    The correction term removes the rounding error of the mean from the variance; it is also what
    sklearn's StandardScaler computes, so results agree to the last bit with pycytominer.
    """
    n = (~np.isnan(x)).sum(axis=0)
    mean = np.nansum(x, axis=0) / n
    deviation = x - mean
    correction = np.nansum(deviation, axis=0)
    variance = (np.nansum(deviation**2, axis=0) - correction**2 / n) / n
    return mean, np.sqrt(variance)


def _location_scale(x: np.ndarray, method: str, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale fitted on reference rows, with pycytominer's (sklearn's) definitions."""
    if method == "standardize":
        center, scale = _mean_std(x)
    elif method == "robustize":
        center = np.nanmedian(x, axis=0)
        q25, q75 = np.nanpercentile(x, [25, 75], axis=0)  # linear interpolation, as RobustScaler
        scale = q75 - q25
        scale[scale < 10 * np.finfo(np.float64).eps] = 1.0
    else:
        center = np.nanmedian(x, axis=0)
        scale = MAD_SCALE * np.nanmedian(np.abs(x - center), axis=0) + epsilon
    return center, scale


def _spherize(fit: np.ndarray, rows: np.ndarray, method: str, epsilon: float, center: bool,
              stratum: str) -> np.ndarray:
    """Whitening matrix from the reference rows' SVD, applied to every row of the stratum."""
    n, d = fit.shape
    if n < 2:
        raise ProfilingError(f"normalize: spherize needs at least 2 reference rows, stratum {stratum} has {n}")
    if method.endswith("-cor"):
        mean, std = _mean_std(fit)
    else:
        mean = fit.mean(axis=0) if center else np.zeros(d)
        std = np.ones(d)
    fit_t = (fit - mean) / std
    _, sigma, vt = np.linalg.svd(fit_t, full_matrices=True)
    tolerance = sigma.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps
    rank = int((sigma > tolerance).sum())
    if not (rank == d or (center and rank == n - 1) or (not center and rank == n)):
        raise ProfilingError(f"normalize: spherize reference rows of stratum {stratum} are not full rank (n={n}, "
                             f"d={d}, rank={rank}); remove linearly dependent features (feature_select "
                             "correlation_threshold) or use more reference rows")
    if n <= d:
        # directions the reference rows do not span get the smallest non-zero singular value
        sigma = np.concatenate([sigma[:rank], np.repeat(sigma[rank - 1], d - rank)])
    sigma = sigma + epsilon
    w = (vt / sigma[:, None]).T * np.sqrt(n - 1)
    if method.startswith("ZCA"):
        w = w @ vt
    return ((rows - mean) / std) @ w

