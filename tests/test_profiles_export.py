"""Export (parquet / CSV read unchanged by pycytominer and copairs, and back) and the profile command."""

from __future__ import annotations

import subprocess
import sys
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pycytominer
import pytest

from subcell_scale.cli import main
from subcell_scale.errors import ProfilingError
from subcell_scale.profiles import (aggregate, feature_select, normalize, profiling_steps, read_profiles,
                                    to_dataframe, write_csv, write_parquet)

from _profiles_sim import simulated_cells

NEGCON = "control_type == 'negcon'"


@pytest.fixture(scope="module")
def cells():
    return simulated_cells(n_wells=9, n_features=16, seed=7)


@pytest.fixture(scope="module")
def profiles(cells):
    return normalize(aggregate(cells), method="mad_robustize", reference=NEGCON, by="plate")


def test_table_layout(profiles):
    frame = to_dataframe(profiles)
    meta = [f"Metadata_{c}" for c in profiles.obs.columns]
    assert list(frame.columns) == meta + list(profiles.var_names)
    np.testing.assert_array_equal(frame[list(profiles.var_names)].to_numpy(), profiles.X)
    assert list(frame["Metadata_well"].astype(str)) == list(profiles.obs["well"].astype(str))


def test_pycytominer_reads_the_parquet_unchanged(profiles, tmp_path):
    path = write_parquet(profiles, tmp_path / "profiles.parquet")
    loaded = pycytominer.cyto_utils.load_profiles(str(path))
    assert pycytominer.cyto_utils.infer_cp_features(loaded, metadata=True) == \
        [f"Metadata_{c}" for c in profiles.obs.columns]
    features = list(profiles.var_names)
    expected = pycytominer.normalize(str(path), features=features, samples="Metadata_control_type == 'negcon'",
                                     method="standardize")
    np.testing.assert_allclose(normalize(profiles, reference=NEGCON).X, expected[features].to_numpy(),
                               rtol=1e-6, atol=1e-6)


def test_copairs_reads_the_parquet_unchanged(profiles, tmp_path):
    from copairs.map import average_precision

    frame = pd.read_parquet(write_parquet(profiles, tmp_path / "profiles.parquet"))
    meta = frame.filter(regex="^Metadata_").astype({"Metadata_compound": str, "Metadata_plate": str})
    feats = frame[list(profiles.var_names)].to_numpy()
    with warnings.catch_warnings(action="ignore"):
        ap = average_precision(meta, feats, pos_sameby=["Metadata_compound"], pos_diffby=["Metadata_plate"],
                               neg_sameby=[], neg_diffby=["Metadata_compound"], progress_bar=False)
    assert len(ap) == profiles.n_obs and ap["average_precision"].notna().any()


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".csv.gz"])
def test_round_trip(profiles, tmp_path, suffix):
    path = tmp_path / f"profiles{suffix}"
    (write_parquet if suffix == ".parquet" else write_csv)(profiles, path)
    back = read_profiles(path)
    np.testing.assert_array_equal(back.X, profiles.X)
    assert list(back.var_names) == list(profiles.var_names)
    for column in profiles.obs.columns:
        assert list(back.obs[column].astype(str)) == list(profiles.obs[column].astype(str))
    if suffix == ".parquet":
        assert profiling_steps(back) == profiling_steps(profiles)
    with pytest.raises(ProfilingError, match="not found"):
        read_profiles(tmp_path / "absent.parquet")


def test_profile_command_equals_the_api(cells, tmp_path, capsys):
    path = tmp_path / "cells.zarr"
    with warnings.catch_warnings(action="ignore"):
        cells.write_zarr(path, chunks=(100, cells.n_vars))
    out = tmp_path / "out"
    code = main(["profile", str(path), "--out", str(out), "--per-field", "--normalize", "mad_robustize",
                 "--reference", NEGCON, "--by", "plate", "--feature-select", "variance_threshold",
                 "correlation_threshold"])
    assert code == 0
    assert "profiles x" in capsys.readouterr().out
    expected = feature_select(normalize(aggregate(cells, per_field=True), method="mad_robustize", reference=NEGCON,
                                        by="plate"), operation=["variance_threshold", "correlation_threshold"])
    written = ad.read_h5ad(out / "profiles.h5ad")
    np.testing.assert_array_equal(written.X, expected.X)
    assert [s["step"] for s in profiling_steps(written)] == ["aggregate", "postprocess", "normalize",
                                                               "feature_select"]
    np.testing.assert_array_equal(read_profiles(tmp_path / "out" / "profiles.parquet").X, expected.X)


@pytest.mark.slow
def test_profile_command_errors_are_one_line(tmp_path):
    entry = "import sys; from subcell_scale.cli import main; sys.exit(main(sys.argv[1:]))"
    run = subprocess.run([sys.executable, "-c", entry, "profile", str(tmp_path / "none.zarr"),
                          "--out", str(tmp_path / "p")], capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0
    assert "no such cells file or run directory" in run.stderr and "none.zarr" in run.stderr


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part")
def test_profiles_from_an_embedded_demo_plate(tmp_path):
    """The cells store the pipeline writes (tiny random model) goes through the profile command:
    platemap columns reach the wells, localization probabilities aggregate under their class names."""
    import torch

    from subcell_scale._constants import Keys
    from subcell_scale.io.demo import make_demo_plate
    from subcell_scale.models import SubCell
    from subcell_scale.models.config import ModelConfig
    from subcell_scale import embed_plate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plates = make_demo_plate(tmp_path / "plates", n_plates=2, n_wells=4, n_fields=2, field_size=256,
                                 cells_per_field=6, seed=1)
        tiny = ModelConfig(hidden_size=32, num_layers=1, num_heads=1, intermediate_size=64, num_channels=4,
                           pool_int_dim=16)
        cells = embed_plate([str(p) for p in plates], SubCell.random(tiny, seed=0, n_classifiers=1),
                            out=tmp_path / "run", platemap=str(tmp_path / "plates" / "platemap.csv"),
                            progress=False, out_size=32)
    finally:
        torch.set_num_threads(threads)
    store = next((tmp_path / "run").glob("cells.*"))
    # the run's description would standardise too: an empty chain leaves the aggregated wells
    assert main(["profile", str(store), "--out", str(tmp_path / "profiles"), "--per-field", "--set",
                 "postprocess=[]"]) == 0
    profiles = ad.read_h5ad(tmp_path / "profiles" / "profiles.h5ad")
    wells = cells.obs.groupby(["plate", "well"], observed=True)
    assert profiles.n_obs == wells.ngroups and profiles.obs[Keys.N_CELLS].sum() == cells.n_obs
    assert {"compound", "moa", "control_type", "row", "column"} <= set(profiles.obs.columns)
    np.testing.assert_array_equal(profiles.X, aggregate(cells, per_field=True).X)
    localization = aggregate(store, obsm=Keys.LOCALIZATION, operation="mean")
    assert list(localization.var_names) == list(cells.uns[Keys.LOCALIZATION_CLASSES])
    frame = pd.DataFrame(cells.obsm[Keys.LOCALIZATION]).assign(plate=cells.obs["plate"].astype(str).to_numpy(),
                                                               well=cells.obs["well"].astype(str).to_numpy())
    expected = frame.groupby(["plate", "well"]).mean().sort_index().to_numpy()
    np.testing.assert_allclose(localization.X, expected, rtol=1e-6, atol=1e-6)
