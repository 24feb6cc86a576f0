"""GPU end to end: demo plates -> full-size SubCell on CUDA -> cells AnnData, with throughput ratios.

Measured in one run, on one device:
- bare model cells/s (``SubCell.embed`` on precomputed crops) vs ``embed_plate`` in-process and on a
  one-worker LocalCluster (GPU resource, model in the worker plugin): pipeline efficiency;
- agreement: cluster vs in-process embeddings (same device), and GPU (bf16 autocast) vs CPU (fp32)
  on a few cells (DESIGN: within 1e-3 relative; reported as max abs difference and cosine);
- the jump-cellpainting preset (3 passes, 478 px crops) on a Cell Painting demo plate.

Usage::

    python benchmarks/gpu_pipeline.py [--out DIR]     # on a CUDA machine, under 3 minutes
    python benchmarks/gpu_pipeline.py --smoke          # tiny model on the CPU, to check the script
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_model(smoke: bool, device: str, channels: tuple[str, ...] | None = None, variant: str | None = None):
    from subcell_scale.models import ModelSpec
    from subcell_scale.models import SubCell
    from subcell_scale.models.config import ModelConfig

    if smoke:
        config = ModelConfig(hidden_size=64, num_layers=2, num_heads=1, intermediate_size=128,
                             num_channels=len(channels or "rybg"), pool_int_dim=32)
        options = {"channels": list(channels)} if channels else {}
        spec = ModelSpec("random", config=config.to_dict(), n_classifiers=1, options=options)
        return SubCell.random(config, n_classifiers=1, device=device, **options), spec
    spec = ModelSpec("random", variant=variant, n_classifiers=1)
    return SubCell.random(variant, n_classifiers=1, device=device), spec


def bare_rate(model, crops: np.ndarray, batch_size: int) -> float:
    import torch

    model.embed(crops[:batch_size], batch_size=batch_size)  # warm-up (kernels, allocator)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.embed(crops, batch_size=batch_size)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return crops.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, small plates")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="where to write gpu_pipeline.json")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    import torch

    from subcell_scale.distributed import get_client
    from subcell_scale.io.demo import make_demo_plate
    from subcell_scale import embed_plate, field_crops

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; use --smoke to run on the CPU")
    report: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                    "torch": torch.__version__, "batch_size": args.batch_size, "smoke": args.smoke}
    overrides = {"out_size": 64} if args.smoke else {}
    tmp = Path(tempfile.mkdtemp(prefix="gpu-pipeline-"))
    start_all = time.perf_counter()

    n_wells, n_fields = (4, 1) if args.smoke else (16, 2)
    log(f"writing demo plates ({n_wells} wells x {n_fields} fields, HPA-like and Cell Painting)")
    (hpa,) = make_demo_plate(tmp / "hpa", n_plates=1, n_wells=n_wells, n_fields=n_fields, field_size=512,
                             cells_per_field=14, seed=0)
    (cp,) = make_demo_plate(tmp / "cp", n_plates=1, n_wells=n_wells, n_fields=1, field_size=512, seed=0,
                            cellpainting=True)

    # -- HPA preset, full-size all_channels model --------------------------------------------------
    model, spec = make_model(args.smoke, device, variant="all_channels_MAE-CellS-ProtS-Pool")
    from subcell_scale.io import open_plate

    plate = open_plate(hpa)
    crops = np.concatenate([field_crops(plate, w, f, **overrides)[0][:, 0] for w in plate.wells for f in plate.fields(w)])
    n = int(crops.shape[0])
    log(f"{n} cells; crops {crops.shape[1:]}")
    bare = bare_rate(model, crops, args.batch_size)
    log(f"bare model: {bare:.1f} cells/s")

    t = time.perf_counter()
    local = embed_plate(hpa, model, out=tmp / "local", batch_size=args.batch_size, progress=False, **overrides)
    local_rate = local.n_obs / (time.perf_counter() - t)
    log(f"in-process pipeline: {local_rate:.1f} cells/s")

    with get_client("local", n_workers=1, threads_per_worker=4, dashboard=False) as client:
        t = time.perf_counter()
        embed_plate(hpa, spec, client=client, batch_size=args.batch_size, progress=False, **overrides)
        first = time.perf_counter() - t
        t = time.perf_counter()
        dist = embed_plate(hpa, spec, client=client, out=tmp / "cluster", batch_size=args.batch_size,
                           progress=False, **overrides)
        cluster_rate = dist.n_obs / (time.perf_counter() - t)
    log(f"1-worker cluster: {cluster_rate:.1f} cells/s (first run incl. worker start-up and model load {first:.1f} s)")

    same_order = list(local.obs_names) == list(dist.obs_names)
    cluster_diff = float(np.abs(local.X - dist.X).max()) if same_order else float("nan")

    k = min(8, n)
    cpu_model, _ = make_model(args.smoke, "cpu", variant="all_channels_MAE-CellS-ProtS-Pool")
    ref = cpu_model.embed(crops[:k], batch_size=k)["embedding"]
    dev = model.embed(crops[:k], batch_size=k)["embedding"]
    cosine = float(np.min(np.sum(ref * dev, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(dev, axis=1))))
    rel = float(np.abs(ref - dev).max() / np.abs(ref).max())
    log(f"cluster vs in-process max |diff| {cluster_diff:.2e}; {device} vs cpu fp32: max rel diff {rel:.2e}, "
        f"min cosine {cosine:.6f}")
    report["hpa"] = {"cells": n, "crop": list(crops.shape[1:]), "bare_cells_per_s": bare,
                     "pipeline_in_process_cells_per_s": local_rate, "pipeline_cluster_cells_per_s": cluster_rate,
                     "efficiency_in_process": local_rate / bare, "efficiency_cluster": cluster_rate / bare,
                     "cluster_first_run_s": first, "cluster_vs_in_process_max_abs_diff": cluster_diff,
                     "same_cell_order": same_order, "device_vs_cpu_max_rel_diff": rel,
                     "device_vs_cpu_min_cosine": cosine}
    del model, cpu_model
    if device == "cuda":
        torch.cuda.empty_cache()

    # -- jump-cellpainting preset, ER-DNA-Protein model, 3 passes ----------------------------------
    jmodel, _ = make_model(args.smoke, device, channels=("er", "nucleus", "protein"),
                           variant="ER-DNA-Protein_MAE-CellS-ProtS-Pool")
    t = time.perf_counter()
    jump = embed_plate(cp, jmodel, out=tmp / "jump", preset="jump-cellpainting", batch_size=args.batch_size,
                       progress=False, **({"out_size": 48} if args.smoke else {}))
    jump_rate = jump.n_obs / (time.perf_counter() - t)
    log(f"jump-cellpainting: {jump.n_obs} cells x {jump.n_vars} ({list(jump.uns['subcell_scale']['passes'])}), "
        f"{jump_rate:.1f} cells/s")
    report["jump"] = {"cells": jump.n_obs, "features": jump.n_vars, "cells_per_s": jump_rate,
                      "crop_out_size": int(jump.uns["subcell_scale"]["crop"]["out_size"])}
    report["total_s"] = time.perf_counter() - start_all
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_pipeline.json").write_text(text)


if __name__ == "__main__":
    main()
