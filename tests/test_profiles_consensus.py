"""consensus: median / mean / MODZ per replicate group, as pycytominer.consensus."""

from __future__ import annotations

import numpy as np
import pycytominer
import pytest

from subcell_scale._constants import Keys
from subcell_scale.errors import ProfilingError
from subcell_scale.profiles import consensus, normalize, profiling_steps

from _profiles_sim import pycytominer_frame, simulated_profiles


@pytest.fixture(scope="module")
def profiles():
    data = simulated_profiles(n_plates=3, n_wells=28, n_features=10, seed=2)
    data.obs["moa"] = data.obs["compound"].map(lambda c: "control" if c == "DMSO" else f"moa{int(c[-1]) % 3}")
    return normalize(data, reference="control_type == 'negcon'", by="plate")


@pytest.mark.filterwarnings("ignore:DataFrameGroupBy.apply operated on the grouping columns:FutureWarning")
@pytest.mark.parametrize("operation", ["median", "mean", "modz"])
@pytest.mark.parametrize("by", [["compound"], ["plate", "compound"]])
def test_matches_pycytominer(profiles, operation, by):
    result = consensus(profiles, by=by, operation=operation)
    frame = pycytominer_frame(profiles, ["plate", "compound", "moa"])
    strata = [f"Metadata_{c}" for c in by]
    expected = pycytominer.consensus(frame, replicate_columns=strata, operation=operation,
                                     features=list(profiles.var_names)).sort_values(strata)
    for column in by:
        assert list(result.obs[column].astype(str)) == list(expected[f"Metadata_{column}"])
    np.testing.assert_allclose(result.X, expected[list(profiles.var_names)].to_numpy(), rtol=1e-6, atol=1e-6)


def test_modz_downweights_a_bad_replicate():
    """Three agreeing replicates and one unrelated: MODZ stays near the agreeing ones, the mean does not."""
    rng = np.random.default_rng(0)
    signal = rng.normal(size=50)
    x = np.vstack([signal + 0.1 * rng.normal(size=50) for _ in range(3)] + [5 * rng.normal(size=50)])
    data = simulated_profiles(n_plates=1, n_wells=4, n_features=50)
    data.X = x.astype(np.float32)
    data.obs["compound"] = "cmp"
    modz = consensus(data, by="compound", operation="modz").X[0]
    mean = consensus(data, by="compound", operation="mean").X[0]
    assert np.linalg.norm(modz - signal) < 0.5 * np.linalg.norm(mean - signal)


def test_obs_counts_and_history(profiles):
    result = consensus(profiles, by="compound")
    groups = profiles.obs.groupby("compound")
    assert list(result.obs_names) == sorted(groups.groups)
    np.testing.assert_array_equal(result.obs[Keys.N_PROFILES], groups.size().to_numpy())
    np.testing.assert_array_equal(result.obs[Keys.N_CELLS], groups[Keys.N_CELLS].sum().to_numpy())
    assert "moa" in result.obs and "control_type" in result.obs and "well" not in result.obs
    assert [s["step"] for s in profiling_steps(result)] == ["normalize", "consensus"]


def test_bad_arguments(profiles):
    with pytest.raises(ProfilingError, match=r"missing \['perturbation'\]"):
        consensus(profiles, by="perturbation")
    with pytest.raises(ProfilingError, match="operation must be"):
        consensus(profiles, operation="max")
