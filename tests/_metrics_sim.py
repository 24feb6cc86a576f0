"""Seeded, realistically laid-out well profiles for the metrics tests.

Plates of a compound screen: every compound in one well per plate (replicates across plates),
negative-control (DMSO) wells on every plate, 1-2 MoAs per compound, features = compound effect +
plate effect + noise, so retrieval is neither trivial nor hopeless.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path(__file__).parent / "data"


def simulated_profiles(n_plates: int = 3, n_compounds: int = 24, n_controls: int = 8, n_moas: int = 6,
                       n_features: int = 16, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    moas = [f"moa{i}" for i in range(n_moas)]
    compound_moas = {f"cmp{c:02d}": sorted(rng.choice(moas, size=rng.integers(1, 3), replace=False).tolist())
                     for c in range(n_compounds)}
    moa_effect = {m: rng.normal(size=n_features) for m in moas}
    compound_effect = {c: 0.6 * rng.normal(size=n_features) + sum(moa_effect[m] for m in ms)
                       for c, ms in compound_moas.items()}
    rows, feats = [], []
    wells = [f"{r}{c:02d}" for r in "BCDEFGHIJKLMNO" for c in range(2, 24)]
    for p in range(n_plates):
        plate_effect = 0.8 * rng.normal(size=n_features)
        order = rng.permutation(n_compounds + n_controls)
        for w, i in enumerate(order):
            if i < n_compounds:
                cmp = f"cmp{i:02d}"
                rows.append(dict(plate=f"P{p}", well=wells[w], compound=cmp, moa="|".join(compound_moas[cmp]),
                                 control_type="trt"))
                effect = compound_effect[cmp]
            else:
                rows.append(dict(plate=f"P{p}", well=wells[w], compound="DMSO", moa="", control_type="negcon"))
                effect = 0.0
            feats.append(effect + plate_effect + 1.0 * rng.normal(size=n_features))
    return pd.DataFrame(rows), np.asarray(feats, dtype=np.float64)


def cellprofiler_cells() -> tuple[pd.DataFrame, np.ndarray]:
    """5 real CellProfiler single cells (see data/cellprofiler_BR00143976_5cells.md), standardized."""
    frame = pd.read_csv(DATA / "cellprofiler_BR00143976_5cells.csv")
    meta = frame[[c for c in frame.columns if c.startswith("Metadata_")]]
    x = frame[[c for c in frame.columns if not c.startswith("Metadata_")]].to_numpy(dtype=np.float64)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return meta, x
