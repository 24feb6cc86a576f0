"""Views side by side: profiles.aggregate / postprocess take use_rep, evaluate_views runs one protocol on
each view and their concatenation, and a run with cellprofiler=True writes them all."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from subcell_scale._constants import Files, Keys
from subcell_scale.metrics import EvaluationDesign, evaluate_profiles
from subcell_scale.profiles import aggregate, postprocess
from subcell_scale.views import concatenated, evaluate_views, side_by_side, summary_of

STEPS = [{"step": "normalize", "method": "standardize", "reference": "compound == 'DMSO'", "by": "plate"}]


@pytest.fixture
def cells(synthetic_cells) -> ad.AnnData:
    """The synthetic cells with a second view: a shifted copy of X with one NaN and one constant column."""
    adata = synthetic_cells.copy()
    values = np.asarray(adata.X, dtype=np.float64)[:, :6] * 2 + 1
    values[0, 0] = np.nan  # as CellProfiler gives for some cells: the well's median skips it
    view = pd.DataFrame(values, index=adata.obs_names, columns=[f"F{i}" for i in range(6)])
    view["Constant"] = 3.0
    view["Missing"] = np.nan
    adata.obsm["other"] = view
    adata.uns[Keys.VIEWS] = {"other": {"columns": list(view.columns)}}
    return adata


def test_aggregate_and_postprocess_take_the_view(cells):
    wells = aggregate(cells)
    other = aggregate(cells, use_rep="other")
    assert list(other.var_names) == list(cells.obsm["other"].columns)
    assert list(other.obs_names) == list(wells.obs_names)
    rows = (cells.obs["plate"] == "P1") & (cells.obs["well"] == "B03")
    expected = np.nanmedian(cells.obsm["other"][rows.to_numpy()].to_numpy(), axis=0)
    np.testing.assert_allclose(other[(other.obs["plate"] == "P1") & (other.obs["well"] == "B03")].X[0], expected,
                               rtol=1e-6)
    wells.obsm["other"] = pd.DataFrame(other.X, index=wells.obs_names, columns=other.var_names)
    done = postprocess(wells, steps=STEPS, use_rep="other")
    np.testing.assert_array_equal(done.X, wells.X)  # X is left as it was
    view = done.obsm["other"]
    assert list(view.columns) == [f"F{i}" for i in range(6)]  # the constant and missing columns dropped
    assert sorted(done.uns[Keys.VIEWS]["other"]["dropped_features"]) == ["Constant", "Missing"]
    # the view post-processed alone equals the chain on its own profiles
    alone = postprocess(ad.AnnData(X=other.X[:, :6], obs=other.obs.copy(),
                                   var=pd.DataFrame(index=other.var_names[:6])), steps=STEPS)
    np.testing.assert_allclose(view.to_numpy(), alone.X, rtol=1e-6)


def test_every_view_is_evaluated_with_one_protocol(cells, tmp_path):
    wells = aggregate(cells)
    other = aggregate(cells, use_rep="other")
    wells.obsm["other"] = pd.DataFrame(other.X, index=wells.obs_names, columns=other.var_names)
    wells.uns[Keys.VIEWS] = {"other": {}}
    wells = postprocess(postprocess(wells, steps=STEPS), steps=STEPS, use_rep="other")
    design = EvaluationDesign.from_mapping({"null_size": 100, "seed": 0, "negcon": "compound == 'DMSO'",
                                            "replicate_rules": {"pos_sameby": ["compound"], "pos_diffby": [],
                                                                "neg_sameby": [], "neg_diffby": ["compound"]}})
    tables = evaluate_views(wells, design, tmp_path)
    assert list(tables) == ["subcell", "other", "subcell+other"]
    direct = evaluate_profiles(wells, design=design)
    pd.testing.assert_frame_equal(tables["subcell"]["replicate_map"], direct["replicate_map"])
    alone = ad.AnnData(X=wells.obsm["other"].to_numpy(np.float32), obs=wells.obs.copy())
    pd.testing.assert_frame_equal(tables["other"]["replicate_map"],
                                  evaluate_profiles(alone, design=design)["replicate_map"])
    both = concatenated(wells, ["other"])
    assert both.n_vars == wells.n_vars + 6
    np.testing.assert_array_equal(both.X[:, wells.n_vars:], wells.obsm["other"].to_numpy(np.float32))
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert list(summary.columns[:2]) == ["view", "cell_type"]
    pd.testing.assert_frame_equal(summary, summary_of(tables).astype(summary.dtypes.to_dict()), check_dtype=False)
    assert (tmp_path / "views" / "other" / "replicate_map.csv").is_file()
    assert (tmp_path / "views" / "subcell+other" / "summary.csv").is_file()
    table = side_by_side(summary)
    assert list(table.index) == ["subcell", "other", "subcell+other"]
    assert list(table.columns) == ["replicate mAP", "replicate fraction_retrieved", "moa_nn accuracy@1",
                                   "compound_nn accuracy@1"]
    value = summary.query("view == 'other' and design == 'replicate' and metric == 'mAP'")["value"].item()
    assert table.loc["other", "replicate mAP"] == pytest.approx(value)


@pytest.mark.processes
def test_a_run_with_cellprofiler_profiles_and_evaluates_every_view(demo_plates, tiny_spec, tmp_path,
                                                                   one_torch_thread):
    pytest.importorskip("cp_measure")
    from subcell_scale import read_cells
    from subcell_scale.workflow import run

    demo = demo_plates(n_plates=2, n_wells=6, n_fields=1, field_size=256, cells_per_field=8, seed=1)
    out = tmp_path / "run"
    result = run(demo["plates"], out=out, platemap=demo["platemap"], model=tiny_spec, client=None, progress=False,
                 out_size=32, null_size=200, cellprofiler=["sizeshape", "intensity"])
    assert result.ok, result.lines()
    cells = read_cells(out)
    profiles = ad.read_h5ad(out / Files.PROFILES)
    view = profiles.obsm[Keys.CELLPROFILER]
    assert isinstance(view, pd.DataFrame) and len(view) == profiles.n_obs
    assert set(view.columns) <= set(cells.obsm[Keys.CELLPROFILER].columns)
    summary = pd.read_csv(out / Files.METRICS / "summary.csv")
    assert list(dict.fromkeys(summary["view"])) == ["subcell", "cellprofiler", "subcell+cellprofiler"]
    for name in ("cellprofiler", "subcell+cellprofiler"):
        assert (out / Files.METRICS / "views" / name / "replicate_map.csv").is_file()
    assert (out / Files.FIGURES / "views.png").is_file()
    assert "Views side by side" in (out / Files.REPORT).read_text()
    assert any(line.startswith("subcell+cellprofiler") for line in result.lines())
