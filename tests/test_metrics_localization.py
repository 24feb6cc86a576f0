"""Localization, prediction and clustering evaluations against scikit-learn computed by hand."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from subcell_scale.errors import ConfigError, ProfilingError
from subcell_scale.metrics.localization import (
    clustering_scores,
    evaluate_localization,
    label_indicator,
    linear_probe,
    localization_scores,
    prediction_scores,
)

CLASSES = ["Nucleoplasm", "Mitochondria", "Cytosol", "Golgi apparatus", "Negative"]


@pytest.fixture(scope="module")
def cells():
    """120 cells in 12 images; each image has 1-2 true compartments; embeddings carry the signal."""
    rng = np.random.default_rng(0)
    n_img, per = 12, 10
    image_labels = [sorted(rng.choice(CLASSES[:4], size=rng.integers(1, 3), replace=False)) for _ in range(n_img)]
    centers = rng.normal(size=(4, 8)) * 3
    rows, x, probs = [], [], []
    for i, labels in enumerate(image_labels):
        truth = np.isin(CLASSES, labels)
        for c in range(per):
            rows.append(dict(plate="P0", well=f"B{i:02d}", field="0", label=c + 1, hpa="|".join(labels),
                             cell_line=["U2OS", "A549", "HeLa"][i % 3]))
            x.append(centers[truth[:4]].sum(axis=0) + rng.normal(size=8))
            probs.append(np.clip(truth * 0.6 + rng.uniform(0, 0.5, size=len(CLASSES)), 0, 1))
    obs = pd.DataFrame(rows, index=[f"c{i}" for i in range(len(rows))])
    adata = ad.AnnData(np.asarray(x, dtype=np.float32), obs=obs)
    adata.obsm["localization"] = np.asarray(probs)
    adata.uns["localization_classes"] = CLASSES
    return adata


def test_scores_are_sklearns(cells):
    truth = label_indicator(cells.obs["hpa"], CLASSES)
    scores = cells.obsm["localization"]
    out = localization_scores(truth, scores, classes=CLASSES, per_class=True).set_index("metric")["value"]
    present = truth.any(axis=0)
    assert out["micro_ap"] == pytest.approx(skm.average_precision_score(truth.ravel(), scores.ravel()))
    per_class = [skm.average_precision_score(truth[:, c], scores[:, c]) for c in np.flatnonzero(present)]
    assert out["macro_ap"] == pytest.approx(np.mean(per_class))
    assert out["ap:Mitochondria"] == pytest.approx(per_class[1])
    assert "ap:Negative" not in out  # no positive: AP undefined, left out of the macro average
    assert out["label_ranking_ap"] == pytest.approx(skm.label_ranking_average_precision_score(truth, scores))
    assert out["coverage_error"] == pytest.approx(skm.coverage_error(truth, scores))


def test_label_names_are_checked():
    assert label_indicator(["nucleoplasm|Cytosol", "", None], CLASSES).sum(axis=1).tolist() == [2, 0, 0]
    with pytest.raises(ProfilingError, match="Nucleus"):
        label_indicator(["Nucleus"], CLASSES)


def test_per_image_scores_average_cells(cells):
    out = evaluate_localization(cells, "hpa", groupby=["plate", "well", "field"]).set_index("metric")
    images = cells.obs.groupby("well", sort=True)
    mean_scores = np.vstack([cells.obsm["localization"][cells.obs_names.get_indexer(g.index)].mean(axis=0)
                             for _, g in images])
    truth = label_indicator([g["hpa"].iloc[0] for _, g in images], CLASSES)
    expected = skm.average_precision_score(truth, mean_scores, average="micro")
    assert out.loc["micro_ap", "value"] == pytest.approx(expected)
    assert out.loc["micro_ap", "n_samples"] == 12 and (out["level"] == "image").all()


def test_linear_probe_is_out_of_fold(cells):
    y = cells.obs["cell_line"].to_numpy()
    x = np.asarray(cells.X, dtype=np.float64)
    scores, classes = linear_probe(x, y, cv=3, seed=1)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    folds = StratifiedKFold(3, shuffle=True, random_state=1)
    expected = cross_val_predict(model, x, y, cv=folds, method="predict_proba")
    assert np.allclose(scores, expected) and list(classes) == ["A549", "HeLa", "U2OS"]
    out = prediction_scores(cells, "cell_line", cv=3, seed=1).set_index("metric")["value"]
    truth = y[:, None] == classes[None, :]
    assert out["macro_ap"] == pytest.approx(skm.average_precision_score(truth, expected, average="macro"))
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, classes[expected.argmax(axis=1)]))


@pytest.mark.slow
def test_probe_localization_learns_the_signal(cells):
    probe = evaluate_localization(cells, "hpa", probe=True, cv=3).set_index("metric")["value"]
    shuffled = cells.copy()
    shuffled.X = np.random.default_rng(1).permutation(np.asarray(cells.X))
    chance = evaluate_localization(shuffled, "hpa", probe=True, cv=3).set_index("metric")["value"]
    assert probe["macro_ap"] > 0.9 > chance["macro_ap"] + 0.2


def test_kmeans_clusters_of_separated_groups(cells):
    rng = np.random.default_rng(2)
    groups = np.repeat(["a", "b", "c"], 30)
    x = np.repeat(rng.normal(size=(3, 5)) * 10, 30, axis=0) + rng.normal(size=(90, 5))
    adata = ad.AnnData(x.astype(np.float32), obs=pd.DataFrame({"kind": groups}, index=[f"c{i}" for i in range(90)]))
    out = clustering_scores(adata, "kind", key_added="kmeans").set_index("metric")["value"]
    assert out["adjusted_rand_index"] == pytest.approx(1.0) and out["n_clusters"] == 3
    noisy = clustering_scores(cells, "cell_line", n_clusters=4, key_added="km").set_index("metric")["value"]
    c = cells.obs["km"].astype(str)
    assert noisy["v_measure"] == pytest.approx(skm.v_measure_score(cells.obs["cell_line"], c))
    assert noisy["fowlkes_mallows"] == pytest.approx(skm.fowlkes_mallows_score(cells.obs["cell_line"], c))


def test_leiden_needs_its_packages_or_runs(cells):
    try:
        import igraph  # noqa: F401
        import leidenalg  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="leidenalg"):
            clustering_scores(cells, "cell_line", method="leiden")
    else:
        out = clustering_scores(cells, "cell_line", method="leiden").set_index("metric")["value"]
        assert out["n_clusters"] >= 1


def test_missing_inputs(cells):
    with pytest.raises(ProfilingError, match="no 'localisation'"):
        evaluate_localization(cells, "hpa", key="localisation")
    with pytest.raises(ProfilingError, match="no label column"):
        evaluate_localization(cells, "nope")
