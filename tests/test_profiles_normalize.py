"""normalize: pycytominer 1.7.1 per plate, the legacy sphering, degenerate features, reference errors."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pycytominer
import pytest
from scipy.spatial.distance import pdist
from scipy.stats import median_abs_deviation

from subcell_scale.errors import ProfilingError
from subcell_scale.profiles import from_dataframe, normalize, profiling_steps

from _jump_reference import legacy_spherize
from _profiles_sim import pycytominer_frame, real_cellprofiler, simulated_profiles

NEGCON = "control_type == 'negcon'"
META = ["plate", "well", "compound", "control_type"]
METHODS = [
    {"method": "standardize"},
    {"method": "robustize"},
    {"method": "mad_robustize"},
    *({"method": "spherize", "spherize_method": m} for m in ("ZCA", "ZCA-cor", "PCA", "PCA-cor")),
]


def _pycytominer(profiles: ad.AnnData, by: str | None, samples: str, **kwargs) -> pd.DataFrame:
    """pycytominer.normalize called once per stratum, as JUMP recipes loop over plates."""
    frame = pycytominer_frame(profiles, META)
    frame.index = profiles.obs_names
    meta = [f"Metadata_{c}" for c in META]
    groups = frame.groupby(f"Metadata_{by}") if by else [(None, frame)]
    parts = [pycytominer.normalize(part, features=list(profiles.var_names), meta_features=meta,
                                   samples=samples.replace("control_type", "Metadata_control_type"), **kwargs)
             for _, part in groups]
    return pd.concat(parts).loc[profiles.obs_names]


@pytest.fixture(scope="module")
def profiles() -> ad.AnnData:
    return simulated_profiles(n_wells=40, n_features=8)  # 10 negcon wells per plate > 8 features


@pytest.mark.parametrize("by", [None, "plate"])
@pytest.mark.parametrize("kwargs", METHODS, ids=lambda k: k.get("spherize_method", k["method"]))
def test_matches_pycytominer(profiles, kwargs, by):
    result = normalize(profiles, reference=NEGCON, by=by, **kwargs)
    expected = _pycytominer(profiles, by, NEGCON, **kwargs)
    np.testing.assert_allclose(result.X, expected[list(result.var_names)].to_numpy(), rtol=1e-6, atol=1e-6)
    assert result.X.dtype == np.float32
    step = profiling_steps(result)[-1]
    assert step["method"] == kwargs["method"] and step["reference"] == NEGCON and step["by"] == by
    assert step["n_reference"] == ([20] if by is None else [10, 10])


@pytest.mark.parametrize("spherize_method", ["ZCA", "ZCA-cor", "PCA", "PCA-cor"])
def test_spherize_of_many_reference_rows_matches_pycytominer_and_legacy(spherize_method):
    """Many more reference rows than features: the whitening comes from the (d x d) QR factor, and
    PCA components keep pycytominer's signs; the legacy variant matches the JUMP recipe's code."""
    profiles = simulated_profiles(n_plates=1, n_wells=240, n_features=12, seed=2)  # 60 negcon rows
    result = normalize(profiles, method="spherize", spherize_method=spherize_method, reference=NEGCON)
    expected = _pycytominer(profiles, None, NEGCON, method="spherize", spherize_method=spherize_method)
    np.testing.assert_allclose(result.X, expected[list(result.var_names)].to_numpy(), rtol=1e-6, atol=1e-6)
    legacy = normalize(profiles, method="spherize", spherize_method=spherize_method, reference=NEGCON,
                       spherize_variant="legacy")
    x = np.asarray(profiles.X, dtype=np.float64)
    negcon = (profiles.obs["control_type"] == "negcon").to_numpy()
    np.testing.assert_allclose(legacy.X, legacy_spherize(x[negcon], x, spherize_method, 1e-6), rtol=1e-6, atol=1e-6)


def test_pca_variants_rename_features(profiles):
    result = normalize(profiles, method="spherize", spherize_method="PCA")
    assert list(result.var_names) == [f"PC{i}" for i in range(1, 9)]


@pytest.mark.parametrize("spherize_method", ["ZCA", "ZCA-cor", "PCA", "PCA-cor"])
def test_spherize_whitens_the_reference(profiles, spherize_method):
    """The PR #748 fix: the reference rows come out with identity covariance (the old code did not)."""
    result = normalize(profiles, method="spherize", spherize_method=spherize_method, reference=NEGCON,
                       spherize_epsilon=0.0)
    reference = result.X[(profiles.obs["control_type"] == "negcon").to_numpy()].astype(np.float64)
    np.testing.assert_allclose(np.cov(reference, rowvar=False), np.eye(8), atol=1e-4)


@pytest.mark.parametrize("spherize_method", ["ZCA", "ZCA-cor", "PCA", "PCA-cor"])
def test_spherize_with_fewer_reference_rows_than_features(spherize_method):
    """n <= d: ZCA is unique; PCA components beyond the reference rank are an arbitrary basis of the
    null space (in pycytominer too), so compare the leading components and all distances."""
    profiles = simulated_profiles(n_plates=1, n_wells=24, n_features=12, seed=4)  # 6 negcon rows
    result = normalize(profiles, method="spherize", spherize_method=spherize_method, reference=NEGCON)
    expected = _pycytominer(profiles, None, NEGCON, method="spherize", spherize_method=spherize_method)
    expected = expected[list(result.var_names)].to_numpy()
    leading = 5 if spherize_method.startswith("PCA") else 12  # rank of 6 centred rows
    np.testing.assert_allclose(result.X[:, :leading], expected[:, :leading], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pdist(result.X), pdist(expected), rtol=1e-5, atol=1e-5)


def _with_degenerate_features(profiles: ad.AnnData) -> ad.AnnData:
    data = profiles.copy()
    p1_negcon = ((data.obs["plate"] == "P1") & (data.obs["control_type"] == "negcon")).to_numpy()
    data.X[p1_negcon, 2] = 7.0                     # constant among P1's controls only
    data.X[:, 5] = 1.0                             # constant everywhere
    majority = np.flatnonzero((data.obs["control_type"] == "negcon").to_numpy())
    data.X[majority[: len(majority) // 2 + 2], 6] = 0.5   # zero MAD among controls, not constant
    return data


DEGENERATE = ["subcell_0002", "subcell_0005", "subcell_0006"]


@pytest.mark.parametrize("method", ["standardize", "robustize", "mad_robustize"])
def test_degenerate_features_kept_as_pycytominer_keeps_them(profiles, method):
    """Constant / zero-MAD features among a plate's controls are scaled as pycytominer scales them
    (standardize: centred, scale 1; mad_robustize: divided by MAD + epsilon), not dropped."""
    data = _with_degenerate_features(profiles)
    result = normalize(data, method=method, reference=NEGCON, by="plate")
    assert list(result.var_names) == list(data.var_names)
    step = profiling_steps(result)[-1]
    assert step["degenerate"] == "keep" and step["degenerate_features"] == DEGENERATE
    assert step["dropped_features"] == []
    expected = _pycytominer(data, "plate", NEGCON, method=method)[list(data.var_names)].to_numpy()
    finite = np.abs(expected) < 1e6  # mad_robustize: a zero MAD divides by epsilon (1e-18)
    np.testing.assert_allclose(result.X[finite], expected[finite], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result.X[~finite], expected[~finite], rtol=1e-6)
    p1_negcon = ((data.obs["plate"] == "P1") & (data.obs["control_type"] == "negcon")).to_numpy()
    if method == "standardize":  # centred, divided by 1
        column = data.X[(data.obs["plate"] == "P1").to_numpy(), 2]
        np.testing.assert_allclose(result.X[(data.obs["plate"] == "P1").to_numpy(), 2], column - 7.0, atol=1e-6)
        assert np.all(result.X[p1_negcon, 2] == 0)


def test_degenerate_features_dropped_in_every_stratum_on_request(profiles):
    data = _with_degenerate_features(profiles)
    result = normalize(data, method="mad_robustize", reference=NEGCON, by="plate", degenerate="drop")
    step = profiling_steps(result)[-1]
    assert step["dropped_features"] == DEGENERATE and step["degenerate"] == "drop"
    kept = [v for v in data.var_names if v not in DEGENERATE]
    assert kept == list(result.var_names)
    assert np.isfinite(result.X).all()
    expected = _pycytominer(data[:, kept].copy(), "plate", NEGCON, method="mad_robustize")
    np.testing.assert_allclose(result.X, expected[kept].to_numpy(), rtol=1e-6, atol=1e-6)


def test_spherize_names_constant_features_unless_dropped(profiles):
    data = _with_degenerate_features(profiles)
    with pytest.raises(ProfilingError, match=r"constant among the reference rows .* \['subcell_0005'\]"):
        normalize(data, method="spherize", reference=NEGCON)
    result = normalize(data, method="spherize", reference=NEGCON, degenerate="drop")  # one stratum: 0002 varies
    assert profiling_steps(result)[-1]["dropped_features"] == ["subcell_0005", "subcell_0006"]


def test_real_cellprofiler_degenerate_features():
    """5 real cells: features constant or with zero MAD (scipy's MAD as the oracle) are kept by
    standardize exactly as pycytominer keeps them, or dropped on request; ZCA-cor needs them gone."""
    frame = real_cellprofiler()
    cells = from_dataframe(frame)
    features = pycytominer.cyto_utils.infer_cp_features(frame)
    assert list(cells.var_names) == features
    frame[features] = cells.X.astype(np.float64)
    mad = median_abs_deviation(frame[features].to_numpy(), axis=0)
    degenerate = [f for f, m in zip(features, mad, strict=True) if m == 0 or frame[f].nunique() == 1]
    assert 20 <= len(degenerate) < len(features) // 2
    kept = [f for f in features if f not in degenerate]
    result = normalize(cells, method="standardize")
    assert profiling_steps(result)[-1]["degenerate_features"] == degenerate
    expected = pycytominer.normalize(frame, features=features, method="standardize")[features].to_numpy()
    np.testing.assert_allclose(result.X, expected, rtol=1e-5, atol=1e-5)
    for kwargs in ({"method": "standardize"}, {"method": "spherize", "spherize_method": "ZCA-cor"}):
        result = normalize(cells, degenerate="drop", **kwargs)
        assert profiling_steps(result)[-1]["dropped_features"] == degenerate
        expected = pycytominer.normalize(frame, features=kept, **kwargs)[kept].to_numpy()
        np.testing.assert_allclose(result.X, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spherize_method", ["ZCA", "ZCA-cor", "PCA", "PCA-cor"])
def test_legacy_spherize_is_the_svd_of_the_raw_reference_rows(profiles, spherize_method):
    result = normalize(profiles, method="spherize", spherize_method=spherize_method, reference=NEGCON,
                       spherize_variant="legacy")
    x = np.asarray(profiles.X, dtype=np.float64)
    negcon = (profiles.obs["control_type"] == "negcon").to_numpy()
    expected = legacy_spherize(x[negcon], x, spherize_method, 1e-6)
    np.testing.assert_allclose(result.X, expected, rtol=1e-5, atol=1e-5)
    assert profiling_steps(result)[-1]["spherize_variant"] == "legacy"
    corrected = normalize(profiles, method="spherize", spherize_method=spherize_method, reference=NEGCON)
    assert not np.allclose(result.X, corrected.X, atol=1e-2)  # the simulated plates are far from centred
    reference = result.X[negcon].astype(np.float64)
    assert np.abs(np.cov(reference, rowvar=False) - np.eye(8)).max() > 0.1  # not white


def test_legacy_and_corrected_agree_on_centred_reference_rows(profiles):
    """The two computations differ only through the reference rows' mean: on centred (and, for
    -cor, standardised) rows they coincide, as the pycytominer issue #747 reporter observed."""
    data = profiles.copy()
    negcon = (data.obs["control_type"] == "negcon").to_numpy()
    x = np.asarray(data.X, dtype=np.float64)
    data.X = ((x - x[negcon].mean(axis=0)) / x[negcon].std(axis=0)).astype(np.float32)
    kwargs = dict(method="spherize", spherize_method="ZCA-cor", reference=NEGCON)
    legacy = normalize(data, spherize_variant="legacy", **kwargs)
    corrected = normalize(data, **kwargs)
    np.testing.assert_allclose(legacy.X, corrected.X, rtol=1e-4, atol=1e-4)


def test_inverse_normal_matches_pycytominer(profiles):
    result = normalize(profiles, method="inverse_normal", reference=NEGCON, by="plate")
    expected = _pycytominer(profiles, "plate", NEGCON, method="inverse_normal")
    np.testing.assert_allclose(result.X, expected[list(result.var_names)].to_numpy(), rtol=1e-6, atol=1e-6)
    assert profiling_steps(result)[-1]["inverse_normal_n_quantiles"] == 1000


def test_unscaled_mad_of_the_jump_recipe(profiles):
    """mad_scale=1, epsilon 0: the recipe's (x - median) / MAD = pycytominer's mad_robustize x 1.4826."""
    result = normalize(profiles, method="mad_robustize", reference=NEGCON, by="plate", mad_scale=1.0,
                       mad_robustize_epsilon=0.0)
    expected = _pycytominer(profiles, "plate", NEGCON, method="mad_robustize", mad_robustize_epsilon=0.0)
    np.testing.assert_allclose(result.X, 1.4826 * expected[list(result.var_names)].to_numpy(), rtol=1e-5)
    assert profiling_steps(result)[-1]["mad_scale"] == 1.0


def test_reference_missing_in_a_stratum_names_it(profiles):
    data = profiles.copy()
    data.obs.loc[data.obs["plate"] == "P2", "control_type"] = "trt"
    with pytest.raises(ProfilingError, match=r"matches no rows in stratum plate='P2'"):
        normalize(data, reference=NEGCON, by="plate")
    with pytest.raises(ProfilingError, match=r"normalize: reference: cannot evaluate .dose > . on obs columns"):
        normalize(data, reference="dose > ")
    with pytest.raises(ProfilingError, match=r"by='batch' names obs column\(s\) \['batch'\]"):
        normalize(data, by="batch")
    with pytest.raises(ProfilingError, match="needs spherize_center=True"):
        normalize(data, method="spherize", spherize_method="ZCA-cor", spherize_center=False)


def test_copy_false_changes_in_place(profiles):
    data = profiles.copy()
    data.X[:, 0] = 2.0
    returned = normalize(data, copy=False, degenerate="drop")
    assert returned is data
    assert data.n_vars == profiles.n_vars - 1
    np.testing.assert_allclose(data.X.mean(axis=0), 0, atol=1e-6)
    assert profiles.n_vars == 8  # the fixture is untouched


@pytest.mark.parametrize("n_rows", [9, 10])
def test_degenerate_features_found_without_a_median_of_every_column(n_rows):
    """The shortcut that takes medians only of columns with repeated values flags exactly the columns
    whose MAD is zero: ties of every size, the alternating worst case of an odd row count, NaN."""
    from subcell_scale.profiles.normalize import _degenerate

    rng = np.random.default_rng(n_rows)
    columns = [rng.normal(size=n_rows), np.full(n_rows, 2.0), np.full(n_rows, np.nan)]
    for repeats in range(1, n_rows + 1):
        column = rng.normal(size=n_rows)
        column[rng.choice(n_rows, repeats, replace=False)] = 0.5
        columns.append(column)
    alternating = rng.normal(size=n_rows)
    alternating[::2] = 1.0
    with_nan = rng.normal(size=n_rows)
    with_nan[:2] = np.nan
    with_nan[2:2 + n_rows // 2] = 3.0
    x = np.column_stack([*columns, alternating, alternating[::-1], with_nan])
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):
        median = np.nanmedian(x, axis=0)
        expected = (np.isnan(x).all(axis=0) | (np.nanmax(x, axis=0) == np.nanmin(x, axis=0))
                    | (np.nanmedian(np.abs(x - median), axis=0) == 0))
    np.testing.assert_array_equal(_degenerate(x), expected)
    ties = expected[3:n_rows + 3]  # a value repeated 1..n_rows times: MAD zero from a strict majority on
    assert ties[n_rows // 2:].all() and not ties[:n_rows // 2].any()
    assert expected[-3] == bool(n_rows % 2)  # the even rows equal: a majority only with an odd count


@pytest.mark.parametrize("spherize_method", ["ZCA", "ZCA-cor"])
@pytest.mark.parametrize("variant", ["corrected", "legacy"])
def test_badly_conditioned_reference_rows_are_whitened_as_pycytominer_whitens_them(spherize_method, variant):
    """A feature a hair from a copy of another: full rank for numpy's rank rule (singular values about 1e-7
    of the largest), below what Gram eigenvalues resolve, so the singular values decide and whiten."""
    profiles = simulated_profiles(n_plates=1, n_wells=240, n_features=12, seed=2)
    x = np.asarray(profiles.X, dtype=np.float64)
    x[:, 1] = x[:, 0] + 1e-7 * np.random.default_rng(0).standard_normal(len(x)) * x[:, 0].std()
    profiles.X = x
    result = normalize(profiles, method="spherize", spherize_method=spherize_method, reference=NEGCON,
                       spherize_variant=variant)
    negcon = (profiles.obs["control_type"] == "negcon").to_numpy()
    if variant == "legacy":
        expected = legacy_spherize(x[negcon], x, spherize_method, 1e-6)
    else:
        expected = _pycytominer(profiles, None, NEGCON, method="spherize", spherize_method=spherize_method)
        expected = expected[list(result.var_names)].to_numpy()
    assert np.isfinite(result.X).all()
    np.testing.assert_allclose(result.X, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
