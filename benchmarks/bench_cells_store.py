"""Client memory while the cells store of a run is assembled: flat in the number of cells.

Synthetic shards of 4608-value cells (the ``jump-cellpainting`` width) are written for a real plate
(one field per well and field of a 384-well plate); then, in a fresh process each, the cells store
is assembled from them:

- ``streamed``: :func:`subcell_scale.cellstore.stream_cells` (what ``embed_plate(out=...)`` does);
- ``in memory``: every shard read and concatenated, then written (what the pipeline did before),
  the baseline, run for the smaller size only (the larger one would need tens of GB).

Printed: cells, peak RSS growth of the assembling process over its RSS before assembly (the least of
``--repeats`` runs: the row copy's few chunk buffers in flight make the peak vary by some 30 MB from
run to run, noise that only adds), bytes per cell, the RSS growth still held once the AnnData is
returned (``obs`` and what the process keeps: no thread noise), the ratio streamed / in-memory at the
common size, and the growth per added cell of both, least-squares slopes over the streamed sizes.

Usage::

    python benchmarks/bench_cells_store.py                  # 20k and 200k cells, ~5 minutes on 2 cores
    python benchmarks/bench_cells_store.py --cells 20000    # one size
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

WIDTH = 4608
PER_FIELD = 200


def make_run(root: Path, n_cells: int) -> dict:
    """A plate with enough fields and one synthetic shard per field; returns what the child needs."""
    import pandas as pd

    from subcell_scale.io import PlateWriter
    from subcell_scale.rundir import FieldId
    from subcell_scale.store import Shard, write_shard

    n_fields = -(-n_cells // PER_FIELD)
    wells = [f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]
    per_well = -(-n_fields // len(wells))
    plate_path = root / "plate.zarr"
    rng = np.random.default_rng(0)
    sites = [(w, str(f)) for w in wells for f in range(per_well)][:n_fields]
    with PlateWriter(plate_path, name="bench", channel_names=["DNA", "ER", "RNA", "AGP", "Mito"],
                     pixel_size=0.598) as writer:
        for well, fld in sites:
            writer.write_field(well, fld, np.zeros((5, 16, 16), np.uint16))
    shards = []
    for well, fld in sites:
        fid = FieldId("bench", well, fld)
        labels = np.arange(1, PER_FIELD + 1)
        cells = pd.DataFrame({"label": labels, "area": np.full(PER_FIELD, 300), "centroid_y": rng.random(PER_FIELD),
                              "centroid_x": rng.random(PER_FIELD)})
        shard = Shard(rng.random((PER_FIELD, WIDTH), dtype=np.float32), rng.random((PER_FIELD, 93), dtype=np.float32),
                      cells, {}, {"digest": "bench"})
        path = root / fid.shard
        write_shard(path, shard)
        shards.append([fid.plate, fid.well, fid.field, str(path)])
    spec = {"plate": str(plate_path), "shards": shards, "out": str(root / "out"), "file": str(root / "spec.json")}
    Path(spec["file"]).write_text(json.dumps(spec))  # a plate of shards is too long for a command line
    return spec


CHILD = r"""
import json, resource, sys
spec = json.loads(open(sys.argv[1]).read())
mode = sys.argv[2]
import numpy as np
import anndata, dask, zarr, pandas  # imports before the baseline RSS
from subcell_scale import cellstore
from subcell_scale.cellstore import RunContext
from subcell_scale.io import open_plate
from subcell_scale.models import resolve_model, ModelSpec
from subcell_scale.params import RunParams
from subcell_scale.rundir import FieldId
from subcell_scale.store import read_shard
import psutil

plate = open_plate(spec["plate"])
params = RunParams.resolve("jump-cellpainting")
model = resolve_model(ModelSpec("random", config={"hidden_size": 768}, options={"channels": ["er", "nucleus", "protein"]}))
plan = params.plan(plate, ["er", "nucleus", "protein"])
context = RunContext([plate], [plan], params, model)
fields = [(FieldId(p, w, f), path) for p, w, f, path in spec["shards"]]
before = psutil.Process().memory_info().rss
if mode == "streamed":
    adata = cellstore.stream_cells(fields, context, [], spec["out"])
    n = adata.n_obs
else:
    adata = cellstore.assemble([(fid, read_shard(path)) for fid, path in fields], context, [])
    cellstore.write_cells(adata, spec["out"])
    n = adata.n_obs
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
held = psutil.Process().memory_info().rss - before  # the returned AnnData alive: obs and the lazy matrices
print(json.dumps({"cells": n, "growth": peak - before, "held": held}))
"""


def measure(spec: dict, mode: str, repeats: int) -> dict:
    """The run with the least peak growth of ``repeats`` fresh processes."""
    runs = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", CHILD, spec["file"], mode], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"the {mode} assembly failed:\n{done.stderr}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return min(runs, key=lambda r: r["growth"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--in-memory-up-to", type=int, default=20_000,
                        help="also measure the in-memory baseline at sizes up to this (it holds every cell)")
    parser.add_argument("--repeats", type=int, default=3, help="assemblies per size and mode; the least peak counts")
    parser.add_argument("--plot", default=None, metavar="PNG", help="draw peak client memory against cells")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted(args.cells):
            root = Path(tmp) / str(n)
            root.mkdir()
            spec = make_run(root, n)
            rows.append(("streamed", measure(spec, "streamed", args.repeats)))
            if n <= args.in_memory_up_to:
                rows.append(("in memory", measure(spec, "in-memory", 1)))  # GBs: its noise does not matter
    print(f"{'assembly':<10} {'cells':>8} {'peak growth (MB)':>17} {'bytes/cell':>11} {'held after (MB)':>16}")
    for mode, r in rows:
        print(f"{mode:<10} {r['cells']:>8} {r['growth'] / 1e6:>17.1f} {r['growth'] / r['cells']:>11.0f} "
              f"{r['held'] / 1e6:>16.1f}")
    small = [r for m, r in rows if r["cells"] == rows[0][1]["cells"]]
    if len(small) == 2:
        print(f"streamed / in memory at {small[0]['cells']} cells: {small[0]['growth'] / small[1]['growth']:.3f}")
    big = [r for m, r in rows if m == "streamed"]
    if len(big) > 1:
        sizes = ", ".join(str(r["cells"]) for r in big)
        for key, what in (("growth", "peak growth"), ("held", "held after")):
            per_cell = np.polyfit([r["cells"] for r in big], [r[key] for r in big], 1)[0]
            print(f"streamed {what} per added cell (least squares over {sizes} cells): {per_cell:.0f} bytes")
    if args.plot:
        plot(rows, args.plot)


def plot(rows: list[tuple[str, dict]], path: str) -> None:
    """Peak client memory against cells, streamed and in memory, with the embeddings' own size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for mode, color in (("streamed", "#1f77b4"), ("in memory", "#d62728")):
        points = sorted((r["cells"], r["growth"] / 2**30) for m, r in rows if m == mode)
        if points:
            ax.plot(*zip(*points), marker="o", color=color, label=f"{mode}: peak growth")
    held = sorted((r["cells"], r["held"] / 2**30) for m, r in rows if m == "streamed")
    ax.plot(*zip(*held), marker=".", linestyle="--", color="#1f77b4", label="streamed: held once returned")
    cells = sorted({r["cells"] for _, r in rows})
    ax.plot(cells, [n * WIDTH * 4 / 2**30 for n in cells], linestyle=":", color="#555555",
            label=f"the embeddings themselves ({WIDTH} float32 per cell)")
    ax.set(xlabel="cells in the run", ylabel="client memory (GiB)",
           title="Client memory while a run's cells store is assembled")
    ax.legend(frameon=False, fontsize="small")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
