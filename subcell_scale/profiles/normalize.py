"""Normalise profiles against reference wells (usually negative controls), per plate if asked.

Same methods, parameter names and arithmetic as ``pycytominer.normalize`` 1.7.1, strata handled here
(``by="plate"``) rather than by a loop around the call:

- Degenerate features (constant, or with zero MAD, among a stratum's reference rows) are treated as
  pycytominer treats them by default: ``standardize`` centres them and divides by 1 (sklearn's
  constant-feature rule), ``robustize`` divides a zero IQR by 1, ``mad_robustize`` divides by
  ``1.4826 MAD + epsilon``. ``degenerate="drop"`` removes them from every stratum instead and
  records them; either way the step lists them.
- Sphering has two computations. ``spherize_variant="corrected"`` is pycytominer 1.7.1 (PR #748): the
  whitening is fitted on the centred (``-cor``: standardised) reference rows, so they come out white
  (ZCA from the eigendecomposition of their d x d, or n x n, Gram matrix; PCA from their SVD).
  ``"legacy"`` is what the releases before that fix computed: the SVD of the raw reference rows,
  neither centred nor scaled, applied to the centred / standardised rows. Results published with
  those releases (the SubCell JUMP benchmark among them) are reproduced only with ``"legacy"``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from .._docs import doc_params
from ..errors import ProfilingError
from ._frame import dense_features, keep_features, query_rows, strata
from ._steps import record_step

logger = logging.getLogger(__name__)

NormalizeMethod = Literal["standardize", "robustize", "mad_robustize", "spherize", "inverse_normal"]
SpherizeMethod = Literal["ZCA-cor", "ZCA", "PCA", "PCA-cor"]
SpherizeVariant = Literal["corrected", "legacy"]
Degenerate = Literal["keep", "drop"]

METHODS = ("standardize", "robustize", "mad_robustize", "spherize", "inverse_normal")
SPHERIZE_METHODS = ("ZCA-cor", "ZCA", "PCA", "PCA-cor")
SPHERIZE_VARIANTS = ("corrected", "legacy")
DEGENERATE = ("keep", "drop")
MAD_SCALE = 1.4826  # MAD of a normal distribution -> its standard deviation


@doc_params
def normalize(
    adata: AnnData,
    *,
    method: NormalizeMethod = "standardize",
    reference: str = "all",
    by: str | Sequence[str] | None = None,
    spherize_method: SpherizeMethod = "ZCA-cor",
    spherize_epsilon: float = 1e-6,
    spherize_center: bool = True,
    spherize_variant: SpherizeVariant = "corrected",
    mad_robustize_epsilon: float = 1e-18,
    mad_scale: float = MAD_SCALE,
    inverse_normal_n_quantiles: int = 1000,
    degenerate: Degenerate = "keep",
    copy: bool = True,
) -> AnnData:
    """Scale each feature (or whiten all features) using statistics of the reference rows.

    Parameters
    ----------
    adata
        Profiles (one row per well), e.g. from :func:`aggregate`.
    method
        ``"standardize"``: (x - mean) / std; ``"robustize"``: (x - median) / IQR;
        ``"mad_robustize"``: (x - median) / (``mad_scale`` MAD + epsilon); ``"spherize"``: whitening
        so the reference rows get identity covariance (removes correlated plate / batch
        structure); ``"inverse_normal"``: each feature mapped through the reference rows' quantiles
        onto a standard normal (pycytominer's ``QuantileTransformer`` with
        ``n_quantiles=min(inverse_normal_n_quantiles, n_reference)``).
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
    spherize_variant
        ``"corrected"`` (pycytominer 1.7.1): the whitening matrix comes from the centred
        (``-cor``: standardised) reference rows. ``"legacy"``: from the SVD of the raw reference
        rows, as pycytominer computed it before PR #748; the output is then not white, but it is
        what profiles published with those releases were made with. Use it to reproduce them.
    mad_robustize_epsilon
        Added to the scaled MAD in the denominator.
    mad_scale
        Factor on the MAD: 1.4826 (pycytominer, the MAD of a normal distribution equals its standard
        deviation) or 1.0 (the JUMP profiling recipe's unscaled MAD; a common factor on every
        feature changes no cosine similarity).
    inverse_normal_n_quantiles
        Quantiles of ``"inverse_normal"`` (capped at the number of reference rows).
    degenerate
        Features that are constant or have zero MAD among the reference rows of some stratum:
        ``"keep"`` (default) scales them as pycytominer does (a zero standard deviation or IQR
        becomes 1; ``mad_robustize`` divides by ``mad_scale`` MAD + epsilon, so a zero MAD blows
        the feature up by 1/epsilon); ``"drop"`` removes them from every stratum. Sphering cannot
        whiten a constant feature: with ``"keep"`` it raises and names them.
    {copy}

    Returns
    -------
    The normalised AnnData: ``X`` float32 (minus the degenerate features with ``degenerate="drop"``);
    a ``"normalize"`` step in ``uns["profiling"]`` with the parameters, the strata, their reference
    row counts, ``degenerate_features`` (kept or dropped) and ``dropped_features``.
    """
    _check_options(method, spherize_method, spherize_center, spherize_variant, degenerate,
                   mad_robustize_epsilon, spherize_epsilon, inverse_normal_n_quantiles)
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
    flagged = np.zeros(x.shape[1], dtype=bool)
    for fit in fit_rows:
        flagged |= _degenerate(x[fit])
    degenerate_features = adata.var_names[flagged].tolist()
    drop = flagged if degenerate == "drop" else np.zeros_like(flagged)
    if drop.all():
        raise ProfilingError(f"normalize: every one of the {x.shape[1]} features is constant or has zero MAD among "
                             f"the reference rows ({reference!r}); nothing to normalise")
    if degenerate_features:
        logger.info("normalize: %d features constant or with zero MAD among reference rows (%s): %s",
                    len(degenerate_features), "dropped" if degenerate == "drop" else "kept",
                    degenerate_features[:10])
    if drop.any():
        x = x[:, ~drop]
    names = adata.var_names[~drop]
    if method == "spherize":
        _check_spherize_input(x, fit_rows, groups, names, reference)
    out = np.empty(x.shape, dtype=np.float32)
    for (name, rows), fit in zip(groups, fit_rows, strict=True):
        whole = bool(rows.all())  # one stratum: no gathered copy of the rows, no scatter back
        part = x if whole else x[rows]  # our float64 copy either way: transformed in place
        if method == "spherize":
            values = _spherize(x[fit], part, spherize_method, spherize_epsilon, spherize_center, spherize_variant,
                               name)
        elif method == "inverse_normal":
            values = _inverse_normal(x[fit], part, inverse_normal_n_quantiles)
        else:
            center, scale = _location_scale(x[fit], method, mad_robustize_epsilon, mad_scale)
            values = part
            values -= center
            values /= scale
        if whole:
            out[...] = values
        else:
            out[rows] = values
    result = keep_features(adata, ~drop, copy=copy, x=out)
    if method == "spherize" and spherize_method.startswith("PCA"):
        result.var = pd.DataFrame(index=pd.Index([f"PC{i}" for i in range(1, out.shape[1] + 1)], dtype=str))
    params: dict = {"method": method, "reference": reference, "by": by}
    if method == "spherize":
        params.update(spherize_method=spherize_method, spherize_epsilon=float(spherize_epsilon),
                      spherize_center=bool(spherize_center), spherize_variant=spherize_variant)
    if method == "mad_robustize":
        params.update(mad_robustize_epsilon=float(mad_robustize_epsilon), mad_scale=float(mad_scale))
    if method == "inverse_normal":
        params["inverse_normal_n_quantiles"] = int(inverse_normal_n_quantiles)
    params.update(degenerate=degenerate, degenerate_features=degenerate_features,
                  strata=[name for name, _ in groups], n_reference=[int(f.sum()) for f in fit_rows])
    record_step(result, "normalize", dropped_features=degenerate_features if degenerate == "drop" else [],
                **params)
    return result


def _check_options(method: str, spherize_method: str, spherize_center: bool, spherize_variant: str,
                   degenerate: str, mad_epsilon: float | None, spherize_epsilon: float | None,
                   n_quantiles: int) -> None:
    if method not in METHODS:
        raise ProfilingError(f"normalize: method must be one of {METHODS}, got {method!r}")
    if degenerate not in DEGENERATE:
        raise ProfilingError(f"normalize: degenerate must be one of {DEGENERATE}, got {degenerate!r}")
    if method == "spherize":
        if spherize_method not in SPHERIZE_METHODS:
            raise ProfilingError(f"normalize: spherize_method must be one of {SPHERIZE_METHODS}, "
                                 f"got {spherize_method!r}")
        if spherize_variant not in SPHERIZE_VARIANTS:
            raise ProfilingError(f"normalize: spherize_variant must be one of {SPHERIZE_VARIANTS}, "
                                 f"got {spherize_variant!r}")
        if spherize_method.endswith("-cor") and not spherize_center:
            raise ProfilingError(f"normalize: spherize_method={spherize_method!r} needs spherize_center=True")
    if mad_epsilon is None or spherize_epsilon is None:
        raise ProfilingError("normalize: mad_robustize_epsilon and spherize_epsilon must be numbers")
    if method == "inverse_normal" and int(n_quantiles) < 2:
        raise ProfilingError(f"normalize: inverse_normal_n_quantiles must be at least 2, got {n_quantiles}")


def _check_spherize_input(x: np.ndarray, fit_rows: list[np.ndarray], groups: list[tuple[str, np.ndarray]],
                          names: pd.Index, reference: str) -> None:
    """Sphering needs finite values and no feature constant among a stratum's reference rows."""
    if not np.isfinite(x).all():
        bad = names[~np.isfinite(x).all(axis=0)].tolist()
        raise ProfilingError(f"normalize: spherize needs finite values; features {bad[:10]} have NaN/inf "
                             "(run feature_select(operation='drop_na_columns') or impute first)")
    for (name, _), fit in zip(groups, fit_rows, strict=True):
        sub = x[fit]
        constant = sub.max(axis=0) == sub.min(axis=0)
        if constant.any():
            raise ProfilingError(f"normalize: spherize cannot whiten features constant among the reference rows "
                                 f"({reference!r}) of stratum {name}: {names[constant].tolist()[:10]}; remove "
                                 "them first (feature_select variance_threshold) or pass degenerate='drop'")


def _degenerate(x: np.ndarray) -> np.ndarray:
    """Features that cannot be scaled from these rows: all missing, constant, or zero MAD.

    A MAD is zero only when more than half the values equal the median; medians are taken only of
    the columns where that can happen (see :func:`_may_have_zero_mad`), usually none.
    """
    with np.errstate(all="ignore"), warnings.catch_warnings(action="ignore", category=RuntimeWarning):
        empty = np.isnan(x).all(axis=0)
        constant = np.nanmax(x, axis=0) == np.nanmin(x, axis=0)
        zero_mad = np.zeros(x.shape[1], dtype=bool)
        suspect = np.flatnonzero(_may_have_zero_mad(x) & ~empty & ~constant)
        if suspect.size:
            sub = x[:, suspect]
            zero_mad[suspect] = _column_median(np.abs(sub - _column_median(sub))) == 0
    return empty | constant | zero_mad


def _may_have_zero_mad(x: np.ndarray) -> np.ndarray:
    """Columns where one value may fill more than half the rows: those with missing values, two equal
    neighbouring rows, or (odd row count) every even row equal; no other column can hold a value
    more than n / 2 times without two of its occurrences being neighbours."""
    suspect = np.isnan(x).any(axis=0) | (x[1:] == x[:-1]).any(axis=0)
    if len(x) % 2:
        suspect |= (x[::2] == x[0]).all(axis=0)
    return suspect


def _column_median(x: np.ndarray) -> np.ndarray:
    """Median of each column ignoring NaN; numpy's nanmedian loops over columns, so it is kept for NaN."""
    return np.nanmedian(x, axis=0) if np.isnan(x).any() else np.median(x, axis=0)


def _mean_std(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (ddof 0) ignoring NaN, by the corrected two-pass formula.

    The correction term removes the rounding error of the mean from the variance; it is also what
    sklearn's StandardScaler computes, so results agree to the last bit with pycytominer. A
    feature sklearn deems constant (variance within the rounding bound of its two-pass algorithm)
    gets scale 1, as StandardScaler gives it.
    """
    missing = np.isnan(x)
    # without NaN, nansum is sum over a copy of x: the plain sums are the same, bit for bit
    total = np.nansum if missing.any() else np.sum
    n = len(x) - missing.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total(x, axis=0) / n
        deviation = x - mean
        correction = total(deviation, axis=0)
        deviation *= deviation
        variance = (total(deviation, axis=0) - correction**2 / n) / n
    eps = np.finfo(np.float64).eps
    constant = variance <= n * eps * variance + (n * mean * eps) ** 2
    return mean, np.where(constant, 1.0, np.sqrt(variance))


def _location_scale(x: np.ndarray, method: str, epsilon: float, mad_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale fitted on reference rows, with pycytominer's (sklearn's) definitions."""
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):
        if method == "standardize":
            center, scale = _mean_std(x)
        elif method == "robustize":
            center = _column_median(x)
            q25, q75 = np.nanpercentile(x, [25, 75], axis=0)  # linear interpolation, as RobustScaler
            scale = q75 - q25
            scale[scale < 10 * np.finfo(np.float64).eps] = 1.0
        else:
            center = _column_median(x)
            scale = mad_scale * _column_median(np.abs(x - center)) + epsilon
    return center, scale


def _inverse_normal(fit: np.ndarray, rows: np.ndarray, n_quantiles: int) -> np.ndarray:
    """pycytominer's inverse normal transform: sklearn's QuantileTransformer fitted on the reference rows."""
    from sklearn.preprocessing import QuantileTransformer

    transformer = QuantileTransformer(n_quantiles=min(int(n_quantiles), fit.shape[0]), output_distribution="normal")
    transformer.fit(fit)
    return transformer.transform(rows)


def _spherize(fit: np.ndarray, rows: np.ndarray, method: str, epsilon: float, center: bool, variant: str,
              stratum: str) -> np.ndarray:
    """Whitening fitted on the reference rows, applied to every row of the stratum.

    ZCA (corrected) needs no singular vectors with signs: it comes from the eigendecomposition of
    the smaller Gram matrix of the transformed reference rows (d x d, or n x n with fewer rows than
    features), never from an SVD of the rows. PCA keeps the SVD, whose signs pycytominer's
    components carry. ``variant="legacy"`` takes the singular vectors and values of the raw
    reference rows (the computation before pycytominer PR #748) while still centring /
    standardising the rows it is applied to, exactly as those releases did; the rank checks use the
    transformed rows in both.
    """
    n, d = fit.shape
    if n < 2:
        raise ProfilingError(f"normalize: spherize needs at least 2 reference rows, stratum {stratum} has {n}")
    if method.endswith("-cor"):
        mean, std = _mean_std(fit)
    else:
        mean = fit.mean(axis=0) if center else np.zeros(d)
        std = np.ones(d)
    fit_t = (fit - mean) / std
    scale = np.sqrt(n - 1)
    if method.startswith("ZCA") and variant == "corrected":
        eigenvalues, vectors = _gram_eigen(fit_t, vectors=True)
        rank = _check_rank(_gram_rank(fit_t, eigenvalues), n, d, center, stratum)
        if _clear_of_rounding(eigenvalues, rank, fit_t.shape):
            return _zca_from_gram(fit_t, rows, eigenvalues, vectors, rank, mean, std, epsilon)
        # badly conditioned rows: the square roots of rounded eigenvalues would not do, the SVD below does
    if variant == "legacy":  # the rank from the transformed rows, the whitening from the raw ones
        rank = _check_rank(_gram_rank(fit_t, _gram_eigen(fit_t, vectors=False)[0]), n, d, center, stratum)
        sigma, vt = _right_singular(fit)
    else:
        sigma, vt = _right_singular(fit_t)
        tolerance = sigma.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps
        rank = _check_rank(int((sigma > tolerance).sum()), n, d, center, stratum)
    if n <= d:
        # directions the reference rows do not span get the smallest non-zero singular value
        sigma = np.concatenate([sigma[:rank], np.repeat(sigma[rank - 1], d - rank)])
    sigma = sigma + epsilon
    w = (vt / sigma[:, None]).T * scale
    if method.startswith("ZCA"):
        w = w @ vt
    return _standardized(rows, mean, std) @ w


def _zca_from_gram(fit_t: np.ndarray, rows: np.ndarray, eigenvalues: np.ndarray, vectors: np.ndarray, rank: int,
                   mean: np.ndarray, std: np.ndarray, epsilon: float) -> np.ndarray:
    """ZCA whitening from the Gram eigendecomposition of the transformed reference rows ``fit_t``."""
    n, d = fit_t.shape
    scale = np.sqrt(n - 1)
    sigma = np.sqrt(eigenvalues[:rank])
    v = vectors[:, :rank] if n > d else fit_t.T @ (vectors[:, :rank] / sigma)  # right singular vectors
    weight = scale / (sigma + epsilon)
    z = _standardized(rows, mean, std)
    if rank == d:
        return z @ ((v * weight) @ v.T)
    fill = scale / (sigma[-1] + epsilon)  # directions the reference rows do not span
    return fill * z + ((z @ v) * (weight - fill)) @ v.T


def _standardized(rows: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(rows - mean) / std`` in place: ``rows`` is a float64 copy the caller no longer needs."""
    rows -= mean
    rows /= std
    return rows


def _check_rank(rank: int, n: int, d: int, center: bool, stratum: str) -> int:
    """pycytominer's full-rank rule: rank d, or n - 1 (centred) / n rows when there are fewer rows."""
    if not (rank == d or (center and rank == n - 1) or (not center and rank == n)):
        raise ProfilingError(f"normalize: spherize reference rows of stratum {stratum} are not full rank (n={n}, "
                             f"d={d}, rank={rank}); remove linearly dependent features (feature_select "
                             "correlation_threshold) or use more reference rows")
    return rank


def _gram_eigen(a: np.ndarray, *, vectors: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Eigenvalues (largest first) of the smaller Gram matrix of ``a`` (``a.T a`` or ``a a.T``): the squared
    singular values of ``a``; with ``vectors`` its eigenvectors too (right, or left singular vectors of ``a``)."""
    gram = a.T @ a if a.shape[0] > a.shape[1] else a @ a.T
    if not vectors:
        return np.linalg.eigvalsh(gram)[::-1], None
    values, vecs = np.linalg.eigh(gram)
    return values[::-1], vecs[:, ::-1]


def _gram_rank(a: np.ndarray, eigenvalues: np.ndarray) -> int:
    """The matrix rank of ``a`` (tolerance: largest singular value x max(n, d) x eps), from its Gram eigenvalues.

    Those are accurate to about eps times the largest, so they settle the rank only when every one is
    far above that rounding: then every singular value is far above the tolerance. Otherwise (rank
    deficient or badly conditioned rows) the singular values themselves decide, as in numpy's
    ``matrix_rank``.
    """
    if _clear_of_rounding(eigenvalues, eigenvalues.size, a.shape):
        return int(eigenvalues.size)
    sigma = np.linalg.svd(a, compute_uv=False)
    return int((sigma > sigma.max(initial=0.0) * max(a.shape) * np.finfo(np.float64).eps).sum())


def _clear_of_rounding(eigenvalues: np.ndarray, count: int, shape: tuple[int, int]) -> bool:
    """Whether the ``count`` largest Gram eigenvalues all lie far above the rounding of the largest."""
    if not count:
        return False
    return bool(eigenvalues[count - 1] > eigenvalues[0] * max(shape) * np.finfo(np.float64).eps * _GRAM_MARGIN)


_GRAM_MARGIN = 1e3
"""How far above the Gram eigenvalues' rounding the smallest must lie for them to settle the rank alone."""


def _right_singular(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Singular values and right singular vectors of ``a``, bit for bit those of ``np.linalg.svd(a)``.

    LAPACK's SVD of a matrix with at least 11/6 as many rows as columns starts from its QR factor
    and decomposes the (d x d) triangle R, whose Gram matrix is ``a.T @ a``; doing the same here
    keeps pycytominer's singular vectors, signs included (the PCA components depend on them), without
    the (n x n) left vectors pycytominer's ``full_matrices=True`` call builds. An eigendecomposition of
    the covariance would choose other signs and square the condition number.
    """
    _, sigma, vt = np.linalg.svd(_triangle(a), full_matrices=a.shape[0] < a.shape[1])
    return sigma, vt


def _triangle(a: np.ndarray) -> np.ndarray:
    """The (d x d) QR factor of a matrix with at least 11/6 as many rows as columns (same singular values), else it."""
    n, d = a.shape
    return np.linalg.qr(a, mode="r") if 6 * n >= 11 * d else a
