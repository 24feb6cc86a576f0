"""k-NN accuracy against a brute-force loop over queries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _metrics_sim import cellprofiler_cells, simulated_profiles

from subcell_scale.errors import ProfilingError
from subcell_scale.metrics import nn_accuracy


def _labels(v) -> set[str]:
    if isinstance(v, str):
        return {p for p in v.split("|") if p}
    return set(v)


def brute_force(meta, x, label_col, exclude, ks, mode="any", distance="cosine", match="any", count_all=False,
                queries=None):
    """One query at a time, straight from the definition."""
    labels = [_labels(v) for v in meta[label_col]]
    ordered = [tuple(v.split("|")) if isinstance(v, str) else tuple(v) for v in meta[label_col]]
    keep = [i for i, lab in enumerate(labels) if lab]

    def matches(i, j):
        return ordered[i] == ordered[j] if match == "identical" else bool(labels[i] & labels[j])

    if distance == "cosine":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        sims = xn @ xn.T
    else:
        sims = 1.0 / (1.0 + np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)))
    hits = dict.fromkeys(ks, 0)
    n_queries = excluded = 0
    for i in keep:
        if queries is not None and not queries[i]:
            continue
        neighbours = [j for j in keep if j != i and all(meta[c].iloc[j] != meta[c].iloc[i] for c in exclude)]
        if not count_all and not any(matches(i, j) for j in neighbours):
            excluded += 1
            continue
        n_queries += 1
        ranked = sorted(neighbours, key=lambda j: (-sims[i, j], j))
        for k in ks:
            top = ranked[:k]
            if mode == "any":
                hits[k] += any(matches(i, j) for j in top)
            else:
                votes: dict[str, tuple[int, int]] = {}
                for r, j in enumerate(top):
                    for lab in labels[j]:
                        count, first = votes.get(lab, (0, r))
                        votes[lab] = (count + 1, first)
                best = max((votes[lab][0], -votes[lab][1]) for lab in votes)
                predicted = {lab for lab in votes if (votes[lab][0], -votes[lab][1]) == best}
                hits[k] += bool(predicted & labels[i])
    return pd.DataFrame({"k": ks, "accuracy": [hits[k] / n_queries for k in ks], "n_queries": n_queries,
                         "n_hits": [hits[k] for k in ks], "n_excluded_queries": excluded})


@pytest.fixture(scope="module")
def profiles():
    return simulated_profiles(seed=4)


@pytest.mark.parametrize("exclude", [[], ["compound"], ["compound", "plate"], ["plate"]])
@pytest.mark.parametrize("mode", ["any", "vote"])
def test_nn_accuracy_equals_brute_force(profiles, exclude, mode):
    meta, x = profiles
    ks = [1, 2, 5, 20]
    ours = nn_accuracy(meta, x, "moa", exclude_sameby=exclude, k=ks, mode=mode, batch_size=500)
    ref = brute_force(meta, x, "moa", exclude, ks, mode=mode)
    pd.testing.assert_frame_equal(ours, ref, check_dtype=False)
    assert 0.3 < ours.loc[0, "accuracy"] < 1.0
    if mode == "any":
        assert ours["accuracy"].is_monotonic_increasing


@pytest.mark.parametrize("match", ["any", "identical"])
@pytest.mark.parametrize("count_all", [False, True])
def test_match_rules_query_rows_and_counting_equal_brute_force(profiles, match, count_all):
    """'identical': the neighbour's label list equals the query's (the SubCell JUMP benchmark's
    computation); count_all: queries that cannot be hit count as misses (its accuracy)."""
    meta, x = profiles
    queries = (np.arange(len(meta)) % 3 != 0) & (meta["control_type"] == "trt").to_numpy()
    ks = [1, 5, 20]
    ours = nn_accuracy(meta, x, "moa", ["compound", "plate"], k=ks, match=match, count_all_queries=count_all,
                       query_rows=queries, batch_size=300)
    ref = brute_force(meta, x, "moa", ["compound", "plate"], ks, match=match, count_all=count_all, queries=queries)
    pd.testing.assert_frame_equal(ours, ref, check_dtype=False)
    assert ours.loc[0, "n_queries"] <= queries.sum()
    if count_all:
        assert ours.loc[0, "n_queries"] == queries.sum() and ours.loc[0, "n_excluded_queries"] == 0


def test_identical_lists_are_stricter_than_a_shared_label(profiles):
    meta, x = profiles
    shared = nn_accuracy(meta, x, "moa", ["compound"], k=[1, 10], count_all_queries=True)
    identical = nn_accuracy(meta, x, "moa", ["compound"], k=[1, 10], match="identical", count_all_queries=True)
    assert (identical["n_hits"] < shared["n_hits"]).all()
    with pytest.raises(ProfilingError, match="match must be"):
        nn_accuracy(meta, x, "moa", k=1, match="identical", mode="vote")


def test_labels_as_lists_and_euclidean(profiles):
    meta, x = profiles
    as_lists = meta.assign(moa=meta["moa"].map(lambda s: [p for p in s.split("|") if p]))
    ours = nn_accuracy(as_lists, x, "moa", ["compound"], k=3, distance="euclidean")
    ref = brute_force(meta, x, "moa", ["compound"], [3], distance="euclidean")
    pd.testing.assert_frame_equal(ours, ref, check_dtype=False)


def test_queries_without_possible_hit_are_counted_not_scored():
    rng = np.random.default_rng(0)
    meta = pd.DataFrame({"compound": ["a", "a", "b", "c", "d", "e"], "moa": ["m1", "m1", "m1", "m2", "m3", "m3"]})
    x = rng.normal(size=(6, 4))
    out = nn_accuracy(meta, x, "moa", ["compound"], k=1)
    # "c" is the only m2 compound: no hit is possible for it
    assert out.loc[0, "n_excluded_queries"] == 1 and out.loc[0, "n_queries"] == 5


def test_real_cellprofiler_cells():
    meta, x = cellprofiler_cells()
    meta = meta.assign(label=["a", "b", "a", "b", "a"], group=["g1", "g1", "g2", "g2", "g3"])
    for exclude in ([], ["group"]):
        ours = nn_accuracy(meta, x, "label", exclude, k=[1, 2])
        pd.testing.assert_frame_equal(ours, brute_force(meta, x, "label", exclude, [1, 2]), check_dtype=False)


def test_bad_arguments():
    meta, x = simulated_profiles()
    with pytest.raises(ProfilingError, match="mode"):
        nn_accuracy(meta, x, "moa", mode="best")
    with pytest.raises(ProfilingError, match="k must be positive"):
        nn_accuracy(meta, x, "moa", k=0)
    with pytest.raises(ProfilingError, match="no query has an allowed neighbour"):
        nn_accuracy(meta, x, "compound", ["compound"])


@pytest.mark.parametrize("match", ["any", "identical"])
def test_torch_path_on_cpu_equals_cpu_kernels_and_brute_force(profiles, match):
    meta, x = profiles
    ks = [1, 3, 10]
    cpu = nn_accuracy(meta, x, "moa", ["compound"], k=ks, match=match)
    blocked = nn_accuracy(meta, x, "moa", ["compound"], k=ks, match=match, device="cpu", batch_size=20_000)
    pd.testing.assert_frame_equal(cpu, blocked)
    pd.testing.assert_frame_equal(cpu, brute_force(meta, x, "moa", ["compound"], ks, match=match),
                                  check_dtype=False)


def test_one_sweep_gives_replicate_ap_and_nn_as_apart(profiles):
    """AP and k-NN of the same profiles from one product per block equal the separate calls."""
    from subcell_scale.metrics import average_precision
    from subcell_scale.metrics._joint import ap_and_nn

    meta, x = profiles
    rules = {"pos_sameby": ["compound"], "pos_diffby": ["plate"], "neg_sameby": ["plate"], "neg_diffby": ["compound"]}
    queries = (meta["control_type"] == "trt").to_numpy()
    ks = list(range(1, 51))
    joint = ap_and_nn(meta, x, rules, "compound", ["plate"], ks, query_rows=queries, count_all_queries=True)
    pd.testing.assert_frame_equal(joint.ap(), average_precision(meta, x, **rules))
    apart = nn_accuracy(meta, x, "compound", ["plate"], k=ks, query_rows=queries, count_all_queries=True)
    pd.testing.assert_frame_equal(joint.nn(), apart)
    ref = brute_force(meta, x, "compound", ["plate"], [1, 5, 50], count_all=True, queries=queries)
    pd.testing.assert_frame_equal(apart[apart["k"].isin([1, 5, 50])].reset_index(drop=True), ref, check_dtype=False)
    labelled_apart = meta.assign(compound=meta["compound"].where(np.arange(len(meta)) % 5 != 0, ""))
    assert ap_and_nn(labelled_apart, x, rules, "compound", ["plate"], ks) is None


@pytest.mark.parametrize("kmax", [1, 7, 50])
def test_nearest_kernel_keeps_ties_in_index_order(kmax):
    """Coarse features make many equal similarities: the k best allowed profiles, ties to the lower index."""
    from subcell_scale.metrics._similarity import Similarity
    from subcell_scale.metrics._sweep import NearestTask, sweep

    rng = np.random.default_rng(kmax)
    n = 300
    x = np.round(rng.normal(size=(n, 3)))
    x[np.abs(x).sum(axis=1) == 0, 0] = 1.0
    plate = rng.integers(0, 4, n).astype(np.int32)
    labels = rng.integers(0, 30, n).astype(np.int64)
    task = NearestTask.of(plate[None, :], np.ones(n, dtype=bool), np.arange(n + 1, dtype=np.int64), labels, kmax)
    _, found = sweep(Similarity(x), np.arange(n), nearest=task, batch_size=n * 37)
    sims = Similarity(x).block64(np.arange(n))
    for i in range(n):
        allowed = np.flatnonzero((plate != plate[i]) & (np.arange(n) != i))
        order = allowed[np.lexsort((allowed, -sims[i, allowed]))][:kmax]
        assert found.nearest[i, : order.size].tolist() == order.tolist()
        assert found.possible[i] == bool((labels[allowed] == labels[i]).any())
        assert found.shares[i, : order.size].tolist() == (labels[order] == labels[i]).tolist()
