"""The SubCell JUMP benchmark's post-processing and evaluation, re-expressed for tests as an oracle.

Follows zwefers/subcell_jump_analysis step by step (see docs/protocols.md for file and line
references): ``utils/postprocess_utils.py`` (pycytominer calls per cell type: spherize fitted on the
DMSO wells, then standardize per plate on all wells, pieces concatenated plate by plate) and
``scripts/compute_map.py`` (DMSO dropped; copairs ``average_precision`` / multilabel /
``mean_average_precision`` called with the benchmark's pair rules; the k-NN loops: float32 cosine,
a same-plate (and same-compound) mask set to -inf, ``argpartition`` then ``argsort`` of the top
``max_k``, a query's match row built neighbour by neighbour, accuracy = mean over all queries of
"a match among the first k").

The sphering before pycytominer PR #748 is not installable here, so ``legacy_spherize`` computes it
from its documented formula: the SVD of the raw DMSO rows, applied to the standardised rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pycytominer
from copairs import map as cp_map
from copairs.map import multilabel as cp_multilabel
from sklearn.preprocessing import StandardScaler

META_COLS = ["plate", "well", "cell_type", "compound"]


def legacy_spherize(fit: np.ndarray | pd.DataFrame, profiles: np.ndarray | pd.DataFrame, method: str,
                    epsilon: float) -> np.ndarray:
    """pycytominer Spherize (center=True) before PR #748, for n > d: the whitening matrix from the SVD
    of the RAW reference rows, applied to the centred (-cor: standardised) rows."""
    fit, profiles = np.asarray(fit, dtype=np.float64), np.asarray(profiles, dtype=np.float64)
    scaler = StandardScaler(with_std=method.endswith("-cor")).fit(fit)
    n = fit.shape[0]
    _, sigma, vt = np.linalg.svd(fit, full_matrices=True)  # the raw rows: the old behaviour
    w = (vt / (sigma + epsilon)[:, None]).T * np.sqrt(n - 1)
    if method.startswith("ZCA"):
        w = w @ vt
    return scaler.transform(profiles) @ w


def postprocess(df: pd.DataFrame, features: list[str], *, variant: str) -> pd.DataFrame:
    """Per cell type: PCA-cor spherize on DMSO (eps 1e-6), then standardize per plate (samples='all')."""
    out = []
    for _, df_ct in df.groupby("cell_type"):
        df_ct = df_ct.reset_index(drop=True)
        if variant == "corrected":
            sph = pycytominer.normalize(profiles=df_ct, features=features, meta_features=META_COLS,
                                        samples="compound == 'DMSO'", method="spherize", spherize_method="PCA-cor",
                                        spherize_epsilon=1e-6)
        else:
            dmso = df_ct[df_ct["compound"] == "DMSO"][features]
            values = legacy_spherize(dmso, df_ct[features], "PCA-cor", 1e-6)
            pcs = pd.DataFrame(values, columns=[f"PC{i}" for i in range(1, len(features) + 1)])
            sph = pd.concat([df_ct[META_COLS], pcs], axis=1)
        pcs = [c for c in sph.columns if c not in META_COLS]
        pieces = [pycytominer.normalize(profiles=plate_df, features=pcs, meta_features=META_COLS, method="standardize",
                                        mad_robustize_epsilon=1e-18)
                  for _, plate_df in sph.groupby("plate")]
        out.append(pd.concat(pieces, ignore_index=True))
    return pd.concat(out, ignore_index=True)


def replicate_map(df: pd.DataFrame, feat_cols: list[str], null_size: int, seed: int) -> tuple[dict, pd.DataFrame]:
    ap = cp_map.average_precision(df[["plate", "well", "compound"]], df[feat_cols].to_numpy(),
                                  pos_sameby=["compound"], pos_diffby=["plate"], neg_sameby=["plate"],
                                  neg_diffby=["compound"], progress_bar=False)
    res = cp_map.mean_average_precision(ap, sameby=["compound"], null_size=null_size, threshold=0.05, seed=seed,
                                        progress_bar=False)
    return {"mAP": res["mean_average_precision"].mean(), "frac": res["below_corrected_p"].mean()}, res


def moa_map(df: pd.DataFrame, feat_cols: list[str], moa_table: pd.DataFrame, null_size: int,
            seed: int) -> tuple[dict, pd.DataFrame]:
    df_moa = df.merge(moa_table, on="compound", how="inner").reset_index(drop=True)
    ap = cp_multilabel.average_precision(df_moa[["plate", "well", "compound", "moas"]], df_moa[feat_cols].to_numpy(),
                                         pos_sameby=["moas"], pos_diffby=["plate", "compound"], neg_sameby=["plate"],
                                         neg_diffby=["moas"], multilabel_col="moas", progress_bar=False)
    res = cp_map.mean_average_precision(ap, sameby=["moas"], null_size=null_size, threshold=0.05, seed=seed,
                                        progress_bar=False)
    return {"mAP": res["mean_average_precision"].mean(), "frac": res["below_corrected_p"].mean()}, res


def _top_k(feats: np.ndarray, mask: np.ndarray, max_k: int) -> np.ndarray:
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    unit = feats / np.where(norms == 0, 1, norms)
    sim = unit @ unit.T
    sim[mask] = -np.inf
    top = np.argpartition(-sim, kth=max_k, axis=1)[:, :max_k]
    rows = np.arange(len(sim))[:, None]
    return top[rows, np.argsort(-sim[rows, top], axis=1)]


def _hit_rates(matches: np.ndarray, max_k: int) -> dict[int, float]:
    seen = np.zeros(matches.shape[0], dtype=bool)
    out = {}
    for k in range(1, max_k + 1):
        seen |= matches[:, k - 1]
        out[k] = float(seen.mean())
    return out


def compound_nn(df: pd.DataFrame, feat_cols: list[str], max_k: int) -> dict[int, float]:
    feats = df[feat_cols].to_numpy().astype(np.float32)
    plates, compounds = df["plate"].to_numpy(), df["compound"].to_numpy()
    top = _top_k(feats, plates[:, None] == plates[None, :], max_k)
    return _hit_rates(compounds[top] == compounds[:, None], max_k)


def moa_nn(df: pd.DataFrame, feat_cols: list[str], moa_table: pd.DataFrame, max_k: int) -> dict[int, float]:
    """``moas`` holding lists reproduces the benchmark (identical lists match); "|"-joined strings
    give the rule its docstring states (any shared MoA)."""
    df_moa = df.merge(moa_table, on="compound", how="inner").reset_index(drop=True)
    feats = df_moa[feat_cols].to_numpy().astype(np.float32)
    plates, compounds = df_moa["plate"].to_numpy(), df_moa["compound"].to_numpy()
    moa_sets = [set(str(m).split("|")) for m in df_moa["moas"].to_numpy()]
    mask = (plates[:, None] == plates[None, :]) | (compounds[:, None] == compounds[None, :])
    top = _top_k(feats, mask, max_k)
    matches = np.zeros((len(df_moa), max_k), dtype=bool)
    for i in range(len(df_moa)):
        for j in range(max_k):
            matches[i, j] = bool(moa_sets[i] & moa_sets[top[i, j]])
    return _hit_rates(matches, max_k)


def evaluate(processed: pd.DataFrame, moa_table: pd.DataFrame, *, null_size: int = 10000, seed: int = 42,
             max_k: int = 50) -> dict[str, dict]:
    """compute_map.py main loop, one processed table per cell type."""
    out = {}
    for cell_type, df in processed.groupby("cell_type"):
        df = df[df["compound"] != "DMSO"].reset_index(drop=True)
        feat_cols = [c for c in df.columns if c not in META_COLS]
        rep_summary, rep = replicate_map(df, feat_cols, null_size, seed)
        moa_summary, moa = moa_map(df, feat_cols, moa_table, null_size, seed)
        piped = moa_table.assign(moas=moa_table["moas"].map("|".join))
        out[cell_type] = {"replicate": rep, "replicate_summary": rep_summary, "moa": moa,
                          "moa_summary": moa_summary, "compound_nn": compound_nn(df, feat_cols, max_k),
                          "moa_nn": moa_nn(df, feat_cols, moa_table, max_k),
                          "moa_nn_any": moa_nn(df, feat_cols, piped, max_k)}
    return out
