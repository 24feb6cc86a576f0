"""Seeded cells and profiles laid out like a pipeline's output, plus pycytominer-shaped frames.

Cells: plates x wells x fields, rows sorted by plate, well, field (as the pipeline writes them),
obs columns of the cells AnnData contract plus platemap columns; features = compound effect +
plate effect + per-field shift + cell noise, with cell counts that vary per field.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

DATA = Path(__file__).parent / "data"
REAL_CELLPROFILER = DATA / "cellprofiler_BR00143976_5cells_profiles.csv"


def simulated_cells(n_plates: int = 2, n_wells: int = 12, n_fields: int = 2, n_features: int = 24,
                    cells: tuple[int, int] = (5, 40), seed: int = 0) -> ad.AnnData:
    """A cells AnnData: a third of each plate's wells are DMSO negative controls."""
    rng = np.random.default_rng(seed)
    wells = [f"{r}{c:02d}" for r in "BCDEFG" for c in range(2, 12)][:n_wells]
    compounds = ["DMSO" if i % 3 == 0 else f"cmp{i % 5}" for i in range(n_wells)]
    effects = {c: (0.0 if c == "DMSO" else 1.5) * rng.normal(size=n_features) for c in set(compounds)}
    obs_rows, blocks = [], []
    for p in range(n_plates):
        plate = f"P{p + 1}"
        plate_effect = 0.5 * rng.normal(size=n_features)
        for well, compound in zip(wells, compounds, strict=True):
            for field in range(n_fields):
                n = int(rng.integers(*cells))
                shift = 0.2 * rng.normal(size=n_features)
                blocks.append(effects[compound] + plate_effect + shift + rng.normal(size=(n, n_features)))
                for label in range(1, n + 1):
                    obs_rows.append({
                        "plate": plate, "well": well, "row": well[0], "column": int(well[1:]),
                        "field": str(field), "label": label, "area": float(rng.integers(200, 900)),
                        "centroid_y": float(rng.uniform(0, 512)), "centroid_x": float(rng.uniform(0, 512)),
                        "compound": compound, "moa": "control" if compound == "DMSO" else f"moa{compound[-1]}",
                        "control_type": "negcon" if compound == "DMSO" else "trt",
                    })
    obs = pd.DataFrame(obs_rows)
    for column in ("plate", "well", "row", "field"):
        obs[column] = obs[column].astype("category")
    obs["column"] = obs["column"].astype("category")
    obs.index = pd.Index([f"{r.plate}_{r.well}_{r.field}_{r.label}" for r in obs.itertuples()], dtype=str)
    x = np.concatenate(blocks).astype(np.float32)
    var = pd.DataFrame(index=pd.Index([f"subcell_{i:04d}" for i in range(n_features)], dtype=str))
    uns = {"subcell_scale": {"model_variant": "simulated", "version": "test"}}
    return ad.AnnData(X=x, obs=obs, var=var, uns=uns)


def pycytominer_frame(adata: ad.AnnData, metadata: list[str]) -> pd.DataFrame:
    """Metadata_-prefixed obs columns (as plain strings / numbers) and float64 features, built directly."""
    def plain(column: pd.Series) -> np.ndarray:
        categorical = isinstance(column.dtype, pd.CategoricalDtype)
        return (column.astype(str) if categorical else column).to_numpy()

    meta = pd.DataFrame({f"Metadata_{c}": plain(adata.obs[c]) for c in metadata})
    features = pd.DataFrame(np.asarray(adata.X, dtype=np.float64), columns=list(adata.var_names))
    return pd.concat([meta, features], axis=1)


def simulated_profiles(n_plates: int = 2, n_wells: int = 40, n_features: int = 12, seed: int = 0) -> ad.AnnData:
    """Well profiles with correlated features, controls in every plate, and a plate offset."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(n_features, n_features))
    rows, blocks = [], []
    for p in range(n_plates):
        offset = 3 + rng.normal(size=n_features)
        blocks.append(offset + rng.normal(size=(n_wells, n_features)) @ mixing)
        for w in range(n_wells):
            rows.append({"plate": f"P{p + 1}", "well": f"W{w:02d}", "compound": "DMSO" if w % 4 == 0 else f"cmp{w % 7}",
                         "control_type": "negcon" if w % 4 == 0 else "trt", "n_cells": int(rng.integers(50, 300))})
    obs = pd.DataFrame(rows)
    obs.index = pd.Index([f"{r.plate}_{r.well}" for r in obs.itertuples()], dtype=str)
    var = pd.DataFrame(index=pd.Index([f"subcell_{i:04d}" for i in range(n_features)], dtype=str))
    return ad.AnnData(X=np.concatenate(blocks).astype(np.float32), obs=obs, var=var)


def simulated_screen(seed: int = 3, n_plates: int = 3, n_compounds: int = 40, n_dmso: int = 8,
                     n_features: int = 12, offset: float = 6.0) -> ad.AnnData:
    """Well profiles of a compound screen in two cell types (A549, U2OS) on their own plates: every
    compound once per plate, DMSO wells, 1-2 MoAs per compound ("|"-joined; the last 4 compounds hold
    a MoA no other compound has), features = MoA + compound effects + noise, mixed per cell type,
    plus a per-plate shift around a common ``offset`` (how far the rows are from centred decides
    how far the legacy sphering is from the corrected one)."""
    rng = np.random.default_rng(seed)
    moas = [f"moa{i}" for i in range(8)]
    compound_moas = {}
    for c in range(n_compounds):
        labels = list(rng.choice(moas, size=int(rng.integers(1, 3)), replace=False))
        if c >= n_compounds - 4:
            labels = [f"solo{c}"] + (labels[:1] if c % 2 else [])
        compound_moas[f"cmp{c:02d}"] = labels
    moa_effect = {m: rng.normal(size=n_features) for m in moas}
    rows, blocks = [], []
    for cell_type, scale in (("A549", 1.0), ("U2OS", 2.5)):
        mixing = np.eye(n_features) + 0.3 * rng.normal(size=(n_features, n_features))
        for p in range(n_plates):
            plate = f"{cell_type}_P{p}"
            shift = offset + rng.normal(size=n_features)
            names = [f"cmp{c:02d}" for c in range(n_compounds)] + ["DMSO"] * n_dmso
            for w, compound in enumerate(rng.permutation(names)):
                labels = compound_moas.get(compound, [])
                effect = sum((moa_effect[m] for m in labels if m in moa_effect), np.zeros(n_features))
                effect = effect + 0.5 * rng.normal(size=n_features) if compound != "DMSO" else effect
                blocks.append(scale * (shift + (effect + 0.8 * rng.normal(size=n_features)) @ mixing))
                rows.append({"plate": plate, "well": f"W{w:03d}", "compound": str(compound),
                             "moa": "|".join(labels), "cell_type": cell_type,
                             "control_type": "negcon" if compound == "DMSO" else "trt"})
    obs = pd.DataFrame(rows)
    obs.index = [f"{r.plate}_{r.well}" for r in obs.itertuples()]
    var = pd.DataFrame(index=[f"subcell_{i:04d}" for i in range(n_features)])
    return ad.AnnData(np.asarray(blocks, dtype=np.float32), obs=obs, var=var)


def real_cellprofiler() -> pd.DataFrame:
    """5 real cells x 320 CellProfiler features (see the .md beside the file)."""
    return pd.read_csv(REAL_CELLPROFILER)
