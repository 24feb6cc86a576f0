"""A screen's costs on the client: bookkeeping, resume, memory and scheduling per field, projected to cpg0016.

Four measurements, each on real components, then a projection:

1. bookkeeping: a run directory's records for a synthetic screen (``--plates`` plates of
   ``--fields`` fields), every field recorded done as the pipeline records it; the client's seconds
   and bytes written per field, for a screen of a tenth of the plates and of all of them (the cost
   per field must not grow with the screen), against what one whole-manifest rewrite would cost;
2. resume: the same screen with real plates (tiny fields) and real shards written directly, checked
   as a resumed run checks it (:func:`subcell_scale.pipeline.execute._finished`): all plates
   complete, then half of them left incomplete; seconds per plate and shard reads;
3. client memory: the cells store of the screen streamed from its shards in a fresh process; peak RSS
   growth and RSS held once the returned AnnData is open (``obs`` left in the store, the names held as
   Arrow strings), per cell;
4. scheduler: tiny fields through a real cluster (``dask scheduler`` and ``dask worker`` processes,
   an instant model); the client process's CPU seconds per field, with the default fields per task
   and with one field per task (a JUMP field is a task of its own).

The projection puts cpg0016 (1,600 plates x 384 wells x 9 fields, ~250 cells a field) on 8 and 64
GPUs at 5 fields/s each.

Usage::

    python benchmarks/bench_screen.py                       # 120 plates x 64 fields, ~10 minutes on 2 cores
    python benchmarks/bench_screen.py --plates 40 --fields 32 --scheduler-fields 384
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CPG0016 = {"plates": 1600, "fields_per_plate": 384 * 9, "cells_per_field": 250}
WIDTH = 3 * 64
"""Values a cell of the synthetic shards: the 64-wide model of section 3 run in jump-cellpainting's three passes (X as
wide as its var_names)."""
GPU_FIELDS_PER_S = 5.0


def bookkeeping(root: Path, plates: int, fields: int) -> dict:
    """Seconds and bytes per field of recording a screen's fields (and flushing as a run does)."""
    from subcell_scale.rundir import FieldId
    from subcell_scale.store import ResultsStore

    out = root / f"book-{plates}"
    shutil.rmtree(out, ignore_errors=True)
    store = ResultsStore(out, flush_interval=2.0)
    store.begin(inputs={}, parameters={}, model={}, versions={}, digest="d")
    wells = [f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]
    fids_of = {p: [FieldId(f"plate-{p:04d}", wells[i % len(wells)], str(i // len(wells))) for i in range(fields)]
               for p in range(plates)}
    facts = {"digest": "d", "fingerprint": "f" * 64, "size": 4_600_000, "sha256": "s" * 64, "segmented": False,
             "labels": "plate"}
    started = time.process_time()
    for p in range(plates):
        store.set_pending(fids_of[p])
        for fid in fids_of[p]:
            store.record_done(fid, n_cells=250, dropped={"border": 3, "too_small": 1}, seconds=0.2, **facts)
        store.close_plate(f"plate-{p:04d}", fids_of[p])
    store.flush(force=True)
    seconds = time.process_time() - started
    written = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    whole = len(json.dumps({"fields": {fid.key: {"status": "done", "n_cells": 250, **facts}
                                       for fids in fids_of.values() for fid in fids}}))
    n = plates * fields
    return {"plates": plates, "fields": n, "us_per_field": 1e6 * seconds / n, "bytes_per_field": written / n,
            "manifest_bytes": (out / "manifest.json").stat().st_size, "whole_manifest_bytes": whole}


def write_screen(root: Path, plates: int, fields: int, cells: int) -> dict:
    """Real plates of tiny fields, a shard per field and the records of a finished run (as a run writes them)."""
    import hashlib

    import pandas as pd

    from subcell_scale.io import PlateWriter
    from subcell_scale.io.fingerprint import plate_fingerprints
    from subcell_scale.io import open_plate
    from subcell_scale.rundir import FieldId
    from subcell_scale.store import ResultsStore, Shard, encode_shard

    wells = [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)]
    sites = [(wells[i % len(wells)], str(i // len(wells))) for i in range(fields)]
    store = ResultsStore(root / "run", flush_interval=3600)
    store.begin(inputs={}, parameters={}, model={}, versions={}, digest="bench")
    rng = np.random.default_rng(0)
    paths = []
    for p in range(plates):
        path = root / "plates" / f"plate-{p:04d}.zarr"
        with PlateWriter(path, name=f"plate-{p:04d}", channel_names=["DNA", "ER", "RNA", "AGP", "Mito"],
                         pixel_size=0.598) as writer:
            for well, fld in sites:
                writer.write_field(well, fld, np.zeros((5, 16, 16), np.uint16))
        plate = open_plate(path)
        prints = plate_fingerprints(plate, sites, labels="cells")
        fids = [FieldId(plate.name, w, f) for w, f in sites]
        for fid in fids:
            table = pd.DataFrame({"label": np.arange(1, cells + 1), "area": np.full(cells, 300),
                                  "centroid_y": rng.random(cells), "centroid_x": rng.random(cells)})
            fingerprint = prints[(fid.well, fid.field)]
            shard = Shard(rng.random((cells, WIDTH), dtype=np.float32), None, table, {},
                          {"plate": fid.plate, "well": fid.well, "field": fid.field, "digest": "bench",
                           "fingerprint": fingerprint, "seconds": 0.1})
            data = encode_shard(shard)
            store.shard_path(fid).write_bytes(data)
            store.record_done(fid, n_cells=cells, dropped={}, seconds=0.1, digest="bench", fingerprint=fingerprint,
                              size=len(data), sha256=hashlib.sha256(data).hexdigest())
        store.close_plate(plate.name, fids)
        paths.append(str(path))
    store.flush(force=True)
    return {"plates": paths, "sites": sites, "run": str(root / "run")}


def resume(screen: dict, *, incomplete: int) -> dict:
    """Seconds and shard reads of checking a screen for finished fields, ``incomplete`` plates not complete."""
    from subcell_scale.io import open_plate
    from subcell_scale.params import RunParams
    from subcell_scale.pipeline import execute
    from subcell_scale.pipeline.jobs import plan_jobs
    from subcell_scale.store import ResultsStore

    store = ResultsStore(screen["run"])
    for name in [Path(p).stem for p in screen["plates"][:incomplete]]:
        record = store.records.plate(name)
        record.complete, record.shards_digest = False, None  # as a plate left by a killed run
    params = RunParams.resolve("jump-cellpainting")
    reads = {"n": 0}
    verify = execute.verify_shard

    def counted(*args, **kwargs):
        reads["n"] += 1
        return verify(*args, **kwargs)

    execute.verify_shard = counted
    try:
        started = time.perf_counter()
        done = 0
        for path in screen["plates"]:
            plate = open_plate(path)
            jobs = plan_jobs([plate], [None], params, root=store.root, scratch=Path(screen["run"]), digest="bench",
                             embedding=False)
            done += len(execute._finished(jobs, store))
        seconds = time.perf_counter() - started
    finally:
        execute.verify_shard = verify
    n = len(screen["plates"])
    return {"plates": n, "incomplete": incomplete, "fields_done": done, "seconds": seconds,
            "s_per_plate": seconds / n, "shard_reads": reads["n"]}


MEMORY = r"""
import json, resource, sys
spec = json.loads(open(sys.argv[1]).read())
spec["plates"] = spec["plates"][:int(sys.argv[2])]
import numpy as np, anndata, dask, zarr, pandas, psutil
from pathlib import Path
import subcell_scale as ss
from subcell_scale.cellstore import RunContext
from subcell_scale.cellwriter import stream_cells
from subcell_scale.io import open_plate
from subcell_scale.models import ModelSpec, resolve_model
from subcell_scale.params import RunParams
from subcell_scale.rundir import FieldId, RunPath

ss.settings.lazy_obs = 0
params = RunParams.resolve("jump-cellpainting")
plates = [open_plate(p) for p in spec["plates"]]
model = resolve_model(ModelSpec("random", config={"hidden_size": 64, "num_heads": 1},
                                options={"channels": ["er", "nucleus", "protein"]}))
plans = [params.plan(p, ["er", "nucleus", "protein"]) for p in plates]
context = RunContext(plates, plans, params, model)
root = RunPath(spec["run"])

def fields():
    for plate in plates:
        for well, fld in spec["sites"]:
            fid = FieldId(plate.name, well, fld)
            yield fid, root / fid.shard, spec["cells"]

before = psutil.Process().memory_info().rss
adata = stream_cells(fields, context, [], root)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
held = psutil.Process().memory_info().rss - before
names = int(adata.obs_names.memory_usage(deep=True))
print(json.dumps({"cells": int(adata.n_obs), "peak": peak - before, "held": held, "names": names}))
"""


def memory(screen: dict, cells: int, root: Path, repeats: int = 2) -> dict:
    """Peak and held RSS growth of streaming the store of a fifth of the screen's plates and of all of them
    (the least of ``repeats`` fresh processes each), and their slopes per added cell."""
    spec = root / "memory.json"
    spec.write_text(json.dumps({**screen, "cells": cells}))
    rows = []
    for n in (max(1, len(screen["plates"]) // 5), len(screen["plates"])):
        runs = []
        for _ in range(repeats):
            done = subprocess.run([sys.executable, "-c", MEMORY, str(spec), str(n)], capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"the memory run failed:\n{done.stderr[-3000:]}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        rows.append(min(runs, key=lambda r: r["peak"]))
    small, large = rows
    added = large["cells"] - small["cells"]
    return {"sizes": rows, "peak": large["peak"], "held": large["held"], "cells": large["cells"],
            "peak_b_per_added_cell": (large["peak"] - small["peak"]) / added,
            "held_b_per_added_cell": (large["held"] - small["held"]) / added,
            "names_b_per_cell": large["names"] / large["cells"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scheduler(root: Path, n_fields: int, workers: int) -> list[dict]:
    """Client CPU per field of tiny fields through a scheduler and workers in their own processes."""
    from distributed import Client

    from subcell_scale.io.demo import make_demo_plate
    from subcell_scale.models import ModelSpec
    from subcell_scale.pipeline.execute import run_fields
    from subcell_scale.runspec import describe_run
    from subcell_scale.stages import Run

    wells = 96
    (plate,) = make_demo_plate(root / "tiny", n_plates=1, n_wells=wells, n_fields=-(-n_fields // wells), field_size=64,
                               cells_per_field=1, seed=0)
    model = ModelSpec("random", config={"hidden_size": 16, "num_layers": 1, "num_heads": 1, "intermediate_size": 16,
                                        "num_channels": 4, "pool_int_dim": 8}, seed=0, n_classifiers=1)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(["dask", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address",
                               ":0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    procs += [subprocess.Popen(["dask", "worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1", "--resources", "GPU=1",
                                "--no-dashboard", "--memory-limit", "2GB"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env) for _ in range(workers)]
    rows = []
    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
            for per_task in (None, 1):
                out = root / f"sched-{per_task}"
                shutil.rmtree(out, ignore_errors=True)
                spec = describe_run(str(plate), out=out, model=model, out_size=16, progress=False,
                                    fields_per_task=per_task, min_area_um2=0.0, drop_border=False)
                with Run.open(spec, client=client) as run:
                    run.store.begin(inputs={}, parameters={}, model={}, versions={}, digest=run.digest)
                    from subcell_scale.pipeline.jobs import fields_per_task

                    size = per_task or fields_per_task(run.plates, run.plans, spec.params, 64)
                    cpu, wall = time.process_time(), time.perf_counter()
                    result = run_fields(run.plate_jobs(), run.model, client, run.store, total=run.n_fields,
                                        scratch=run.scratch, device=None, retries=0, progress=False,
                                        fields_per_task=size)
                    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                rows.append({"fields_per_task": size, "fields": run.n_fields, "failed": len(result.failed),
                             "client_ms_per_field": 1000 * cpu / run.n_fields,
                             "wall_ms_per_field": 1000 * wall / run.n_fields})
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plates", type=int, default=120)
    parser.add_argument("--fields", type=int, default=64, help="fields per plate")
    parser.add_argument("--cells", type=int, default=64, help="cells per field of the synthetic shards")
    parser.add_argument("--scheduler-fields", type=int, default=1536)
    parser.add_argument("--workers", type=int, default=4, help="worker processes of the scheduler section")
    parser.add_argument("--root", default=None)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    root = Path(args.root or tempfile.mkdtemp(prefix="bench-screen-"))
    report: dict = {}
    print(f"1. bookkeeping ({args.fields} fields a plate)")
    report["bookkeeping"] = [bookkeeping(root, n, args.fields) for n in (max(1, args.plates // 10), args.plates)]
    for row in report["bookkeeping"]:
        print(f"   {row['plates']:>5} plates: {row['us_per_field']:7.1f} us and {row['bytes_per_field']:6.0f} B "
              f"written per field; manifest {row['manifest_bytes'] / 1e3:.0f} kB (a whole-manifest rewrite: "
              f"{row['whole_manifest_bytes'] / 1e6:.1f} MB each time)")
    print(f"2. resume ({args.plates} plates x {args.fields} fields, real plates and shards)")
    screen = write_screen(root / "screen", args.plates, args.fields, args.cells)
    report["resume"] = [resume(screen, incomplete=0), resume(screen, incomplete=args.plates // 2)]
    for row in report["resume"]:
        print(f"   {row['incomplete']:>4} incomplete: {row['seconds']:6.1f} s, {1000 * row['s_per_plate']:6.1f} ms "
              f"per plate, {row['shard_reads']} shard reads, {row['fields_done']} fields found done")
    print("3. client memory while the cells store is streamed")
    report["memory"] = memory(screen, args.cells, root)
    for row in report["memory"]["sizes"]:
        print(f"   {row['cells']:>8} cells: peak +{row['peak'] / 1e6:.0f} MB, held +{row['held'] / 1e6:.0f} MB")
    row = report["memory"]
    print(f"   per added cell: peak {row['peak_b_per_added_cell']:.1f} B, "
          f"held {row['held_b_per_added_cell']:.1f} B (of which the obs names, Arrow strings: "
          f"{row['names_b_per_cell']:.1f} B)")
    print(f"4. scheduler ({args.scheduler_fields} tiny fields, {args.workers} worker processes, instant model)")
    report["scheduler"] = scheduler(root, args.scheduler_fields, args.workers)
    for row in report["scheduler"]:
        print(f"   {row['fields_per_task']:>2} field(s) a task: client {row['client_ms_per_field']:.2f} ms CPU "
              f"per field (wall {row['wall_ms_per_field']:.1f} ms, {row['failed']} failed)")
    fields = CPG0016["plates"] * CPG0016["fields_per_plate"]
    per_field_ms = report["scheduler"][-1]["client_ms_per_field"] + report["bookkeeping"][-1]["us_per_field"] / 1e3
    print(f"projection to cpg0016 ({fields / 1e6:.1f}M fields, {fields * CPG0016['cells_per_field'] / 1e9:.1f}B cells)")
    for gpus in (8, 64):
        rate = gpus * GPU_FIELDS_PER_S
        records = fields * report["bookkeeping"][-1]["bytes_per_field"]
        print(f"   {gpus:>2} GPUs ({rate:.0f} fields/s): client busy {rate * per_field_ms / 1000:.0%} of one core "
              f"(one field a task); run {fields / rate / 3600 / 24:.1f} days; records {records / 1e9:.1f} GB")
    print(f"   resume of the finished screen: {CPG0016['plates'] * report['resume'][0]['s_per_plate'] / 60:.1f} min "
          f"({report['resume'][0]['shard_reads']} shard reads here, none at any size)")
    cells = fields * CPG0016["cells_per_field"]
    memory_row = report["memory"]
    more = cells - memory_row["cells"]
    peak = memory_row["peak"] + max(0.0, memory_row["peak_b_per_added_cell"]) * more
    held = memory_row["held"] + max(0.0, memory_row["held_b_per_added_cell"]) * more
    print(f"   client memory: peak {peak / 1e9:.2f} GB, held {held / 1e9:.2f} GB "
          "(the largest size here plus the slope per added cell)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this process's peak RSS: {peak:.0f} MB; figures in {root})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
