"""postprocess: a chain of steps per cell type (the SubCell JUMP loop), the JUMP recipe steps against
the functions they mirror (pycytominer, harmonypy, the recipe's own formulas), records, errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pycytominer
import pytest
from scipy.stats import median_abs_deviation, norm, rankdata

from subcell_scale.errors import ConfigError, ProfilingError
from subcell_scale.profiles import (
    harmony,
    postprocess,
    profiling_steps,
    rank_inverse_normal,
    select_variant_features,
)

from _profiles_sim import pycytominer_frame, simulated_profiles

NEGCON = "control_type == 'negcon'"
META = ["plate", "well", "compound", "control_type", "cell_type", "batch"]
JUMP_CHAIN = [
    {"step": "normalize", "method": "spherize", "spherize_method": "PCA-cor", "reference": NEGCON,
     "spherize_epsilon": 1e-6},
    {"step": "normalize", "method": "standardize", "reference": "all", "by": "plate"},
]


@pytest.fixture(scope="module")
def profiles() -> ad.AnnData:
    """Two cell types on their own plates (2 each), 40 wells per plate, 8 features, 2 batches."""
    parts = []
    for k, cell_type in enumerate(["A549", "U2OS"]):
        part = simulated_profiles(n_plates=2, n_wells=40, n_features=8, seed=10 + k)
        part.obs["plate"] = [f"{cell_type}_{p}" for p in part.obs["plate"]]
        part.obs["cell_type"] = cell_type
        part.obs["batch"] = ["b1" if p.endswith("P1") else "b2" for p in part.obs["plate"]]
        part.obs_names = [f"{cell_type}_{n}" for n in part.obs_names]
        if k:
            part.X = part.X * 3.0 + 5.0  # another cell type, another scale
        parts.append(part)
    return ad.concat(parts)


def _reference_chain(frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """The SubCell benchmark's loop (scripts/postprocess.py, utils/postprocess_utils.py): per cell
    type, pycytominer spherize fitted on its DMSO wells, then standardize per plate on all wells."""
    meta = [c for c in frame.columns if c.startswith("Metadata_")]
    out = []
    for _, part in frame.groupby("Metadata_cell_type"):
        sph = pycytominer.normalize(part, features=features, meta_features=meta,
                                    samples="Metadata_control_type == 'negcon'", method="spherize",
                                    spherize_method="PCA-cor", spherize_epsilon=1e-6)
        sph.index = part.index
        pcs = [c for c in sph.columns if c not in meta]
        for _, plate in sph.groupby("Metadata_plate"):
            out.append(pycytominer.normalize(plate, features=pcs, meta_features=meta, method="standardize"))
    return pd.concat(out)


def test_chain_runs_per_cell_type_as_the_subcell_benchmark(profiles):
    result = postprocess(profiles, steps=JUMP_CHAIN, spherize_variant="corrected")
    frame = pycytominer_frame(profiles, META)
    frame.index = profiles.obs_names
    expected = _reference_chain(frame, list(profiles.var_names)).loc[profiles.obs_names]
    assert list(result.obs_names) == list(profiles.obs_names)
    assert list(result.var_names) == [f"PC{i}" for i in range(1, 9)]
    np.testing.assert_allclose(result.X, expected[list(result.var_names)].to_numpy(), rtol=1e-5, atol=1e-5)


def test_cell_types_never_share_a_fit(profiles):
    changed = profiles.copy()
    u2os = (changed.obs["cell_type"] == "U2OS").to_numpy()
    changed.X[u2os] = changed.X[u2os] * 10 + np.random.default_rng(0).normal(size=changed.X[u2os].shape)
    a = postprocess(profiles, steps=JUMP_CHAIN)
    b = postprocess(changed, steps=JUMP_CHAIN)
    np.testing.assert_array_equal(a.X[~u2os], b.X[~u2os])
    pooled = postprocess(profiles, steps=JUMP_CHAIN, stratify=None)
    assert not np.allclose(pooled.X[~u2os], a.X[~u2os], atol=1e-3)


def test_every_step_and_stratum_recorded_and_written(profiles, tmp_path):
    result = postprocess(profiles, steps=JUMP_CHAIN, spherize_variant="legacy")
    steps = profiling_steps(result)
    assert [s["step"] for s in steps] == ["postprocess", "normalize", "normalize", "normalize", "normalize"]
    assert steps[0]["stratify"] == "cell_type" and steps[0]["strata"] == ["A549", "U2OS"]
    assert steps[0]["chain"]["00"]["spherize_variant"] == "legacy"
    assert [(s["method"], s["stratum"]) for s in steps[1:]] == [
        ("spherize", "A549"), ("spherize", "U2OS"), ("standardize", "A549"), ("standardize", "U2OS")]
    assert steps[1]["spherize_variant"] == "legacy" and steps[1]["n_reference"] == [20]
    assert steps[3]["strata"] == ["plate='A549_P1'", "plate='A549_P2'"]
    path = tmp_path / "profiles.h5ad"
    result.write_h5ad(path)
    assert profiling_steps(ad.read_h5ad(path)) == steps


def test_without_a_cell_type_column_one_chain(profiles):
    data = profiles[profiles.obs["cell_type"] == "A549"].copy()
    del data.obs["cell_type"]
    from subcell_scale.profiles import normalize

    direct = normalize(normalize(data, **{k: v for k, v in JUMP_CHAIN[0].items() if k != "step"}),
                       **{k: v for k, v in JUMP_CHAIN[1].items() if k != "step"})
    result = postprocess(data, steps=JUMP_CHAIN)
    np.testing.assert_array_equal(result.X, direct.X)
    assert "stratum" not in profiling_steps(result)[1]


def test_strata_keeping_different_features_give_their_union(profiles):
    data = profiles.copy()
    a549 = (data.obs["cell_type"] == "A549").to_numpy()
    data.X[a549, 3] = 1.0  # constant in A549 only: variance_threshold drops it there
    result = postprocess(data, steps=[{"step": "feature_select", "operation": ["variance_threshold"]}])
    assert list(result.var_names) == list(data.var_names)
    assert np.isnan(result.X[a549, 3]).all() and np.isfinite(result.X[~a549]).all()
    steps = profiling_steps(result)
    assert steps[1]["dropped_features"] == ["subcell_0003"] and steps[2]["dropped_features"] == []


def test_chain_errors_name_the_step_and_stratum(profiles):
    with pytest.raises(ConfigError, match="steps are"):
        postprocess(profiles, steps=[{"step": "whiten"}])
    with pytest.raises(ConfigError, match=r"step 0 \(normalize\): unknown parameter\(s\) \['samples'\]"):
        postprocess(profiles, steps=[{"step": "normalize", "samples": "all"}])
    with pytest.raises(ConfigError, match=r"no step of the chain takes \['spherize_varant'\]"):
        postprocess(profiles, steps=JUMP_CHAIN, spherize_varant="legacy")
    with pytest.raises(ConfigError, match="give steps="):
        postprocess(profiles)
    with pytest.raises(ConfigError, match="unknown post-processing chain 'jump'.*chains: jump-recipe"):
        postprocess(profiles, preset="jump")
    data = profiles.copy()
    data.obs.loc[(data.obs["cell_type"] == "U2OS").to_numpy(), "control_type"] = "trt"
    with pytest.raises(ProfilingError, match=r"step 0 \(normalize\) \(cell_type='U2OS'\): .*matches no rows"):
        postprocess(data, steps=JUMP_CHAIN)


# --- the JUMP consortium recipe steps (broadinstitute/jump-profiling-recipe) ---------------------


def _recipe_variant_features(frame: pd.DataFrame, features: list[str]) -> list[str]:
    """preprocessing/stats.py: per-plate negcon median and unscaled MAD (float32), keep features with
    mad != 0 and |mad/median| > 1e-3 in every plate."""
    negcon = frame[frame["Metadata_control_type"] == "negcon"]
    keep = set(features)
    for _, plate in negcon.groupby("Metadata_plate"):
        values = plate[features]
        median = values.median()
        mad = pd.Series(median_abs_deviation(values, axis=0, nan_policy="omit"), index=features)
        coef = (mad / median).fillna(0).abs().replace(np.inf, 0)
        ok = (mad.astype(np.float32) != 0) & (coef.astype(np.float32) > 1e-3)
        keep &= set(ok[ok].index)
    return [f for f in features if f in keep]


def _recipe_rank_int(array: np.ndarray, seed: int = 0) -> np.ndarray:
    """preprocessing/transform.py rank_int_array: shuffle, ordinal ranks, Blom 3/8, normal quantiles."""
    rng = np.random.default_rng(seed=seed)
    ix = rng.permutation(len(array))
    rank = rankdata(array[ix], method="ordinal")[np.argsort(ix)]
    return norm.ppf((rank - 3.0 / 8) / (len(rank) - 2 * 3.0 / 8 + 1))


def test_select_variant_features_is_the_recipe_rule(profiles):
    data = profiles[profiles.obs["cell_type"] == "A549"].copy()
    negcon_p2 = ((data.obs["plate"] == "A549_P2") & (data.obs["control_type"] == "negcon")).to_numpy()
    data.X[negcon_p2, 1] = 4.0                                    # zero MAD on one plate
    data.X[:, 2] = 1000.0 + 1e-4 * np.random.default_rng(1).normal(size=data.n_obs)  # tiny |mad/median|
    data.X[3, 6] = np.nan                                          # missing value
    result = select_variant_features(data, reference=NEGCON, by="plate")
    frame = pycytominer_frame(data, META)
    features = [f for f in data.var_names if f != "subcell_0006"]
    assert list(result.var_names) == _recipe_variant_features(frame, features)
    assert list(result.var_names) == [f"subcell_{i:04d}" for i in (0, 3, 4, 5, 7)]
    step = profiling_steps(result)[-1]
    assert step["not_finite"] == ["subcell_0006"]
    assert step["dropped_features"] == ["subcell_0001", "subcell_0002", "subcell_0006"]


def test_rank_inverse_normal_is_the_recipe_int(profiles):
    data = profiles.copy()
    data.X[:10, 0] = 2.5  # ties, broken at random as the recipe breaks them
    result = rank_inverse_normal(data)
    x = np.asarray(data.X, dtype=np.float64)
    expected = np.column_stack([_recipe_rank_int(x[:, j]) for j in range(x.shape[1])])
    np.testing.assert_allclose(result.X, expected, rtol=1e-6, atol=1e-6)
    average = rank_inverse_normal(data, ties="average")
    assert len(set(average.X[:10, 0].tolist())) == 1


def test_harmony_is_harmonypy(profiles):
    harmonypy = pytest.importorskip("harmonypy")
    data = profiles[profiles.obs["cell_type"] == "A549"].copy()
    result = harmony(data, batch="batch", nclust=5)
    direct = harmonypy.run_harmony(np.asarray(data.X, dtype=np.float64), data.obs[["batch"]].reset_index(drop=True),
                                   "batch", nclust=5, max_iter_harmony=20, random_state=0, verbose=False)
    z = np.asarray(direct.Z_corr)
    z = z if z.shape == data.shape else z.T
    np.testing.assert_allclose(result.X, z, rtol=1e-5, atol=1e-5)
    assert list(result.var_names)[:2] == ["harmony_0", "harmony_1"]
    with pytest.raises(ProfilingError, match="nclust=300 must be between 1 and"):
        harmony(data, batch="batch")
    with pytest.raises(ProfilingError, match="single batch"):
        harmony(data[data.obs["batch"] == "b1"].copy(), batch="batch", nclust=5)


def test_the_jump_recipe_chain_end_to_end(profiles):
    pytest.importorskip("harmonypy")
    chain = [
        {"step": "select_variant_features", "reference": NEGCON, "by": "plate"},
        {"step": "normalize", "method": "mad_robustize", "reference": NEGCON, "by": "plate", "mad_scale": 1.0,
         "mad_robustize_epsilon": 0.0},
        {"step": "rank_inverse_normal"},
        {"step": "feature_select", "operation": ["variance_threshold", "correlation_threshold", "drop_na_columns"],
         "na_cutoff": 0.0},
        {"step": "harmony", "batch": "batch", "nclust": 5},
    ]
    result = postprocess(profiles, steps=chain)
    assert [s["step"] for s in profiling_steps(result)][1::2] == [
        "select_variant_features", "normalize", "rank_inverse_normal", "feature_select", "harmony"]
    assert result.var_names[0] == "harmony_0" and np.isfinite(result.X).all()
