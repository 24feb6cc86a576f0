"""AnnData design wrappers, result export and ``subcell-scale evaluate`` against copairs run by hand."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _metrics_sim import simulated_profiles

from subcell_scale.cli import main
from subcell_scale.errors import ProfilingError
from subcell_scale.metrics import (
    evaluate_profiles,
    moa_nn_accuracy,
    moa_retrieval,
    nn_accuracy,
    phenotypic_activity,
    replicate_retrieval,
    to_metadata_frame,
    write_table,
)

from subcell_scale.metrics.evaluate import TABLES

copairs_map = pytest.importorskip("copairs.map")
copairs_matching = pytest.importorskip("copairs.matching")
copairs_multilabel = pytest.importorskip("copairs.map.multilabel")

NULL = 1000


@pytest.fixture(scope="module")
def profiles():
    meta, x = simulated_profiles(seed=2)
    meta.index = [f"{p}_{w}" for p, w in zip(meta.plate, meta.well)]
    return ad.AnnData(x.astype(np.float32), obs=meta.astype({"plate": "category", "compound": "category"}))


def _frames(adata):
    return adata.obs.reset_index(drop=True).astype(object), np.asarray(adata.X, dtype=np.float64)


def _same_map(ours: pd.DataFrame, ref: pd.DataFrame, key: str) -> None:
    ours = ours.sort_values(key).reset_index(drop=True)
    ref = ref.sort_values(key).reset_index(drop=True)
    assert (ours[key].astype(str) == ref[key].astype(str)).all()
    assert np.abs(ours["mean_average_precision"] - ref["mean_average_precision"]).max() < 1e-9
    assert (ours["p_value"].to_numpy() == ref["p_value"].to_numpy()).all()
    assert np.abs(ours["corrected_p_value"].to_numpy() - ref["corrected_p_value"].to_numpy()).max() < 1e-12


def test_replicate_retrieval_is_the_subcell_design(profiles, tmp_path):
    obs, x = _frames(profiles)
    keep = (obs.control_type != "negcon").to_numpy()
    ap = copairs_map.average_precision(obs[keep], x[keep], ["compound"], ["plate"], ["plate"], ["compound"],
                                       progress_bar=False)
    ref = copairs_map.mean_average_precision(ap, ["compound"], NULL, 0.05, 0, progress_bar=False, cache_dir=tmp_path)
    ours = replicate_retrieval(profiles, exclude="control_type == 'negcon'", null_size=NULL)
    _same_map(ours, ref, "compound")


def test_replicate_retrieval_single_plate_ranks_against_all(profiles, tmp_path):
    one = profiles[profiles.obs.plate == "P0"].copy()
    # one plate has no replicates: add a second well per compound on the same plate
    twin = one.copy()
    twin.X = twin.X + np.random.default_rng(0).normal(scale=1.0, size=twin.shape).astype(np.float32)
    twin.obs_names = [f"{n}_b" for n in twin.obs_names]
    both = ad.concat([one, twin])
    obs, x = _frames(both)
    ap = copairs_map.average_precision(obs, x, ["compound"], [], [], ["compound"], progress_bar=False)
    ref = copairs_map.mean_average_precision(ap, ["compound"], NULL, 0.05, 0, progress_bar=False, cache_dir=tmp_path)
    _same_map(replicate_retrieval(both, null_size=NULL), ref, "compound")


def test_phenotypic_activity_is_copairs_reference_design(profiles, tmp_path):
    obs, x = _frames(profiles)
    obs = copairs_matching.assign_reference_index(obs, "control_type == 'negcon'", reference_col="ref")
    ap = copairs_map.average_precision(obs, x, ["compound", "ref"], [], [], ["compound", "ref"], progress_bar=False)
    ap = ap[obs.control_type != "negcon"]
    ref = copairs_map.mean_average_precision(ap, ["compound"], NULL, 0.05, 0, progress_bar=False, cache_dir=tmp_path)
    ours_ap, ours = phenotypic_activity(profiles, null_size=NULL, return_ap=True)
    _same_map(ours, ref, "compound")
    assert len(ours_ap) == (obs.control_type != "negcon").sum() and "__reference_index" not in ours_ap
    assert ours["below_corrected_p"].any()


def test_moa_retrieval_is_the_subcell_multilabel_design(profiles, tmp_path):
    obs, x = _frames(profiles)
    keep = (obs.moa != "").to_numpy()
    labelled = obs[keep].reset_index(drop=True).assign(moa=lambda d: d.moa.str.split("|"))
    ap = copairs_multilabel.average_precision(labelled, x[keep], ["moa"], ["plate", "compound"], ["plate"], ["moa"],
                                              multilabel_col="moa", progress_bar=False)
    ref = copairs_map.mean_average_precision(ap, ["moa"], NULL, 0.05, 0, progress_bar=False, cache_dir=tmp_path)
    _same_map(moa_retrieval(profiles, null_size=NULL), ref, "moa")


def test_moa_nn_accuracy_excludes_same_compound_and_plate(profiles):
    obs, x = _frames(profiles)
    ours = moa_nn_accuracy(profiles, k=(1, 3))
    assert ours.equals(nn_accuracy(obs, x, "moa", ["compound", "plate"], k=(1, 3)))
    nscb = moa_nn_accuracy(profiles, k=1, plate_col=None, batch_col="plate")
    assert nscb.equals(ours.iloc[:1])


def test_use_rep_reads_obsm(profiles):
    other = profiles.copy()
    other.obsm["X_alt"] = np.asarray(profiles.X, dtype=np.float64)
    other.X = np.zeros_like(other.X) + 1.0
    a = replicate_retrieval(other, use_rep="X_alt", null_size=200)
    b = replicate_retrieval(profiles, null_size=200)
    assert np.abs(a["mean_average_precision"] - b["mean_average_precision"]).max() < 1e-9
    with pytest.raises(ProfilingError, match="obsm has no 'nope'"):
        replicate_retrieval(other, use_rep="nope")


def test_metadata_export_round_trips(profiles, tmp_path):
    res = replicate_retrieval(profiles, null_size=200)
    table = to_metadata_frame(res)
    assert "Metadata_compound" in table and "mean_average_precision" in table and "compound" not in table
    assert isinstance(table["indices"].iloc[0], str)
    back = pd.read_parquet(write_table(res, tmp_path / "r.parquet"))
    assert np.allclose(back["p_value"], res["p_value"])
    back = pd.read_csv(write_table(res, tmp_path / "r.csv"))
    assert list(back.columns) == list(table.columns)
    with pytest.raises(ProfilingError, match="write results as"):
        write_table(res, tmp_path / "r.txt")


def test_evaluate_profiles_writes_every_table(profiles, tmp_path):
    tables = evaluate_profiles(profiles, tmp_path, preset="jump-cellpainting", null_size=NULL)
    written = sorted(p.stem for p in tmp_path.glob("*.csv"))
    assert written == sorted(TABLES) == sorted(tables)
    rep = tables["replicate_map"]
    assert "DMSO" not in set(rep["compound"]) and set(rep["cell_type"]) == {"all"}
    summary = pd.read_csv(tmp_path / "summary.csv")
    row = summary[(summary.design == "replicate") & (summary.metric == "mAP")].iloc[0]
    assert row.value == pytest.approx(rep["mean_average_precision"].mean())
    assert list(pd.read_csv(tmp_path / "moa_nn.csv")["k"]) == list(range(1, 51))


def test_every_entry_point_writes_the_same_bytes(profiles, tmp_path, capsys):
    """``evaluate_profiles``, ``subcell-scale evaluate`` and a run's evaluation: one path, identical tables."""
    from subcell_scale.params import RunParams
    from subcell_scale.stages import evaluate_profiles_for

    path = tmp_path / "profiles.h5ad"
    profiles.write_h5ad(path)
    evaluate_profiles(ad.read_h5ad(path), tmp_path / "api", preset="jump-cellpainting", null_size=300)
    assert main(["evaluate", str(path), "--out", str(tmp_path / "cli"), "--preset", "jump-cellpainting", "--set",
                 "null_size=300"]) == 0
    assert "replicate" in capsys.readouterr().out
    design = RunParams.resolve("jump-cellpainting", **{"design.null_size": 300}).design
    evaluate_profiles_for(ad.read_h5ad(path), design, tmp_path / "run")
    for name in TABLES:
        api = (tmp_path / "api" / f"{name}.csv").read_bytes()
        assert api == (tmp_path / "cli" / f"{name}.csv").read_bytes() == (tmp_path / "run" / f"{name}.csv").read_bytes()


def test_cli_evaluate_errors_are_one_line(profiles, tmp_path, capsys):
    path = tmp_path / "profiles.h5ad"
    profiles.write_h5ad(path)
    out = tmp_path / "metrics"
    assert main(["evaluate", str(path), "--out", str(out), "--set", "pert_col=nope", "null_size=10"]) == 1
    assert "profiles have no 'nope' column" in capsys.readouterr().err
    assert main(["evaluate", str(path), "--out", str(out), "--set", "seeds=1"]) == 1
    assert "unknown parameter(s) ['seeds']" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.h5ad"), "--out", str(out)]) == 1
