"""Pipeline benchmarks, measured as ratios within one run (not a test).

1. Efficiency: end-to-end cells/s of ``embed_plate`` (read, crop, embed, write shards, assemble)
   divided by bare-model cells/s (``SubCell.embed`` on the same crops, same device and batch size),
   for a reduced ViT on the CPU, in-process and on a one-worker LocalCluster.
2. Memory: peak RSS of the worker process while embedding demo plates of 8 and of 64 wells; the
   bounded submission window should keep it flat (ratio close to 1).

Usage::

    python benchmarks/bench_pipeline.py              # both, about 5-10 minutes on 2 busy cores
    python benchmarks/bench_pipeline.py --only efficiency
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def reduced_model(channels: int = 4):
    from subcell_scale.models import SubCell
    from subcell_scale.models.config import ModelConfig

    config = ModelConfig(hidden_size=192, num_layers=4, num_heads=3, intermediate_size=768, num_channels=channels,
                         pool_int_dim=128)
    return SubCell.random(config, seed=0, n_classifiers=1, device="cpu"), config


def efficiency(root: Path, out_size: int, batch_size: int, n_wells: int) -> None:
    import torch

    from subcell_scale.distributed import get_client
    from subcell_scale.models import ModelSpec
    from subcell_scale.io import open_plate
    from subcell_scale.io.demo import make_demo_plate
    from subcell_scale import embed_plate, field_crops

    torch.set_num_threads(1)
    (plate_path,) = make_demo_plate(root / "eff", n_plates=1, n_wells=n_wells, n_fields=2, field_size=512, seed=0)
    model, config = reduced_model()
    plate = open_plate(plate_path)
    crops = [field_crops(plate, w, f, out_size=out_size)[0] for w in plate.wells for f in plate.fields(w)]
    stacked = np.concatenate(crops)[:, 0]
    n = stacked.shape[0]
    model.embed(stacked[:batch_size], batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    model.embed(stacked, batch_size=batch_size)
    bare = n / (time.perf_counter() - start)

    start = time.perf_counter()
    adata = embed_plate(plate_path, model, out=root / "eff-run", batch_size=batch_size, progress=False,
                        out_size=out_size)
    local = adata.n_obs / (time.perf_counter() - start)
    assert adata.n_obs == n

    spec = ModelSpec("random", config=config.to_dict(), seed=0, n_classifiers=1)
    with get_client("local", n_workers=1, threads_per_worker=2, dashboard=False) as client:
        embed_plate(plate_path, spec, client=client, progress=False, out_size=out_size)  # model load + imports
        start = time.perf_counter()
        adata = embed_plate(plate_path, spec, client=client, out=root / "eff-cluster", batch_size=batch_size,
                            progress=False, out_size=out_size)
        cluster = adata.n_obs / (time.perf_counter() - start)
    print(f"efficiency ({n} cells in {len(crops)} fields, {out_size} px, batch {batch_size}, reduced ViT {config.hidden_size}x"
          f"{config.num_layers}, CPU, 1 torch thread)")
    print(f"  bare model          {bare:8.2f} cells/s")
    print(f"  in-process pipeline {local:8.2f} cells/s  efficiency {local / bare:.2f}")
    print(f"  1-worker cluster    {cluster:8.2f} cells/s  efficiency {cluster / bare:.2f}")


def _peak_worker_rss(client, stop: threading.Event, peak: list[float]) -> None:
    import psutil

    def rss() -> int:
        return psutil.Process().memory_info().rss

    while not stop.is_set():
        try:
            peak[0] = max(peak[0], *client.run(rss).values())
        except Exception:  # noqa: BLE001 - the cluster is closing
            return
        time.sleep(0.1)


def memory(root: Path, out_size: int) -> None:
    from subcell_scale.distributed import get_client
    from subcell_scale.models import ModelSpec
    from subcell_scale.io.demo import make_demo_plate
    from subcell_scale import embed_plate

    _, config = reduced_model()
    spec = ModelSpec("random", config=config.to_dict(), seed=0, n_classifiers=1)
    peaks = {}
    for n_wells in (8, 64):
        (plate_path,) = make_demo_plate(root / f"mem{n_wells}", n_plates=1, n_wells=n_wells, n_fields=1,
                                        field_size=384, seed=0)
        with get_client("local", n_workers=1, threads_per_worker=2, dashboard=False) as client:
            embed_plate(plate_path, spec, client=client, progress=False, out_size=out_size, out=root / "warm")
            stop, peak = threading.Event(), [0.0]
            watcher = threading.Thread(target=_peak_worker_rss, args=(client, stop, peak))
            watcher.start()
            adata = embed_plate(plate_path, spec, client=client, out=root / f"mem{n_wells}-run", progress=False,
                                out_size=out_size)
            stop.set()
            watcher.join()
        peaks[n_wells] = peak[0]
        print(f"  {n_wells:3d} wells: {adata.n_obs:5d} cells, peak worker RSS {peak[0] / 2**20:7.1f} MiB")
    print(f"memory: peak RSS ratio 64 / 8 wells = {peaks[64] / peaks[8]:.2f} (flat means within 1.2)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("efficiency", "memory"))
    parser.add_argument("--out-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--wells", type=int, default=24, help="wells (2 fields each) of the efficiency plate")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.only in (None, "efficiency"):
            efficiency(root, args.out_size, args.batch_size, args.wells)
        if args.only in (None, "memory"):
            memory(root, args.out_size)


if __name__ == "__main__":
    main()
