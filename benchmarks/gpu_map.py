"""Average precision and k-NN accuracy (k = 1..50) on a GPU at 100k and 1M profiles, and agreement with the CPU.

Design: replicate retrieval against all other compounds (``pos_sameby=[compound]``,
``neg_diffby=[compound]``), 4 replicates per compound, float64 features with a compound signal; the
k-NN task predicts a MoA label (20 compounds per MoA) excluding neighbours of the same compound. Both
come from one sweep of similarity blocks (what ``evaluate_profiles`` runs), timed end to end with
``device=...``; ``AP_s`` and ``kNN_s`` are the two calls apart, for reference. On a subset the sweep
also runs on the CPU kernels, and the largest AP and accuracy differences are reported.

    python3 benchmarks/gpu_map.py                    # 100k and 1M on cuda, agreement on 20k
    python3 benchmarks/gpu_map.py --smoke            # the script on the CPU in seconds (torch on cpu)
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from subcell_scale.metrics import average_precision, nn_accuracy
from subcell_scale.metrics._joint import ap_and_nn

RULES = (["compound"], [], [], ["compound"])
RULE_NAMES = ("pos_sameby", "pos_diffby", "neg_sameby", "neg_diffby")


def make_profiles(n: int, n_features: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_compounds = max(1, n // 4)
    compound = np.repeat(np.arange(n_compounds), 4)[:n]
    moa = compound // 20
    signal = rng.normal(size=(n_compounds, n_features)) + 0.5 * rng.normal(size=(moa.max() + 1, n_features))[
        np.arange(n_compounds) // 20]
    x = 0.5 * signal[compound] + rng.normal(size=(n, n_features))
    return pd.DataFrame({"compound": compound, "moa": moa}), x


def run(meta: pd.DataFrame, x: np.ndarray, device: str | None, ks: list[int], apart: bool) -> dict:
    t0 = time.perf_counter()
    joint = ap_and_nn(meta, x, dict(zip(RULE_NAMES, RULES)), "moa", ["compound"], ks, device=device)
    ap, nn = joint.ap(), joint.nn()
    out = {"ap": ap["average_precision"].to_numpy(), "n_pos": ap["n_pos_pairs"].to_numpy(),
           "n_total": ap["n_total_pairs"].to_numpy(), "acc": nn["accuracy"].to_numpy(),
           "joint_s": time.perf_counter() - t0, "mean_ap": float(ap["average_precision"].mean()),
           "ap_s": float("nan"), "nn_s": float("nan")}
    if apart:
        t0 = time.perf_counter()
        average_precision(meta, x, *RULES, device=device)
        t1 = time.perf_counter()
        nn_accuracy(meta, x, "moa", ["compound"], k=ks, device=device)
        out.update(ap_s=t1 - t0, nn_s=time.perf_counter() - t1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--subset", type=int, default=20_000, help="profiles compared with the CPU path")
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--k", type=int, default=50, help="k-NN accuracy for k = 1..K")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--apart", action="store_true", help="also time AP and k-NN as two calls")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, torch on the CPU")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.subset, args.device, args.apart = [4000], 2000, "cpu", True
    import torch

    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu (torch)"
    ks = list(range(1, args.k + 1))
    print(f"# AP (replicate vs all other compounds) and k-NN accuracy k=1..{args.k} (MoA, not same compound), "
          f"{args.features} features, device {args.device}: {name}")
    results: dict = {"device": name, "sizes": {}}
    meta, x = make_profiles(args.subset, args.features, args.seed)
    dev = run(meta, x, args.device, ks, apart=False)
    cpu = run(meta, x, None, ks, apart=False)
    agree = {"n": args.subset, "max_abs_ap_diff": float(np.nanmax(np.abs(dev["ap"] - cpu["ap"]))),
             "same_nan": bool((np.isnan(dev["ap"]) == np.isnan(cpu["ap"])).all()),
             "same_pair_counts": bool((dev["n_pos"] == cpu["n_pos"]).all()
                                      and (dev["n_total"] == cpu["n_total"]).all()),
             "max_abs_nn_diff": float(np.abs(dev["acc"] - cpu["acc"]).max()),
             "device_s": dev["joint_s"], "cpu_s": cpu["joint_s"]}
    results["agreement"] = agree
    print(f"agreement on {args.subset} profiles: max |dAP| {agree['max_abs_ap_diff']:.1e}, same NaNs "
          f"{agree['same_nan']}, same pair counts {agree['same_pair_counts']}, max |d accuracy| "
          f"{agree['max_abs_nn_diff']:.1e}; device {agree['device_s']:.2f} s, CPU {agree['cpu_s']:.2f} s")
    print(f"{'n':>9} {'AP+kNN_s':>9} {'AP_s':>9} {'kNN_s':>9} {'mAP':>7}")
    for n in args.sizes:
        meta, x = make_profiles(n, args.features, args.seed)
        r = run(meta, x, args.device, ks, apart=args.apart)
        results["sizes"][n] = {k: r[k] for k in ("joint_s", "ap_s", "nn_s", "mean_ap")}
        print(f"{n:>9} {r['joint_s']:>9.2f} {r['ap_s']:>9.2f} {r['nn_s']:>9.2f} {r['mean_ap']:>7.4f}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
