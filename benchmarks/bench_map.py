"""Average precision: subcell_scale.metrics against its own floor and copairs 0.5.5, wall time and peak memory.

The floor is the similarity product itself: every block of query rows computed in float64 and read
once (its maximum), timed both with a multi-threaded BLAS over whole blocks and as our sweep runs
(one single-threaded product per core); the faster counts. Floor and our run alternate twice in one
process and the faster of each counts. ``floor_x`` is our time over the floor, ``copairs_x``
copairs' time over ours (copairs runs once). ``floor32_x`` is our time over the same floor in
float32.

Design: replicate retrieval against ALL other perturbations (``pos_sameby=[compound]``,
``neg_diffby=[compound]``), the design whose O(N^2) pair list makes copairs run out of memory at
about 9,000 profiles (copairs issue #90). Profiles: 4 replicates per compound, 128 float64
features (``--features``, several at once) with a compound signal. Each run is a fresh subprocess with an address-space cap
(``resource.setrlimit(RLIMIT_AS)``), so a run that needs more memory fails with MemoryError and
is reported as OOM; peak memory is the run's maximum resident set size (its own ``ru_maxrss``,
imports and the input matrix included). APs of both tools are
compared on every size where both finished.

    python3 benchmarks/bench_map.py                       # 2k, 5k, 10k; copairs up to 10k
    python3 benchmarks/bench_map.py --sizes 2000 5000 10000 40000
    python3 benchmarks/bench_map.py --sizes 2000 --copairs-max 2000
    python3 benchmarks/bench_map.py --sizes 40000 --features 64 128 256 1536 --copairs-max 0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GIB = 1 << 30


def make_profiles(n: int, n_features: int, seed: int):
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_compounds = n // 4
    compound = np.repeat(np.arange(n_compounds), 4)[:n]
    effect = rng.normal(size=(n_compounds, n_features))
    x = 0.5 * effect[compound] + rng.normal(size=(n, n_features))
    meta = pd.DataFrame({"compound": [f"c{c}" for c in compound]})
    return meta, x


def worker(impl: str, n: int, n_features: int, seed: int, out: Path) -> None:
    meta, x = make_profiles(n, n_features, seed)
    rules = (["compound"], [], [], ["compound"])
    if impl == "ours":
        from subcell_scale.metrics import average_precision
    else:
        from copairs.map import average_precision
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
    if impl == "ours":  # floor and ours alternate twice, the faster of each counts (the machine may be shared)
        average_precision(meta[:100], x[:100], *rules)  # compile the kernels outside the timing
        floors, walls = [], []
        for _ in range(2):
            floors.append(floor(x))
            t0 = time.perf_counter()
            ap = average_precision(meta, x, *rules)
            walls.append(time.perf_counter() - t0)
        wall, floor_s, floor32_s = min(walls), min(f[0] for f in floors), min(f[1] for f in floors)
    else:
        t0 = time.perf_counter()
        ap = average_precision(meta, x, *rules, progress_bar=False)
        wall, floor_s, floor32_s = time.perf_counter() - t0, None, None
    np.save(out.with_suffix(".npy"), ap["average_precision"].to_numpy())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
    out.write_text(json.dumps({"wall_s": wall, "rss_before_gib": rss_before, "peak_rss_gib": peak,
                               "floor_s": floor_s, "floor32_s": floor32_s,
                               "mean_ap": float(ap["average_precision"].mean())}))


def floor(x: np.ndarray) -> tuple[float, float]:
    """Seconds to compute every similarity block once and read it once (its maximum), in float64 and float32.

    Each two ways, the faster counts: blocks one after another with a multi-threaded BLAS, and the
    blocks our sweep uses, one single-threaded product per core at a time. float32 is what a product
    could cost if copairs' float64 similarities were not needed (their float32 rounding decides ties).
    """
    from subcell_scale.metrics._similarity import Similarity

    sim = Similarity(x)
    unit32 = sim.product_rows.astype(np.float32)
    return _floor(sim.n, sim.block64), _floor(sim.n, lambda rows: unit32[rows] @ unit32.T)


def _floor(n: int, block) -> float:
    import math
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    from subcell_scale.metrics._similarity import rows_per_block

    rows_per = rows_per_block(n, None)
    t0 = time.perf_counter()
    for start in range(0, n, rows_per):
        block(np.arange(start, min(n, start + rows_per))).max()
    serial = time.perf_counter() - t0
    workers = max(1, min(os.cpu_count() or 1, math.ceil(n / 64)))
    rows_per = max(1, rows_per // workers)
    t0 = time.perf_counter()
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda s: block(np.arange(s, min(n, s + rows_per))).max(), range(0, n, rows_per)))
    return min(serial, time.perf_counter() - t0)


def run_one(impl: str, n: int, n_features: int, seed: int, cap_gib: float, timeout: float, tmp: Path) -> dict:
    out = tmp / f"{impl}_{n}.json"

    def limit() -> None:
        cap = int(cap_gib * GIB)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    cmd = [sys.executable, __file__, "--worker", impl, str(n), str(n_features), str(seed), str(out)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, preexec_fn=limit, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "n": n, "status": f"timeout > {timeout:.0f} s"}
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["?"]
        oom = "MemoryError" in proc.stderr or "Out of Memory" in proc.stderr or proc.returncode in (-9, 137)
        status = "OOM" if oom else "error"
        return {"impl": impl, "n": n, "status": f"{status} under a {cap_gib:g} GiB cap ({tail[0][:120]})",
                "elapsed_s": elapsed}
    info = json.loads(out.read_text())
    info.update(impl=impl, n=n, status="ok", ap=np.load(out.with_suffix(".npy")))
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 10000])
    parser.add_argument("--features", type=int, nargs="+", default=[128])
    parser.add_argument("--copairs-max", type=int, default=10000,
                        help="largest size copairs is tried on (its pair list is O(N^2))")
    parser.add_argument("--cap-gib", type=float, default=8.0, help="address-space cap of our runs")
    parser.add_argument("--copairs-cap-gib", type=float, default=10.0, help="address-space cap of copairs' runs")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", nargs=5, metavar=("IMPL", "N", "D", "SEED", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, n, d, seed, out = args.worker
        worker(impl, int(n), int(d), int(seed), Path(out))
        return
    print(f"# average precision, replicate vs all other compounds, caps {args.cap_gib:g} GiB (ours) / "
          f"{args.copairs_cap_gib:g} GiB (copairs), {os.cpu_count()} CPUs; floor_x: our time over the float64 "
          "floor, floor32_x: over the float32 floor, copairs_x: copairs' time over ours")
    print(f"{'d':>5} {'n':>6} {'impl':>8} {'status':>8} {'wall_s':>9} {'floor_s':>8} {'floor_x':>8} {'floor32_x':>9} "
          f"{'copairs_x':>9} {'peak_GiB':>9} {'max|dAP|':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for d in args.features:
            for n in args.sizes:
                print_size(d, n, args, Path(tmp))


def print_size(d: int, n: int, args: argparse.Namespace, tmp: Path) -> None:
    ours = run_one("ours", n, d, args.seed, args.cap_gib, args.timeout, tmp)
    if n <= args.copairs_max:
        ref = run_one("copairs", n, d, args.seed, args.copairs_cap_gib, args.timeout, tmp)
    else:
        pairs = n * (n - 1) // 2
        ref = {"impl": "copairs", "n": n,
               "status": f"skipped: {pairs:.2e} pairs, the uint32 pair array alone is {pairs * 8 / GIB:.1f} GiB"}
    speed = diff = ""
    if ours["status"] == "ok" and ref["status"] == "ok":
        speed = f"{ref['wall_s'] / ours['wall_s']:.1f}"
        a, b = ours["ap"], ref["ap"]
        same_nan = bool((np.isnan(a) == np.isnan(b)).all())
        diff = f"{np.nanmax(np.abs(a - b)):.1e}" + ("" if same_nan else " (NaN differ)")
    for r in (ours, ref):
        if r["status"] != "ok":
            print(f"{d:>5} {n:>6} {r['impl']:>8}   {r['status']}")
        elif r is ours:
            print(f"{d:>5} {n:>6} {'ours':>8} {'ok':>8} {r['wall_s']:>9.2f} {r['floor_s']:>8.2f} "
                  f"{r['wall_s'] / r['floor_s']:>8.2f} {r['wall_s'] / r['floor32_s']:>9.2f} {speed:>9} "
                  f"{r['peak_rss_gib']:>9.2f} {diff:>9}")
        else:
            print(f"{d:>5} {n:>6} {'copairs':>8} {'ok':>8} {r['wall_s']:>9.2f} {'':>8} {'':>8} {'':>9} {'':>9} "
                  f"{r['peak_rss_gib']:>9.2f}")
    sys.stdout.flush()

if __name__ == "__main__":
    main()
