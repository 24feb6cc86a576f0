"""Average precision and mAP against copairs 0.5.5, sklearn, statsmodels and exact enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from _metrics_sim import cellprofiler_cells, simulated_profiles
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from subcell_scale.errors import ProfilingError
from subcell_scale.metrics import (
    assign_reference_index,
    average_precision,
    benjamini_hochberg,
    fraction_retrieved,
    mean_average_precision,
)
from subcell_scale.metrics._similarity import Similarity

copairs_map = pytest.importorskip("copairs.map")
copairs_multilabel = pytest.importorskip("copairs.map.multilabel")

TOL = 1e-9


@pytest.fixture(scope="module")
def profiles():
    meta, x = simulated_profiles()
    return meta, x


def _assert_same_ap(ours: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert list(ours.columns) == list(ref.columns)
    assert (ours["n_pos_pairs"].to_numpy() == ref["n_pos_pairs"].to_numpy()).all()
    assert (ours["n_total_pairs"].to_numpy() == ref["n_total_pairs"].to_numpy()).all()
    a, b = ours["average_precision"].to_numpy(), ref["average_precision"].to_numpy()
    assert (np.isnan(a) == np.isnan(b)).all()
    assert np.nanmax(np.abs(a - b)) < TOL
    na, nb = ours["normalized_average_precision"].to_numpy(), ref["normalized_average_precision"].to_numpy()
    assert np.nanmax(np.abs(na - nb)) < TOL


DESIGNS = {
    "replicate_vs_all": (["compound"], [], [], ["compound"]),
    "subcell_replicate": (["compound"], ["plate"], ["plate"], ["compound"]),
    "jump_nonrep": (["compound"], [], ["plate"], ["compound"]),
    "pairs_both_pos_and_neg": (["compound"], [], [], ["plate"]),
}


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("distance", ["cosine", "correlation", "euclidean"])
def test_ap_equals_copairs(profiles, design, distance):
    meta, x = profiles
    rules = DESIGNS[design]
    ours = average_precision(meta, x, *rules, distance=distance)
    ref = copairs_map.average_precision(meta, x, *rules, distance=distance, progress_bar=False)
    _assert_same_ap(ours, ref)
    assert ours["average_precision"].notna().sum() > 50


@pytest.mark.parametrize("distance", ["abs_cosine", "manhattan", "chebyshev", "braycurtis", "jaccard"])
def test_other_distances_equal_copairs(profiles, distance):
    meta, x = profiles
    x = np.round(x, 0) if distance == "jaccard" else x
    rules = DESIGNS["subcell_replicate"]
    _assert_same_ap(average_precision(meta, x, *rules, distance=distance),
                    copairs_map.average_precision(meta, x, *rules, distance=distance, progress_bar=False))


def test_callable_distance_equals_copairs(profiles):
    meta, x = profiles

    def neg_sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return -((a - b) ** 2).sum(axis=1)

    rules = DESIGNS["replicate_vs_all"]
    _assert_same_ap(average_precision(meta, x, *rules, distance=neg_sq_dist),
                    copairs_map.average_precision(meta, x, *rules, distance=neg_sq_dist, progress_bar=False))


def test_ties_and_many_positives_equal_copairs():
    """Coarse features make exact ties; big groups take the histogram path (more than 16 positives),
    on the CPU kernels and on the torch path."""
    rng = np.random.default_rng(3)
    meta = pd.DataFrame({"g": rng.integers(0, 5, 300).astype(str), "p": rng.integers(0, 3, 300).astype(str)})
    x = np.round(rng.normal(size=(300, 3)), 0)
    x[np.abs(x).sum(axis=1) == 0, 0] = 1.0
    for rules in [(["g"], [], [], ["g"]), (["g"], ["p"], ["p"], ["g"]), (["g"], [], [], ["p"])]:
        ref = copairs_map.average_precision(meta, x, *rules, progress_bar=False)
        for device in (None, "cpu"):
            ours = average_precision(meta, x, *rules, batch_size=5000, device=device)
            _assert_same_ap(ours, ref)
        assert ours["n_pos_pairs"].max() > 16


def test_phenotypic_activity_reference_index_equals_copairs(profiles):
    meta, x = profiles
    ref_meta = assign_reference_index(meta, "control_type == 'negcon'", reference_col="ref")
    assert (ref_meta.loc[meta.control_type == "negcon", "ref"] == ref_meta.index[meta.control_type == "negcon"]).all()
    rules = (["compound", "ref"], [], [], ["compound", "ref"])
    ours = average_precision(ref_meta, x, *rules)
    _assert_same_ap(ours, copairs_map.average_precision(ref_meta, x, *rules, progress_bar=False))
    treated = ours[ours.control_type == "trt"]
    # each treatment ranks its 2 replicates among all 24 controls
    assert (treated["n_pos_pairs"] == 2).all() and (treated["n_total_pairs"] == 26).all()
    assert ours.loc[ours.control_type == "negcon", "average_precision"].isna().all()


@pytest.mark.parametrize("rules", [(["g"], [], [], ["g"]), (["g"], ["p"], ["p"], ["g"]), (["g"], [], ["p"], []),
                                   (["g"], [], [], ["p", "b"]), (["g", "b"], [], ["b"], ["g"])])
@pytest.mark.parametrize("group_size", [4, 11])
def test_float32_ties_of_distinct_similarities_equal_copairs(rules, group_size):
    """Similarities a few float64 ulps apart share one float32 ranking key: negatives are counted against
    each positive's float64 threshold, which must split them exactly as copairs' float32 keys do."""
    rng = np.random.default_rng(group_size)
    n = 40 * group_size
    meta = pd.DataFrame({"g": np.repeat(np.arange(40), group_size).astype(str),
                         "p": rng.integers(0, 3, n).astype(str), "b": rng.integers(0, 2, n).astype(str)})
    base = rng.normal(size=(1, 8))
    x = base + rng.normal(size=(n, 8)) * 1e-4 + rng.integers(-3, 4, size=(n, 8)) * 1e-9
    ref = copairs_map.average_precision(meta, x, *rules, progress_bar=False)
    keys = np.float32(1) - np.float32(Similarity(x).block64(np.arange(n)))
    assert np.unique(keys).size < keys.size / 4  # the tie-heavy case
    _assert_same_ap(average_precision(meta, x, *rules, batch_size=997), ref)


@pytest.mark.parametrize("rules", [(["moa"], ["plate", "compound"], ["plate"], ["moa"]),
                                   (["moa"], ["compound"], [], ["moa"])])
def test_multilabel_equals_copairs(profiles, rules):
    meta, x = profiles
    keep = (meta["control_type"] == "trt").to_numpy()
    meta_l = meta[keep].reset_index(drop=True).assign(moa=lambda d: d["moa"].str.split("|"))
    x = x[keep]
    ref = copairs_multilabel.average_precision(meta_l, x, *rules, multilabel_col="moa", progress_bar=False)
    ours = average_precision(meta[keep].reset_index(drop=True), x, *rules, multilabel_col="moa")
    assert list(ours.columns) == list(ref.columns)
    assert len(ours) == len(ref) > 40
    merged = ours.merge(ref, on=["plate", "well", "moa"], suffixes=("", "_ref"))
    assert len(merged) == len(ref)
    for col in ("average_precision", "normalized_average_precision"):
        assert np.abs(merged[col] - merged[col + "_ref"]).max() < TOL
    for col in ("n_pos_pairs", "n_total_pairs"):
        assert (merged[col] == merged[col + "_ref"]).all()


def _multilabel_by_brute_force(meta: pd.DataFrame, x: np.ndarray, rules, label_col: str) -> pd.DataFrame:
    """Every (query, label) pair's positives and negatives listed one by one, ranked by copairs' float32 keys."""
    pos_same, pos_diff, neg_same, neg_diff = rules
    keys = np.float32(1) - np.float32(Similarity(x).block64(np.arange(len(meta))))
    labels = [set(v) for v in meta[label_col]]

    def rule(i, j, same, diff):
        return (all(meta[c].iat[i] == meta[c].iat[j] for c in same if c != label_col)
                and all(meta[c].iat[i] != meta[c].iat[j] for c in diff if c != label_col))

    out = []
    for i in range(len(meta)):
        neg = [j for j in range(len(meta)) if j != i and rule(i, j, neg_same, neg_diff)
               and (label_col not in neg_same or labels[i] & labels[j])
               and (label_col not in neg_diff or not labels[i] & labels[j])]
        for lab in sorted(labels[i]):
            pos = [j for j in range(len(meta)) if j != i and lab in labels[j] and rule(i, j, pos_same, pos_diff)]
            if pos:
                ranked = np.sort(keys[i, pos])
                above = [(keys[i, neg] < k).sum() for k in ranked]
                ap = np.mean([(t + 1) / (t + 1 + a) for t, a in enumerate(above)])
                out.append((i, lab, ap, len(pos), len(pos) + len(neg)))
    return pd.DataFrame(out, columns=["row", label_col, "average_precision", "n_pos_pairs", "n_total_pairs"])


@pytest.mark.parametrize("rules", [(["moa", "plate"], ["compound"], [], ["moa"]),
                                   (["moa"], ["compound"], ["moa"], []),
                                   (["moa"], ["compound"], ["plate", "moa"], ["compound"]),
                                   (["moa"], [], ["plate"], ["compound", "b"])])
def test_multilabel_from_label_lists_equals_copairs_and_brute_force(rules):
    """Overlapping label lists, rows without a label and exact ties; labels in neg_sameby (negatives share
    one) or in no negative rule, which copairs cannot run, against a pair-by-pair reference."""
    rng = np.random.default_rng(5)
    n = 150
    labels = [list(rng.choice(list("abcdef"), size=rng.integers(0 if r % 10 else 1, 4), replace=False))
              for r in range(n)]
    meta = pd.DataFrame({"moa": labels, "plate": rng.integers(0, 3, n).astype(str),
                         "compound": rng.integers(0, 40, n).astype(str), "b": rng.integers(0, 2, n).astype(str)})
    x = np.round(rng.normal(size=(n, 4)), 1)
    ours = average_precision(meta.assign(row=np.arange(n)), x, *rules, multilabel_col="moa", batch_size=1000)
    ref = _multilabel_by_brute_force(meta, x, rules, "moa")
    assert len(ours) == len(ref) > 100
    merged = ours.merge(ref, on=["row", "moa"], suffixes=("", "_ref"))
    assert len(merged) == len(ref)
    for col in ("n_pos_pairs", "n_total_pairs"):
        assert (merged[col] == merged[col + "_ref"]).all()
    assert np.abs(merged["average_precision"] - merged["average_precision_ref"]).max() < TOL
    if "moa" in rules[3]:  # copairs takes labelled rows only
        keep = np.array([len(v) > 0 for v in labels])
        labelled = meta[keep].assign(row=np.flatnonzero(keep)).reset_index(drop=True)
        cp = copairs_multilabel.average_precision(labelled, x[keep], *rules, multilabel_col="moa", progress_bar=False)
        both = cp.merge(average_precision(labelled, x[keep], *rules, multilabel_col="moa"), on=["row", "moa"],
                        suffixes=("", "_ours"))
        assert len(both) == len(cp)
        assert np.abs(both["average_precision"] - both["average_precision_ours"]).max() < TOL


def test_ap_equals_sklearn_without_ties():
    """The copairs definition is sklearn's average precision of the query's ranked list."""
    rng = np.random.default_rng(5)
    meta = pd.DataFrame({"g": rng.integers(0, 6, 60).astype(str)})
    x = rng.normal(size=(60, 7))
    ours = average_precision(meta, x, ["g"], [], [], ["g"])
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = (xn @ xn.T).astype(np.float32)
    for i in range(60):
        others = np.arange(60) != i
        relevant = (meta.g.to_numpy() == meta.g[i])[others]
        if relevant.any():
            expected = average_precision_score(relevant, sims[i, others])
            assert abs(ours.average_precision[i] - expected) < TOL


def test_real_cellprofiler_features_equal_copairs():
    meta, x = cellprofiler_cells()
    meta = meta.assign(group=["a", "a", "b", "b", "a"], batch=["x", "y", "x", "y", "y"])
    for distance in ("cosine", "correlation", "euclidean"):
        for rules in [(["group"], [], [], ["group"]), (["group"], [], [], ["batch"])]:
            _assert_same_ap(average_precision(meta, x, *rules, distance=distance),
                            copairs_map.average_precision(meta, x, *rules, distance=distance, progress_bar=False))


def test_query_entries_select_rows(profiles):
    """A query in a rule list keeps matching profiles only (copairs 0.5.5 raises on a row-count mismatch)."""
    meta, x = profiles
    ours = average_precision(meta, x, ["compound", "control_type != 'negcon'"], [], [], ["compound"])
    keep = (meta.control_type != "negcon").to_numpy()
    ref = copairs_map.average_precision(meta[keep].reset_index(drop=True), x[keep], ["compound"], [], [],
                                        ["compound"], progress_bar=False)
    _assert_same_ap(ours, ref)


@pytest.mark.parametrize("null_size", [500, 4000])
def test_map_and_p_values_identical_to_copairs(profiles, tmp_path, null_size):
    meta, x = profiles
    for rules, sameby in [(DESIGNS["subcell_replicate"], ["compound"]), (DESIGNS["jump_nonrep"], ["compound"])]:
        ap = copairs_map.average_precision(meta, x, *rules, progress_bar=False)
        ref = copairs_map.mean_average_precision(ap, sameby, null_size, 0.05, 7, progress_bar=False,
                                                 cache_dir=tmp_path / f"c{null_size}{rules[2]}")
        ours = mean_average_precision(average_precision(meta, x, *rules), sameby, null_size, 0.05, 7)
        assert list(ours.columns) == list(ref.columns)
        assert (ours["compound"] == ref["compound"]).all()
        assert np.abs(ours["mean_average_precision"] - ref["mean_average_precision"]).max() < TOL
        assert (ours["p_value"].to_numpy() == ref["p_value"].to_numpy()).all()
        assert np.abs(ours["corrected_p_value"] - ref["corrected_p_value"]).max() < 1e-12
        assert (ours["below_corrected_p"] == ref["below_corrected_p"]).all()
        assert (ours["indices"] == ref["indices"]).all()
        assert ours["p_value"].min() < 0.01 and ours["p_value"].max() > 0.5


def test_multilabel_map_identical_to_copairs(profiles, tmp_path):
    meta, x = profiles
    keep = (meta["control_type"] == "trt").to_numpy()
    rules = (["moa"], ["plate", "compound"], ["plate"], ["moa"])
    meta_l = meta[keep].reset_index(drop=True).assign(moa=lambda d: d["moa"].str.split("|"))
    ap_ref = copairs_multilabel.average_precision(meta_l, x[keep], *rules, multilabel_col="moa", progress_bar=False)
    ref = copairs_map.mean_average_precision(ap_ref, ["moa"], 2000, 0.05, 0, progress_bar=False, cache_dir=tmp_path)
    ap = average_precision(meta[keep], x[keep], *rules, multilabel_col="moa")
    ours = mean_average_precision(ap, ["moa"], 2000, 0.05, 0)
    assert np.abs(ours["mean_average_precision"] - ref["mean_average_precision"]).max() < TOL
    assert (ours["p_value"].to_numpy() == ref["p_value"].to_numpy()).all()


def test_null_cache_is_reused_and_keyed_by_config_seed(profiles, tmp_path):
    meta, x = profiles
    ap = average_precision(meta, x, *DESIGNS["subcell_replicate"])
    first = mean_average_precision(ap, ["compound"], 300, 0.05, 1, cache_dir=tmp_path)
    files = sorted(tmp_path.rglob("*.npy"))
    assert files
    again = mean_average_precision(ap, ["compound"], 300, 0.05, 1, cache_dir=tmp_path)
    assert (first["p_value"] == again["p_value"]).all()
    assert sorted(tmp_path.rglob("*.npy")) == files


def test_benjamini_hochberg_equals_statsmodels():
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    rng = np.random.default_rng(0)
    for p in (rng.uniform(size=50), np.r_[rng.uniform(0, 0.01, 10), rng.uniform(size=30), [0.5, 0.5, 0.5]],
              np.array([0.01])):
        assert np.abs(benjamini_hochberg(p) - multipletests(p, method="fdr_bh")[1]).max() < 1e-12


def _enumerated_p(n_pos: int, n_total: int, score: float) -> float:
    """Brute force: AP of every placement of the positives, via sklearn, P(AP >= score)."""
    values = []
    for placed in itertools.combinations(range(n_total), n_pos):
        relevant = np.zeros(n_total, dtype=int)
        relevant[list(placed)] = 1
        values.append(average_precision_score(relevant, -np.arange(n_total)))
    values = np.asarray(values)
    return float((values >= score - 1e-12).mean())


def test_exact_p_values_against_enumeration_and_copairs(tmp_path):
    # 2 positives among 9 (36 rank orders), one group per compound: exact p is enumerable
    rng = np.random.default_rng(11)
    n_cmp = 12
    meta = pd.DataFrame({"compound": np.repeat([f"c{i}" for i in range(n_cmp)], 3)})
    x = rng.normal(size=(len(meta), 5))
    x[: 9] += 3 * rng.normal(size=5)  # three compounds share a strong signal direction
    x[: 3] += 4 * rng.normal(size=5)
    control = pd.DataFrame({"compound": ["dmso"] * 7})
    meta = pd.concat([meta, control], ignore_index=True)
    x = np.vstack([x, rng.normal(size=(7, 5))])
    meta = assign_reference_index(meta, "compound == 'dmso'", reference_col="ref")
    ap = average_precision(meta, x, ["compound", "ref"], [], [], ["compound", "ref"])
    exact = mean_average_precision(ap, ["compound"], 20000, 0.05, 0, exact=True)
    assert (exact["p_value_method"] == "exact").all()
    for _, row in exact.iterrows():
        members = ap.loc[ap.compound == row.compound].dropna(subset=["average_precision"])
        m, total = int(members.n_pos_pairs.iloc[0]), int(members.n_total_pairs.iloc[0])
        assert (m, total) == (2, 9)
        assert abs(row.p_value - _enumerated_p(m, total, row.mean_average_precision)) < 1e-12
    # copairs' Monte-Carlo p counts null > mAP: it lies between P(null > mAP) and P(null >= mAP),
    # up to Monte-Carlo error (4 standard errors of a proportion with n = 20000)
    ref = copairs_map.mean_average_precision(ap, ["compound"], 20000, 0.05, 0, progress_bar=False, cache_dir=tmp_path)
    values = np.sort([average_precision_score(np.isin(np.arange(9), c).astype(int), -np.arange(9))
                      for c in itertools.combinations(range(9), 2)])
    for (_, e), (_, r) in zip(exact.iterrows(), ref.iterrows()):
        strictly = float((values > e.mean_average_precision + 1e-12).mean())
        bound = 4 * math.sqrt(max(e.p_value * (1 - e.p_value), 1 / 36) / 20000) + 1 / 20001
        assert strictly - bound <= r.p_value <= e.p_value + bound
    auto = mean_average_precision(ap, ["compound"], 20, 0.05, 0, exact="auto")
    assert (auto["p_value_method"] == "permutation").all()  # comb(9, 2) = 36 > null_size 20
    auto = mean_average_precision(ap, ["compound"], 36, 0.05, 0, exact="auto")
    assert (auto["p_value"] == exact["p_value"]).all()
    assert fraction_retrieved(exact) == pytest.approx(exact["below_corrected_p"].mean())


def test_bad_inputs_name_the_problem(profiles):
    meta, x = profiles
    with pytest.raises(ProfilingError, match="'plate' has 1 missing"):
        average_precision(meta.assign(plate=meta.plate.where(meta.index != 4)), x, ["compound"], [], [], ["plate"])
    with pytest.raises(ProfilingError, match="96 rows but feats has shape"):
        average_precision(meta, x[:-1], ["compound"], [], [], ["compound"])
    with pytest.raises(ProfilingError, match="'nope' is neither a metadata column"):
        average_precision(meta, x, ["nope"], [], [], ["compound"])
    with pytest.raises(ProfilingError, match="no positive pairs"):
        average_precision(meta, x, ["plate", "well"], [], [], ["compound"])
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ProfilingError, match="NaN or infinite values in 1 rows"):
        average_precision(meta, bad, ["compound"], [], [], ["compound"])
    with pytest.raises(ProfilingError, match="disjoint"):
        average_precision(meta, x, ["compound"], ["compound"], [], ["compound"])
    with pytest.raises(ProfilingError, match="unknown distance"):
        average_precision(meta, x, ["compound"], [], [], ["compound"], distance="nonsense")
    with pytest.raises(ProfilingError, match="all-zero"):
        average_precision(meta, np.vstack([np.zeros((1, x.shape[1])), x[1:]]), ["compound"], [], [], ["compound"])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 100.0))
def test_map_invariant_to_row_order_and_cosine_scaling(seed, scale):
    rng = np.random.default_rng(seed)
    n = 40
    meta = pd.DataFrame({"g": rng.integers(0, 6, n).astype(str), "p": rng.integers(0, 2, n).astype(str)})
    x = rng.normal(size=(n, 6))
    rules = (["g"], [], ["p"], ["g"])
    try:
        base = mean_average_precision(average_precision(meta, x, *rules), ["g"], 200, 0.05, 0)
    except ProfilingError:
        return  # a draw without any positive pair
    perm = rng.permutation(n)
    row_scale = scale * rng.uniform(0.5, 2.0, size=(n, 1))
    moved = mean_average_precision(average_precision(meta.iloc[perm], x[perm] * row_scale, *rules),
                                   ["g"], 200, 0.05, 0)
    assert (base["g"] == moved["g"]).all()
    assert np.abs(base["mean_average_precision"] - moved["mean_average_precision"]).max() < 1e-6


def test_block_size_does_not_change_results(profiles):
    meta, x = profiles
    whole = average_precision(meta, x, *DESIGNS["subcell_replicate"])
    for batch_size in (1, 500, 4000):
        blocked = average_precision(meta, x, *DESIGNS["subcell_replicate"], batch_size=batch_size,
                                    progress_bar=batch_size == 500)
        assert np.array_equal(whole["average_precision"].to_numpy(), blocked["average_precision"].to_numpy(),
                              equal_nan=True)
    rules = (["moa"], ["compound"], [], ["moa"])
    keep = (meta["control_type"] == "trt").to_numpy()
    one = average_precision(meta[keep], x[keep], *rules, multilabel_col="moa")
    small = average_precision(meta[keep], x[keep], *rules, multilabel_col="moa", batch_size=300)
    pd.testing.assert_frame_equal(one, small)


@pytest.mark.parametrize("design", DESIGNS)
def test_torch_path_on_cpu_equals_cpu_kernels_and_copairs(profiles, design):
    meta, x = profiles
    cpu = average_precision(meta, x, *DESIGNS[design])
    blocked = average_precision(meta, x, *DESIGNS[design], device="cpu", batch_size=30_000)
    pd.testing.assert_frame_equal(cpu.drop(columns="average_precision"), blocked.drop(columns="average_precision"),
                                  atol=1e-12, rtol=0)
    a, b = cpu["average_precision"].to_numpy(), blocked["average_precision"].to_numpy()
    assert (np.isnan(a) == np.isnan(b)).all() and np.nanmax(np.abs(a - b)) < 1e-12
    _assert_same_ap(blocked, copairs_map.average_precision(meta, x, *DESIGNS[design], progress_bar=False))


def test_threads_computing_at_once_get_the_results_of_one(profiles):
    """Sweeps from several threads at once (a notebook's pool, Dask threads); BLAS threads restored after."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_info

    before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    meta, x = profiles
    alone = average_precision(meta, x, *DESIGNS["subcell_replicate"], batch_size=2000)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: average_precision(meta, x, *DESIGNS["subcell_replicate"], batch_size=2000),
                                range(3)))
    for result in results:
        pd.testing.assert_frame_equal(result, alone)
    assert [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"] == before
