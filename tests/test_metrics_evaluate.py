"""evaluate_profiles(design=...) and postprocess against the SubCell JUMP benchmark's own logic
(tests/_jump_reference.py: its pycytominer and copairs calls and its k-NN loops), per cell type."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from subcell_scale.errors import ConfigError, ProfilingError
from subcell_scale.metrics import EvaluationDesign, evaluate_profiles, usable_moa_table
from subcell_scale.profiles import postprocess

import _jump_reference as reference
from _profiles_sim import simulated_screen

NEGCON = "control_type == 'negcon'"
CHAIN = [
    {"step": "normalize", "method": "spherize", "spherize_method": "PCA-cor", "reference": NEGCON,
     "spherize_epsilon": 1e-6, "spherize_variant": "legacy"},
    {"step": "normalize", "method": "standardize", "reference": "all", "by": "plate"},
]
def _usable(profiles: ad.AnnData) -> pd.DataFrame:
    """Usable MoAs the benchmark's way: labels held by >= 2 compounds; lists as in its CSV."""
    obs = profiles.obs[profiles.obs["compound"] != "DMSO"].drop_duplicates("compound")
    per = {c: m.split("|") for c, m in zip(obs["compound"], obs["moa"], strict=True)}
    counts = pd.Series([m for labels in per.values() for m in labels]).value_counts()
    rows = [{"compound": c, "moas": [m for m in labels if counts[m] >= 2]} for c, labels in sorted(per.items())]
    return pd.DataFrame([r for r in rows if r["moas"]])


@pytest.fixture(scope="module")
def profiles() -> ad.AnnData:
    return simulated_screen()


@pytest.fixture(scope="module")
def ours(profiles):
    processed = postprocess(profiles, steps=CHAIN)
    return processed, evaluate_profiles(processed, design={})


@pytest.fixture(scope="module")
def oracle(profiles):
    frame = profiles.obs[reference.META_COLS].reset_index(drop=True).astype(str)
    frame = pd.concat([frame, pd.DataFrame(np.asarray(profiles.X, dtype=np.float64),
                                           columns=list(profiles.var_names))], axis=1)
    processed = reference.postprocess(frame, list(profiles.var_names), variant="legacy")
    return processed, reference.evaluate(processed, _usable(profiles))


@pytest.mark.slow
def test_postprocess_equals_the_reference_chain(ours, oracle):
    processed, _ = ours
    expected = oracle[0].set_index(["plate", "well"]).loc[list(zip(processed.obs["plate"], processed.obs["well"]))]
    np.testing.assert_allclose(processed.X, expected[list(processed.var_names)].to_numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("task, key, label", [("replicate", "replicate", "compound"), ("moa", "moa", "moa")])
def test_map_per_group_equals_the_reference(ours, oracle, task, key, label):
    tables = ours[1]
    ref_label = "compound" if task == "replicate" else "moas"
    for cell_type, expected in oracle[1].items():
        ref = expected[key].set_index(ref_label)
        got = tables[f"{task}_map"].query("cell_type == @cell_type").set_index(label)
        assert sorted(got.index) == sorted(ref.index)
        got = got.loc[ref.index]
        np.testing.assert_allclose(got["mean_average_precision"], ref["mean_average_precision"], atol=1e-6)
        np.testing.assert_allclose(got["p_value"], ref["p_value"], atol=1e-9)
        np.testing.assert_allclose(got["corrected_p_value"], ref["corrected_p_value"], atol=1e-9)
        assert int(got["below_corrected_p"].sum()) == int(ref["below_corrected_p"].sum())
        summary = tables["summary"].query("cell_type == @cell_type and design == @task").set_index("metric")
        assert summary.loc["mAP", "value"] == pytest.approx(expected[f"{key}_summary"]["mAP"], abs=1e-6)
        assert summary.loc["fraction_retrieved", "value"] == pytest.approx(expected[f"{key}_summary"]["frac"])


@pytest.mark.parametrize("table, key", [("compound_nn", "compound_nn"), ("moa_nn", "moa_nn")])
def test_nn_accuracy_equals_the_reference_loops(ours, oracle, table, key):
    tables = ours[1]
    for cell_type, expected in oracle[1].items():
        got = tables[table].query("cell_type == @cell_type").set_index("k")
        assert list(got.index) == list(range(1, 51))
        np.testing.assert_allclose(got["accuracy"], [expected[key][k] for k in range(1, 51)], atol=0.005)
        assert (got["n_hits"] == np.round(got["accuracy"] * got["n_queries"])).all()


def test_moa_nn_match_rules(ours, oracle):
    """'identical' (what the benchmark computes) and 'any' (what its docstring says) both reproduce
    the reference loop with lists and with "|"-joined strings, and differ on multilabel compounds."""
    processed, tables = ours
    anyone = evaluate_profiles(processed, design={"nn_match": "any", "null_size": 10})
    for cell_type, expected in oracle[1].items():
        got = anyone["moa_nn"].query("cell_type == @cell_type").set_index("k")["accuracy"]
        np.testing.assert_allclose(got, [expected["moa_nn_any"][k] for k in range(1, 51)], atol=0.005)
        identical = tables["moa_nn"].query("cell_type == @cell_type").set_index("k")["accuracy"]
        assert (got >= identical).all() and (got > identical).any()


def test_tables_have_cell_type_and_copairs_columns(ours, profiles):
    tables = ours[1]
    assert set(tables) == {"replicate_ap", "replicate_map", "moa_ap", "moa_map", "moa_nn", "compound_nn", "summary"}
    for name, table in tables.items():
        assert table.columns[0] == "cell_type" and set(table["cell_type"]) == {"A549", "U2OS"}, name
    for name in ("replicate_map", "moa_map"):
        assert {"mean_average_precision", "p_value", "corrected_p_value", "below_p",
                "below_corrected_p"} <= set(tables[name].columns)
    assert list(tables["moa_nn"].columns) == ["cell_type", "k", "accuracy", "n_queries", "n_hits"]
    assert "DMSO" not in set(tables["replicate_ap"]["compound"])  # controls are never queries
    n_trt = int((profiles.obs["cell_type"] == "A549").sum() - 3 * 8)
    compound = tables["compound_nn"].query("cell_type == 'A549'")
    assert (compound["n_queries"] == n_trt).all()  # every treated well counts, as the reference counts
    summary = tables["summary"].query("cell_type == 'A549' and design == 'moa_nn'")
    assert list(summary["metric"]) == ["accuracy@1", "accuracy@5", "accuracy@10"]


def test_usable_moas_derived_or_from_the_benchmark_csv(profiles, ours, tmp_path):
    derived = usable_moa_table(profiles.obs, negcon=NEGCON)
    expected = _usable(profiles)
    assert list(derived["compound"]) == list(expected["compound"])
    assert [list(m) for m in derived["moa"]] == list(expected["moas"])
    path = tmp_path / "usable_moa_metadata.csv"
    expected.assign(moas=expected["moas"].map(str)).to_csv(path, index=False)  # "['moa1', 'moa3']" literals
    assert pd.read_csv(path)["moas"].iloc[0].startswith("['")
    from_csv = evaluate_profiles(ours[0], design={"moa_table": str(path), "null_size": 10})
    pd.testing.assert_frame_equal(from_csv["moa_nn"], ours[1]["moa_nn"])
    assert list(from_csv["moa_map"]["moa"]) == list(ours[1]["moa_map"]["moa"])


def test_negative_controls_kept_in_the_pool_on_request(ours):
    processed = ours[0][ours[0].obs["cell_type"] == "A549"].copy()
    dropped = evaluate_profiles(processed, design={"null_size": 10})
    kept = evaluate_profiles(processed, design={"null_size": 10, "negcon_in_pool": True})
    assert len(kept["replicate_ap"]) == len(dropped["replicate_ap"])  # still never queries
    extra = kept["replicate_ap"]["n_total_pairs"] - dropped["replicate_ap"]["n_total_pairs"]
    assert (extra == 8).all()  # the 8 DMSO wells of the query's plate joined its negatives
    assert (kept["moa_ap"]["n_total_pairs"] > dropped["moa_ap"]["n_total_pairs"]).all()
    assert (kept["compound_nn"]["n_queries"] == dropped["compound_nn"]["n_queries"]).all()
    assert (kept["compound_nn"]["accuracy"] <= dropped["compound_nn"]["accuracy"] + 1e-12).all()


def test_same_profiles_same_bytes(ours, tmp_path):
    evaluate_profiles(ours[0], tmp_path / "a", design={"null_size": 100})
    evaluate_profiles(ours[0], tmp_path / "b", design=EvaluationDesign(null_size=100))
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["compound_nn.csv", "moa_ap.csv", "moa_map.csv", "moa_nn.csv", "replicate_ap.csv",
                     "replicate_map.csv", "summary.csv"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_design_errors(ours):
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['seeds'\]"):
        evaluate_profiles(ours[0], design={"seeds": 1})
    with pytest.raises(ConfigError, match="nn_match must be"):
        evaluate_profiles(ours[0], design={}, nn_match="all")
    with pytest.raises(ConfigError, match="unknown preset 'jump'"):
        evaluate_profiles(ours[0], preset="jump")
    with pytest.raises(ProfilingError, match=r"obs has no column\(s\) \['batch'\]"):
        evaluate_profiles(ours[0], design={"plate_col": "batch"})


def test_a_cell_type_is_evaluated_on_its_own_features(ours):
    """postprocess returns the union of the strata's features (NaN where a stratum dropped one);
    each cell type is evaluated on the features it has."""
    processed = ours[0].copy()
    a549 = (processed.obs["cell_type"] == "A549").to_numpy()
    processed.X[a549, 0] = np.nan
    tables = evaluate_profiles(processed, design={"null_size": 100})
    alone = processed[a549, 1:].copy()
    expected = evaluate_profiles(alone, design={"null_size": 100})
    got = tables["replicate_map"].query("cell_type == 'A549'").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected["replicate_map"])
    processed.X[np.flatnonzero(a549)[0], 1] = np.nan
    with pytest.raises(ProfilingError, match="cell type A549: profiles .* have missing feature values"):
        evaluate_profiles(processed, design={"null_size": 100})


def test_preset_front_ends_read_the_preset(monkeypatch, profiles, ours):
    """postprocess(preset=...) and evaluate_profiles(preset=...) take the chain and the design a
    preset holds under "postprocess" and "design"; keyword arguments override them."""
    from subcell_scale import presets

    monkeypatch.setitem(presets.PRESETS, "protocol-under-test",
                        {**presets.get_preset("jump-cellpainting"), "postprocess": CHAIN,
                         "design": {"null_size": 100, "nn_k": 5}})
    processed = postprocess(profiles, preset="protocol-under-test")
    np.testing.assert_array_equal(processed.X, ours[0].X)
    tables = evaluate_profiles(processed, preset="protocol-under-test", nn_match="any")
    assert list(tables["moa_nn"]["k"].unique()) == [1, 2, 3, 4, 5]
    expected = evaluate_profiles(processed, design={"null_size": 100, "nn_k": 5, "nn_match": "any"})
    pd.testing.assert_frame_equal(tables["summary"], expected["summary"])
