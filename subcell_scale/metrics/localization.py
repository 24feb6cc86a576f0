"""The SubCell paper's evaluations for users who have labels: localization, clustering, prediction.

- Localization: multi-label micro / macro average precision, label ranking average precision and
  coverage error of ``obsm["localization"]`` (the 31 class probabilities) or of a cross-validated
  linear probe on the embeddings, against per-cell labels or per-image labels (scores averaged
  over the cells of an image, labels united).
- Clustering: adjusted Rand index, v-measure and Fowlkes-Mallows score of k-means or leiden
  clusters of the embeddings against annotations.
- Prediction: a cross-validated linear probe predicting a cell line, perturbation or any obs
  column from the embeddings, scored by macro / micro AP (and accuracy).

Every number is a scikit-learn metric; this module only prepares labels, groups and folds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .._constants import Keys
from .._anndata import representation
from ..errors import ConfigError, ProfilingError
from ._pairs import parse_labels

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# labels and scores


def label_indicator(values: Sequence | pd.Series, classes: Sequence[str], *, sep: str = "|") -> np.ndarray:
    """(n, n_classes) bool matrix from per-row label lists or ``sep``-separated strings.

    Names are matched case-insensitively; a name that is not a class is an error (a typo would
    otherwise silently count as "no label").
    """
    index = {str(c).lower(): i for i, c in enumerate(classes)}
    rows = parse_labels(pd.Series(list(values)), sep)
    out = np.zeros((len(rows), len(classes)), dtype=bool)
    unknown: set[str] = set()
    for r, labels in enumerate(rows):
        for name in labels:
            i = index.get(name.lower())
            if i is None:
                unknown.add(name)
            else:
                out[r, i] = True
    if unknown:
        shown = ", ".join(map(str, classes[:8]))
        msg = f"labels {sorted(unknown)[:10]} are not among the {len(classes)} classes ({shown}, ...)"
        raise ProfilingError(msg)
    return out


def localization_scores(y_true: np.ndarray, y_score: np.ndarray, *, classes: Sequence[str] | None = None,
                        per_class: bool = False) -> pd.DataFrame:
    """Multi-label ranking scores of predicted class scores against a true label indicator.

    Rows without any true label are left out (they carry no truth). Macro AP averages over the
    classes that have at least one positive (AP is undefined for the others).

    Returns
    -------
    pandas.DataFrame
        Rows ``micro_ap``, ``macro_ap``, ``label_ranking_ap``, ``coverage_error`` with columns
        ``metric``, ``value``, ``n_samples``, ``n_classes`` (classes with a positive); with
        ``per_class=True`` also one ``ap:<class>`` row per such class.
    """
    from sklearn import metrics as skm

    y_true = np.asarray(y_true, dtype=bool)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape or y_true.ndim != 2:
        msg = f"labels {y_true.shape} and scores {y_score.shape} must be (samples, classes) of the same shape"
        raise ProfilingError(msg)
    if not np.isfinite(y_score).all():
        msg = "scores contain NaN or infinite values"
        raise ProfilingError(msg)
    has_label = y_true.any(axis=1)
    y_true, y_score = y_true[has_label], y_score[has_label]
    if y_true.shape[0] == 0:
        msg = "no sample has a true label"
        raise ProfilingError(msg)
    present = y_true.any(axis=0)
    names = list(classes) if classes is not None else [str(i) for i in range(y_true.shape[1])]
    rows = [
        ("micro_ap", skm.average_precision_score(y_true, y_score, average="micro")),
        ("macro_ap", skm.average_precision_score(y_true[:, present], y_score[:, present], average="macro")),
        ("label_ranking_ap", skm.label_ranking_average_precision_score(y_true, y_score)),
        ("coverage_error", skm.coverage_error(y_true, y_score)),
    ]
    if per_class:
        rows += [(f"ap:{names[c]}", skm.average_precision_score(y_true[:, c], y_score[:, c]))
                 for c in np.flatnonzero(present)]
    out = pd.DataFrame(rows, columns=["metric", "value"])
    out["n_samples"] = int(y_true.shape[0])
    out["n_classes"] = int(present.sum())
    return out


def _group_rows(obs: pd.DataFrame, groupby: str | Sequence[str] | None) -> tuple[np.ndarray, int]:
    if groupby is None:
        return np.arange(len(obs)), len(obs)
    cols = [groupby] if isinstance(groupby, str) else list(groupby)
    missing = [c for c in cols if c not in obs.columns]
    if missing:
        msg = f"adata.obs has no column(s) {missing} to group cells into images"
        raise ProfilingError(msg)
    codes = obs[cols].groupby(cols, sort=True, observed=True, dropna=False).ngroup().to_numpy()
    return codes, int(codes.max()) + 1


def _pool(values: np.ndarray, codes: np.ndarray, n_groups: int, how: Literal["mean", "any"]) -> np.ndarray:
    out = np.zeros((n_groups, values.shape[1]))
    np.add.at(out, codes, values.astype(np.float64))
    if how == "any":
        return out > 0
    return out / np.bincount(codes, minlength=n_groups)[:, None]


# --------------------------------------------------------------------------------------------
# linear probe


def linear_probe(x: np.ndarray, y: np.ndarray, *, cv: int = 5, groups: np.ndarray | None = None, seed: int = 0,
                 C: float = 1.0, max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold class probabilities of a standardized logistic-regression probe.

    ``y`` is a 1-D array of class labels (one class per sample: multinomial, stratified folds) or
    a 2-D indicator (multi-label: one-vs-rest). ``groups`` keeps every group in one fold (e.g.
    plates or images), so the probe is never tested on cells it saw the siblings of.

    Returns
    -------
    scores, classes
        (n_samples, n_classes) out-of-fold probabilities and the class order of their columns.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold, cross_val_predict
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    if len(x) != len(y):
        msg = f"{len(x)} samples but {len(y)} labels"
        raise ProfilingError(msg)
    multilabel = y.ndim == 2
    base = LogisticRegression(C=C, max_iter=max_iter)
    model = make_pipeline(StandardScaler(), OneVsRestClassifier(base) if multilabel else base)
    if groups is not None:
        folds = GroupKFold(n_splits=cv)
    elif multilabel:
        folds = KFold(n_splits=cv, shuffle=True, random_state=seed)
    else:
        counts = pd.Series(y).value_counts()
        if counts.min() < cv:
            msg = (f"class {counts.idxmin()!r} has {counts.min()} samples, fewer than cv={cv} folds; "
                   "lower cv or drop rare classes")
            raise ProfilingError(msg)
        folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    if multilabel:
        classes = np.arange(y.shape[1])
    else:
        classes = np.unique(y)
    scores = cross_val_predict(model, x, y, cv=folds, groups=groups, method="predict_proba")
    return np.asarray(scores), classes


# --------------------------------------------------------------------------------------------
# AnnData-level evaluations


def evaluate_localization(
    adata: AnnData,
    labels: str | np.ndarray | pd.DataFrame,
    *,
    key: str = Keys.LOCALIZATION,
    classes: Sequence[str] | None = None,
    groupby: str | Sequence[str] | None = None,
    probe: bool = False,
    use_rep: str | None = None,
    cv: int = 5,
    seed: int = 0,
    per_class: bool = False,
) -> pd.DataFrame:
    """Localization scores of the predicted probabilities (or a linear probe) against known labels.

    Parameters
    ----------
    labels
        An obs column of per-cell (or per-image) class names (lists or ``"|"``-separated, e.g. the
        HPA annotation ``"Nucleoplasm|Mitochondria"``), or an (n_obs, n_classes) indicator.
    key
        obsm key of the predicted probabilities; column order ``uns["localization_classes"]``.
    classes
        Class names; default ``uns["localization_classes"]``, else the labels' own names.
    groupby
        obs columns naming an image (e.g. ``["plate", "well", "field"]``) when labels are per image:
        cell scores are averaged and labels united per image before scoring.
    probe
        Score a cross-validated logistic-regression probe on ``X`` (or ``obsm[use_rep]``) instead of
        the model's probabilities, as the paper does for embeddings. Folds keep images together
        when ``groupby`` is given.
    """
    obs = adata.obs
    if classes is None:
        classes = adata.uns.get(Keys.LOCALIZATION_CLASSES)
    if isinstance(labels, str):
        if labels not in obs.columns:
            msg = f"adata.obs has no label column {labels!r}"
            raise ProfilingError(msg)
        if classes is None:
            classes = sorted({x for row in parse_labels(obs[labels]) for x in row})
        y_true = label_indicator(obs[labels], list(classes))
    else:
        y_true = np.asarray(labels, dtype=bool)
        if classes is None:
            classes = (list(labels.columns) if isinstance(labels, pd.DataFrame)
                       else [str(i) for i in range(y_true.shape[1])])
    classes = [str(c) for c in classes]
    if y_true.shape != (adata.n_obs, len(classes)):
        msg = f"labels have shape {y_true.shape}, expected ({adata.n_obs}, {len(classes)}) for {len(classes)} classes"
        raise ProfilingError(msg)
    codes, n_groups = _group_rows(obs, groupby)
    if probe:
        labelled = y_true.any(axis=1)
        x = representation(adata, use_rep)[labelled]
        keep = y_true[labelled].any(axis=0)
        groups = codes[labelled] if groupby is not None else None
        scores = np.zeros(y_true.shape)
        oof, _ = linear_probe(x, y_true[labelled][:, keep].astype(int), cv=cv, groups=groups, seed=seed)
        scores[np.ix_(labelled, keep)] = oof
        y_true = y_true.copy()
        y_true[:, ~keep] = False
    else:
        if key not in adata.obsm:
            msg = f"adata.obsm has no {key!r} probabilities; run the model with classifiers or use probe=True"
            raise ProfilingError(msg)
        scores = np.asarray(adata.obsm[key], dtype=np.float64)
        if scores.shape[1] != len(classes):
            msg = f"obsm[{key!r}] has {scores.shape[1]} columns but there are {len(classes)} classes"
            raise ProfilingError(msg)
    if groupby is not None:
        scores = _pool(scores, codes, n_groups, "mean")
        y_true = _pool(y_true, codes, n_groups, "any")
    out = localization_scores(y_true, scores, classes=classes, per_class=per_class)
    out.insert(0, "source", "probe" if probe else key)
    out.insert(1, "level", "cell" if groupby is None else "image")
    return out


def prediction_scores(
    adata: AnnData,
    label_col: str,
    *,
    use_rep: str | None = None,
    group_col: str | None = None,
    cv: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """How well a linear probe on the embeddings predicts ``label_col`` (cell line, perturbation, ...).

    Out-of-fold probabilities of :func:`linear_probe` scored by macro and micro AP (one-vs-rest)
    and accuracy. ``group_col`` (e.g. ``"plate"`` or ``"well"``) keeps its groups within one fold.
    """
    from sklearn import metrics as skm

    if label_col not in adata.obs.columns:
        msg = f"adata.obs has no column {label_col!r}"
        raise ProfilingError(msg)
    y = adata.obs[label_col].astype(str).to_numpy()
    groups = None if group_col is None else adata.obs[group_col].astype(str).to_numpy()
    scores, classes = linear_probe(representation(adata, use_rep), y, cv=cv, groups=groups, seed=seed)
    truth = y[:, None] == classes[None, :]
    rows = [
        ("macro_ap", skm.average_precision_score(truth, scores, average="macro")),
        ("micro_ap", skm.average_precision_score(truth, scores, average="micro")),
        ("accuracy", skm.accuracy_score(y, classes[np.argmax(scores, axis=1)])),
    ]
    out = pd.DataFrame(rows, columns=["metric", "value"])
    out.insert(0, "label", label_col)
    out["n_samples"] = len(y)
    out["n_classes"] = len(classes)
    return out


def clustering_scores(
    adata: AnnData,
    label_col: str,
    *,
    method: Literal["kmeans", "leiden"] = "kmeans",
    n_clusters: int | None = None,
    resolution: float = 1.0,
    n_neighbors: int = 15,
    use_rep: str | None = None,
    seed: int = 0,
    key_added: str | None = None,
) -> pd.DataFrame:
    """Agreement of unsupervised clusters of the embeddings with an annotation.

    ``method="kmeans"`` uses scikit-learn with ``n_clusters`` (default: the number of annotated
    classes); ``"leiden"`` uses scanpy's neighbours graph and leiden (needs ``igraph`` and
    ``leidenalg``). Cells without an annotation are clustered but not scored. With
    ``key_added`` the cluster labels are stored in ``adata.obs[key_added]``.

    Returns
    -------
    pandas.DataFrame
        Rows ``adjusted_rand_index``, ``v_measure``, ``fowlkes_mallows`` and ``n_clusters``.
    """
    from sklearn import metrics as skm

    if label_col not in adata.obs.columns:
        msg = f"adata.obs has no column {label_col!r}"
        raise ProfilingError(msg)
    truth = adata.obs[label_col]
    annotated = truth.notna().to_numpy() & (truth.astype(str) != "").to_numpy()
    x = representation(adata, use_rep)
    if method == "kmeans":
        from sklearn.cluster import KMeans

        k = n_clusters or int(truth[annotated].nunique())
        clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    elif method == "leiden":
        clusters = _leiden(x, resolution=resolution, n_neighbors=n_neighbors, seed=seed)
    else:
        msg = f"method must be 'kmeans' or 'leiden', got {method!r}"
        raise ConfigError(msg)
    if key_added is not None:
        adata.obs[key_added] = pd.Categorical(clusters.astype(str))
    t = truth[annotated].astype(str).to_numpy()
    c = clusters[annotated]
    rows = [
        ("adjusted_rand_index", skm.adjusted_rand_score(t, c)),
        ("v_measure", skm.v_measure_score(t, c)),
        ("fowlkes_mallows", skm.fowlkes_mallows_score(t, c)),
        ("n_clusters", float(len(np.unique(clusters)))),
    ]
    out = pd.DataFrame(rows, columns=["metric", "value"])
    out.insert(0, "method", method)
    out["n_samples"] = int(annotated.sum())
    return out


def _leiden(x: np.ndarray, *, resolution: float, n_neighbors: int, seed: int) -> np.ndarray:
    try:
        import igraph  # noqa: F401
        import leidenalg  # noqa: F401
    except ImportError as exc:
        msg = ("leiden clustering needs the igraph and leidenalg packages (pip install igraph leidenalg); "
               "or use method='kmeans'")
        raise ConfigError(msg) from exc
    import anndata
    import scanpy as sc

    tmp = anndata.AnnData(x.astype(np.float32))
    sc.pp.neighbors(tmp, n_neighbors=n_neighbors, use_rep="X", random_state=seed)
    sc.tl.leiden(tmp, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2, directed=False)
    return tmp.obs["leiden"].astype(int).to_numpy()
