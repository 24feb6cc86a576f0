"""Scale run: a 384-well x 4-field synthetic plate end to end on a local cluster, with a tiny model (not a test).

What it measures, all in one run:

- cells/s of ``embed_plate`` on a LocalCluster (read, crop, embed, write one shard per field, assemble
  and write ``cells.zarr``), wall time from submission to the written AnnData;
- peak RSS of each worker process, sampled with psutil every 0.2 s over the workers' pids;
- how busy the model is: the forward seconds the run needed divided by wall time x workers. The
  forward cost per cell is measured in this run with the same model, crop size, batch size and one
  torch thread on this machine (``SubCell.embed`` on a sample of the plate's own crops); the tasks'
  own seconds (prepare + embed, from each shard's metadata) give the share of worker time spent on
  fields at all, the rest being scheduling, model loading and idle time.

Usage::

    python benchmarks/scale_run.py                                  # 384 wells x 4 fields, 256 px
    python benchmarks/scale_run.py --wells 96 --fields 2            # about 10 minutes on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path


def _sample_rss(pids: dict[str, int], peaks: dict[str, int], stop: threading.Event) -> None:
    import psutil

    procs = {addr: psutil.Process(pid) for addr, pid in pids.items()}
    while not stop.is_set():
        for addr, proc in procs.items():
            try:
                peaks[addr] = max(peaks.get(addr, 0), proc.memory_info().rss)
            except psutil.Error:  # a worker that went away
                continue
        stop.wait(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wells", type=int, default=384)
    parser.add_argument("--fields", type=int, default=4)
    parser.add_argument("--field-size", type=int, default=256)
    parser.add_argument("--cells-per-field", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per worker")
    parser.add_argument("--out-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--root", default=None, help="keep plate and results here (default: a temporary folder)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from subcell_scale.distributed import get_client
    from subcell_scale.models import ModelSpec
    from subcell_scale.io import open_plate
    from subcell_scale.io.demo import make_demo_plate
    from subcell_scale.models.config import ModelConfig
    from subcell_scale import embed_plate, field_crops
    from subcell_scale.store import read_shard

    torch.set_num_threads(1)
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="scale-run-"))
    config = ModelConfig(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=128, num_channels=4,
                         pool_int_dim=32)
    spec = ModelSpec("random", config=config.to_dict(), seed=0, n_classifiers=1, torch_threads=1)

    start = time.perf_counter()
    (plate_path,) = make_demo_plate(root / "plate", n_plates=1, n_wells=args.wells, n_fields=args.fields,
                                    field_size=args.field_size, cells_per_field=args.cells_per_field, seed=0)
    synth = time.perf_counter() - start
    plate = open_plate(plate_path)
    n_fields = sum(len(plate.fields(w)) for w in plate.wells)
    print(f"plate: {len(plate.wells)} wells x {args.fields} fields ({n_fields} fields) of {args.field_size} px, "
          f"written in {synth:.1f} s")

    client = get_client("local", n_workers=args.workers, threads_per_worker=args.threads, dashboard=False)
    try:
        pids = client.run(os.getpid)
        peaks: dict[str, int] = {}
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(pids, peaks, stop), daemon=True)
        sampler.start()
        out = root / "run"
        start = time.perf_counter()
        adata = embed_plate(plate_path, spec, client=client, out=out, batch_size=args.batch_size, progress=False,
                            out_size=args.out_size)
        wall = time.perf_counter() - start
        stop.set()
        sampler.join()
    finally:
        client.close()
    manifest = json.loads((out / "manifest.json").read_text())
    summary = manifest["embed"]["summary"]
    task_seconds = sum(read_shard(p).meta["seconds"] for p in (out / "shards").rglob("*.npz"))

    # forward cost per cell of the same model on this machine, on the plate's own crops
    model = spec.load(device="cpu")
    sample = []
    for well in plate.wells[: max(1, min(len(plate.wells), 8))]:
        for fld in plate.fields(well):
            sample.append(field_crops(plate, well, fld, out_size=args.out_size)[0][:, 0])
    crops = np.concatenate(sample)
    model.embed(crops[: args.batch_size], batch_size=args.batch_size)  # warm-up
    t0 = time.perf_counter()
    model.embed(crops, batch_size=args.batch_size)
    per_cell = (time.perf_counter() - t0) / len(crops)
    forward = per_cell * adata.n_obs

    print(f"fields: {summary['done']} done, {summary['failed']} failed; cells: {adata.n_obs}")
    print(f"wall {wall:.1f} s on {args.workers} worker(s) x {args.threads} thread(s): "
          f"{adata.n_obs / wall:.1f} cells/s, {n_fields / wall:.2f} fields/s")
    for addr in sorted(peaks):
        print(f"  peak RSS {addr}: {peaks[addr] / 2**20:.0f} MiB")
    print(f"model busy: {forward:.1f} s of forward passes ({per_cell * 1e3:.2f} ms/cell, measured here) "
          f"/ ({wall:.1f} s x {args.workers}) = {forward / (wall * args.workers):.3f}")
    print(f"field tasks busy (prepare + embed, from the shards): {task_seconds:.1f} s / ({wall:.1f} s x "
          f"{args.workers}) = {task_seconds / (wall * args.workers):.3f}")
    print(f"results in {root}")


if __name__ == "__main__":
    main()
