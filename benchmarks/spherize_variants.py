"""How far apart the legacy and the corrected pycytominer sphering are, on synthetic well profiles.

The ``jump-cellpainting`` chain (PCA-cor spherize fitted on the DMSO wells of each cell type, then
standardize per plate) is run twice on the same profiles, with ``spherize_variant="legacy"`` (the SVD
of the raw DMSO rows, pycytominer before PR #748) and ``"corrected"`` (pycytominer 1.7.1), and
evaluated with the SubCell JUMP benchmark's design. The profiles come from
``tests/_profiles_sim.simulated_screen``: 2 cell types x 3 plates x (40 compounds + 8 DMSO), with a
common offset swept from 0 (centred rows: both variants coincide) to far from centred, with fewer
features than DMSO wells (d = 12 < n = 24) and more (d = 64 > n = 24). Per setting it prints:

- ``white_legacy`` / ``white_corr``: max |cov(DMSO after sphering) - I| (0 = white);
- ``dcos``: mean |difference| of the pairwise well cosine similarities under the two variants, and
  ``rho``: their Spearman correlation (the PC coordinates themselves are in different bases, so only
  such basis-free comparisons mean anything);
- the evaluation under each: replicate and MoA mAP, MoA 1-NN accuracy (mean of the cell types).

Run::

    PYTHONPATH=. python3 benchmarks/spherize_variants.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _profiles_sim import simulated_screen  # noqa: E402

from subcell_scale.metrics import evaluate_profiles  # noqa: E402
from subcell_scale.profiles import normalize, postprocess  # noqa: E402

NEGCON = "control_type == 'negcon'"
SPHERIZE = {"step": "normalize", "method": "spherize", "spherize_method": "PCA-cor", "reference": NEGCON,
            "spherize_epsilon": 1e-6}
STANDARDIZE = {"step": "normalize", "method": "standardize", "reference": "all", "by": "plate"}


def whiteness(profiles, variant: str) -> float:
    worst = 0.0
    for cell_type in ("A549", "U2OS"):
        part = profiles[profiles.obs["cell_type"] == cell_type].copy()
        out = normalize(part, method="spherize", spherize_method="PCA-cor", reference=NEGCON,
                        spherize_variant=variant)
        dmso = out.X[(part.obs["control_type"] == "negcon").to_numpy()].astype(np.float64)
        d = min(dmso.shape[0] - 1, dmso.shape[1])  # the reference rows span n - 1 directions
        cov = np.cov(dmso[:, :d], rowvar=False)
        worst = max(worst, float(np.abs(cov - np.eye(d)).max()))
    return worst


def summary(tables) -> dict[str, float]:
    s = tables["summary"]
    pick = {"rep_mAP": ("replicate", "mAP"), "moa_mAP": ("moa", "mAP"), "moa_nn1": ("moa_nn", "accuracy@1")}
    return {name: float(s[(s["design"] == d) & (s["metric"] == m)]["value"].mean()) for name, (d, m) in pick.items()}


def main() -> None:
    header = (f"{'d':>3} {'offset':>6} {'white_legacy':>12} {'white_corr':>10} {'dcos':>6} {'rho':>6} "
              f"{'rep_mAP L/C':>13} {'moa_mAP L/C':>13} {'moa_nn1 L/C':>13}")
    print(header)
    for n_features in (12, 64):
        for offset in (0.0, 1.0, 3.0, 6.0, 20.0):
            profiles = simulated_screen(n_features=n_features, offset=offset)
            final = {v: postprocess(profiles, steps=[SPHERIZE, STANDARDIZE], spherize_variant=v)
                     for v in ("legacy", "corrected")}
            a = np.asarray(final["legacy"].X, dtype=np.float64)
            b = np.asarray(final["corrected"].X, dtype=np.float64)
            an, bn = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
            iu = np.triu_indices(len(a), 1)
            ca, cb = (an @ an.T)[iu], (bn @ bn.T)[iu]
            dcos = float(np.abs(ca - cb).mean())
            rho = float(spearmanr(ca, cb).statistic)
            metrics = {v: summary(evaluate_profiles(final[v], design={"null_size": 1000})) for v in final}
            cells = " ".join(f"{metrics['legacy'][k]:6.3f}/{metrics['corrected'][k]:6.3f}"
                             for k in ("rep_mAP", "moa_mAP", "moa_nn1"))
            print(f"{n_features:>3} {offset:>6.1f} {whiteness(profiles, 'legacy'):>12.3f} "
                  f"{whiteness(profiles, 'corrected'):>10.2e} {dcos:>6.3f} {rho:>6.3f} {cells}")


if __name__ == "__main__":
    main()
