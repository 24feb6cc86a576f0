"""feature_select: each pycytominer operation, their sequence, samples, blocklists, records."""

from __future__ import annotations

import importlib

import anndata as ad
import numpy as np
import pycytominer
import pytest

from subcell_scale.errors import ProfilingError
from subcell_scale.profiles import feature_select, from_dataframe, profiling_steps

from _profiles_sim import pycytominer_frame, real_cellprofiler

META = ["plate", "well", "control_type"]


@pytest.fixture(scope="module")
def profiles() -> ad.AnnData:
    """40 wells x 30 features from 8 latent factors, with near-duplicate and anti-correlated
    pairs, a few near-constant features, missing values in two features, and one large outlier."""
    rng = np.random.default_rng(5)
    latent = rng.normal(size=(40, 8))
    x = latent @ rng.normal(size=(8, 30)) + 0.15 * rng.normal(size=(40, 30))
    x[:, 10:15] = 2 * x[:, 0:5] + 0.3 * rng.normal(size=(40, 5))   # near duplicates
    x[:, 15] = -x[:, 16] + 0.1 * rng.normal(size=40)                # anti-correlated: kept (signed rule)
    x[:, 25:28] = 1.0 + 1e-4 * rng.normal(size=(40, 3))
    x[rng.random(40) < 0.2, 3] = np.nan
    x[:1, 4] = np.nan
    x[7, 9] = 800.0
    obs = {"plate": np.repeat(["P1", "P2"], 20), "well": [f"W{i:02d}" for i in range(40)],
           "control_type": np.tile(["negcon", "trt", "trt", "trt"], 10)}
    adata = ad.AnnData(x.astype(np.float32), obs=obs)
    adata.obs_names = [f"p{i}" for i in range(40)]
    adata.var_names = [f"subcell_{i:04d}" for i in range(30)]
    return adata


def _expected(profiles: ad.AnnData, **kwargs) -> list[str]:
    frame = pycytominer_frame(profiles, META)
    if "samples" in kwargs:
        kwargs["samples"] = kwargs["samples"].replace("control_type", "Metadata_control_type")
    out = pycytominer.feature_select(frame, features=list(profiles.var_names), **kwargs)
    return [c for c in out.columns if not c.startswith("Metadata_")]


CASES = [
    {"operation": ["variance_threshold"]},
    {"operation": ["variance_threshold"], "min_variance": 0.5},
    {"operation": ["correlation_threshold"]},
    {"operation": ["correlation_threshold"], "corr_method": "spearman", "corr_threshold": 0.8},
    {"operation": ["correlation_threshold"], "corr_method": "kendall", "corr_threshold": 0.7},
    {"operation": ["drop_na_columns"]},
    {"operation": ["drop_na_columns"], "na_cutoff": 0.0},
    {"operation": ["drop_outliers"]},
    {"operation": ["drop_outliers"], "outlier_cutoff": 10.0},
    {"operation": ["drop_na_columns", "variance_threshold", "correlation_threshold", "drop_outliers"]},
    {"operation": ["drop_na_columns", "correlation_threshold"], "na_cutoff": 0.0},  # all finite: numpy path
    {"operation": ["variance_threshold", "correlation_threshold"], "samples": "control_type == 'negcon'"},
]


@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: "+".join(k["operation"]) + str(len(k)))
def test_matches_pycytominer(profiles, kwargs):
    result = feature_select(profiles, **kwargs)
    expected = _expected(profiles, **kwargs)
    assert list(result.var_names) == expected
    assert 0 < result.n_vars < profiles.n_vars  # every case removes something
    np.testing.assert_array_equal(result.X, profiles[:, expected].X)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.9])
def test_correlation_in_blocks_of_features_matches_pycytominer(profiles, monkeypatch, threshold):
    """Blocks of 3 features at a time: the pairs that straddle blocks are found as in one matrix."""
    module = importlib.import_module("subcell_scale.profiles.feature_select")
    monkeypatch.setattr(module, "_CORR_BLOCK_VALUES", 3 * profiles.n_vars)
    result = feature_select(profiles, operation="correlation_threshold", corr_threshold=threshold)
    assert list(result.var_names) == _expected(profiles, operation="correlation_threshold", corr_threshold=threshold)


def test_blocklist_names_and_files(profiles, tmp_path):
    names = ["subcell_0001", "subcell_0010", "not_a_feature"]
    expected = _expected(profiles, operation="blocklist", blocklist=names)
    assert list(feature_select(profiles, operation="blocklist", blocklist=names).var_names) == expected
    (tmp_path / "block.txt").write_text("\n".join(names) + "\n")
    assert list(feature_select(profiles, operation="blocklist", blocklist=tmp_path / "block.txt").var_names) == expected
    (tmp_path / "block.csv").write_text("blocklist\n" + "\n".join(names) + "\n")  # pycytominer's file layout
    assert list(feature_select(profiles, operation="blocklist", blocklist=str(tmp_path / "block.csv")).var_names) \
        == expected
    with pytest.raises(ProfilingError, match="needs blocklist="):
        feature_select(profiles, operation="blocklist")


def test_real_cellprofiler_with_pycytominer_inference():
    """Real CellProfiler names: pycytominer infers the features itself and drops the same ones."""
    frame = real_cellprofiler()
    cells = from_dataframe(frame)
    frame[list(cells.var_names)] = cells.X.astype(np.float64)
    ops = ["variance_threshold", "correlation_threshold"]
    expected = pycytominer.feature_select(frame, operation=ops)
    result = feature_select(cells, operation=ops)
    assert list(result.var_names) == [c for c in expected.columns if not c.startswith("Metadata_")]


def test_records_each_operation(profiles):
    ops = ["drop_na_columns", "variance_threshold", "correlation_threshold"]
    result = feature_select(profiles, operation=ops)
    step = profiling_steps(result)[-1]
    assert step["step"] == "feature_select" and step["operation"] == ops and step["corr_threshold"] == 0.9
    per_op = step["dropped_by_operation"]
    assert per_op["drop_na_columns"] == ["subcell_0003"]
    assert set(per_op["variance_threshold"]) == {"subcell_0025", "subcell_0026", "subcell_0027"}
    assert sorted(step["dropped_features"]) == sorted(sum(per_op.values(), []))
    assert set(step["dropped_features"]).isdisjoint(result.var_names)


def test_bad_arguments(profiles):
    with pytest.raises(ProfilingError, match="unknown operation"):
        feature_select(profiles, operation=["variance_threshold", "frequency"])
    with pytest.raises(ProfilingError, match="corr_threshold must be within"):
        feature_select(profiles, corr_threshold=1.5)
    with pytest.raises(ProfilingError, match="dropped all 30 features"):
        feature_select(profiles, operation="variance_threshold", min_variance=1e9)
    with pytest.raises(ProfilingError, match="samples query .* matches no rows"):
        feature_select(profiles, samples="control_type == 'poscon'")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_screening_decides_every_pair_as_float64(monkeypatch, dtype):
    """Correlations within 1e-7 of the threshold (well inside float32's error bound), exact duplicates
    and near-duplicates with near-equal totals: the screened selection drops exactly the features the
    all-float64 computation drops, also when blocks of features split the pairs."""
    module = importlib.import_module("subcell_scale.profiles.feature_select")
    rng = np.random.default_rng(7)
    n, threshold = 300, 0.9
    base = rng.normal(size=(n, 6))
    base -= base.mean(axis=0)
    q, _ = np.linalg.qr(base)  # orthonormal, centred columns
    near = [threshold * q[:, 0] + np.sqrt(1 - threshold**2 - t) * q[:, 1] + 1e-7 * rng.normal(size=n)
            for t in (-2e-7, 0.0, 2e-7)]  # correlations with q0 a hair below, at and above the threshold
    x = np.column_stack([q[:, 0], *near, q[:, 2], q[:, 2], q[:, 2] + 1e-9 * rng.normal(size=n),
                         q[:, 3] + 0.05 * q[:, 4], q[:, 4], -q[:, 5], q[:, 5]]).astype(dtype)
    corr = np.corrcoef(x.astype(np.float64).T)
    margin = module._float32_dot_error(n)
    assert (np.abs(corr[0, 1:4] - threshold) < margin).all()  # the float32 screen cannot decide these alone
    screened = module._correlated(x, threshold, "pearson")
    for block in (x.shape[1], 2):
        monkeypatch.setattr(module, "_CORR_BLOCK_VALUES", block * x.shape[1])
        np.testing.assert_array_equal(module._correlated(x, threshold, "pearson"), screened)
    monkeypatch.setattr(module, "_float32_dot_error", lambda n: 1.0)  # a loose bound: all float64
    np.testing.assert_array_equal(module._correlated(x, threshold, "pearson"), screened)
    assert screened.any() and not screened.all()
