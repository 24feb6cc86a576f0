"""Profile steps against pycytominer 1.7.1: normalize, spherize, feature selection, median aggregation.

Each step runs on the same synthetic data in both tools, in one process: well profiles (plates of
384 wells, a quarter of them negative controls, correlated features with a plate offset) and, for
aggregation, cells of those wells. Only the call is timed (building pycytominer's DataFrame is not
counted); each tool's time is the best of ``--repeats`` runs (the machine may be shared). Outputs
are compared (largest absolute difference; the same kept features for feature selection). ``ratio``
is pycytominer's time over ours. pycytominer 1.7.1 has no legacy sphering: that row is timed against
its corrected call (the same amount of work there); its output is checked in the tests against the
JUMP recipe's computation instead.

    python3 benchmarks/bench_profiles.py                                   # 8 plates, 256 features
    python3 benchmarks/bench_profiles.py --plates 8 --features 1536 --cells-per-well 300
    python3 benchmarks/bench_profiles.py --steps spherize                  # only the sphering rows
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import anndata as ad
import numpy as np
import pandas as pd

NEGCON = "control_type == 'negcon'"
META = ["plate", "well", "control_type"]


def make_profiles(n_plates: int, n_features: int, seed: int) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(n_features, n_features)) / np.sqrt(n_features)
    blocks, obs = [], []
    for p in range(n_plates):
        blocks.append(3 + rng.normal(size=n_features) + rng.normal(size=(384, n_features)) @ mixing)
        obs += [{"plate": f"P{p}", "well": f"W{w:03d}", "control_type": "negcon" if w % 4 == 0 else "trt"}
                for w in range(384)]
    frame = pd.DataFrame(obs)
    frame.index = (frame["plate"] + "_" + frame["well"]).to_numpy()
    var = pd.DataFrame(index=[f"f{i:04d}" for i in range(n_features)])
    return ad.AnnData(np.concatenate(blocks).astype(np.float32), obs=frame, var=var)


def make_cells(profiles: ad.AnnData, per_well: int, seed: int) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(per_well // 2, per_well * 3 // 2, profiles.n_obs)
    rows = np.repeat(np.arange(profiles.n_obs), sizes)
    x = profiles.X[rows] + rng.normal(size=(rows.size, profiles.n_vars)).astype(np.float32)
    obs = profiles.obs.iloc[rows][["plate", "well"]].reset_index(drop=True)
    obs.index = obs.index.astype(str)
    return ad.AnnData(x, obs=obs, var=profiles.var.copy())


def frame_of(adata: ad.AnnData, metadata: list[str]) -> pd.DataFrame:
    meta = pd.DataFrame({f"Metadata_{c}": adata.obs[c].astype(str).to_numpy() for c in metadata})
    feats = pd.DataFrame(np.asarray(adata.X, dtype=np.float64), columns=list(adata.var_names))
    return pd.concat([meta, feats], axis=1)


def timed(call: Callable, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = call()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plates", type=int, default=8)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--cells-per-well", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", nargs="*", default=(), help="run only the steps whose name contains one of these")
    args = parser.parse_args()
    import pycytominer

    from subcell_scale.profiles import aggregate, feature_select, normalize

    warnings.simplefilter("ignore")
    profiles = make_profiles(args.plates, args.features, args.seed)
    frame = frame_of(profiles, META)
    feats = list(profiles.var_names)
    meta = [f"Metadata_{c}" for c in META]
    samples = NEGCON.replace("control_type", "Metadata_control_type")
    print(f"# {profiles.n_obs} wells x {profiles.n_vars} features ({args.plates} plates, negcon reference); "
          f"aggregation of {args.cells_per_well} cells per well on average")
    print(f"{'step':<34} {'ours_s':>8} {'pycyto_s':>9} {'ratio':>7} {'max|diff|':>10}")

    def wanted(step: str) -> bool:
        return not args.steps or any(part in step for part in args.steps)

    def report(step: str, ours: Callable, theirs: Callable, compare: Callable) -> None:
        if not wanted(step):
            return
        t_ours, a = timed(ours, args.repeats)
        t_theirs, b = timed(theirs, args.repeats)
        print(f"{step:<34} {t_ours:>8.3f} {t_theirs:>9.3f} {t_theirs / t_ours:>7.1f} {compare(a, b):>10}", flush=True)

    def same_values(a: ad.AnnData, b: pd.DataFrame) -> str:
        return f"{np.abs(a.X - b[list(a.var_names)].to_numpy()).max():.1e}"

    spherize = [("spherize", {"spherize_method": m}) for m in ("ZCA", "ZCA-cor", "PCA-cor")]
    for method, extra in (("standardize", {}), ("mad_robustize", {}), *spherize):
        name = method + (f" {extra['spherize_method']}" if extra else "")
        report(f"normalize {name}",
               lambda m=method, e=extra: normalize(profiles, method=m, reference=NEGCON, **e),
               lambda m=method, e=extra: pycytominer.normalize(frame, features=feats, meta_features=meta,
                                                               samples=samples, method=m, **e),
               same_values)
    report("normalize spherize PCA-cor legacy",
           lambda: normalize(profiles, method="spherize", spherize_method="PCA-cor", reference=NEGCON,
                             spherize_variant="legacy"),
           lambda: pycytominer.normalize(frame, features=feats, meta_features=meta, samples=samples,
                                         method="spherize", spherize_method="PCA-cor"),
           lambda a, b: "n/a")

    def same_features(a: ad.AnnData, b: pd.DataFrame) -> str:
        return "same" if list(a.var_names) == [c for c in b.columns if not c.startswith("Metadata_")] else "DIFFER"

    for op in ("correlation_threshold", "variance_threshold"):
        report(f"feature_select {op}",
               lambda o=op: feature_select(profiles, operation=[o]),
               lambda o=op: pycytominer.feature_select(frame, features=feats, operation=[o]),
               same_features)

    if not wanted("aggregate median"):
        return
    cells = make_cells(profiles, args.cells_per_well, args.seed)
    cell_frame = frame_of(cells, ["plate", "well"])
    strata = ["Metadata_plate", "Metadata_well"]

    def same_profiles(a: ad.AnnData, b: pd.DataFrame) -> str:
        b = b.sort_values(strata)
        return f"{np.abs(a.X - b[list(a.var_names)].to_numpy()).max():.1e}"

    report(f"aggregate median ({cells.n_obs} cells)",
           lambda: aggregate(cells, by=["plate", "well"], operation="median"),
           lambda: pycytominer.aggregate(cell_frame, strata=strata, features=feats, operation="median"),
           same_profiles)


if __name__ == "__main__":
    main()
