"""The pipeline's own cost per cell on the CPU: everything but the model's forward pass, per preset.

A SubCell whose forward pass returns zeros at once (the "instant model") runs through
``embed_plate`` in this process, on one thread, over realistic synthetic plates: JUMP geometry
(1080 px fields at 0.598 um/px, ~250 cells, 5 channels, ``jump-cellpainting``: three passes of
478-px crops) and HPA geometry (2048 px at 0.08 um/px, ~20 cells, 4 channels, ``hpa``: 448-px
masked crops). Both with labels in the plate and, for JUMP, with segmentation in the run.

Printed per preset: seconds per field and per cell of the whole pipeline (reading, labels or
segmentation, filtering, crops, the empty forward, shards, manifest, the cells store), fields per
second one core sustains, the cores needed to feed one GPU at R crops/s (``--rate``, default 3000),
and, as a ratio measured in the same run, the pipeline's time over the bare stage functions
(read + labels + filter + crop called directly on the same fields): the orchestration's overhead.

Usage::

    python benchmarks/bench_pipeline_cost.py                # 8 JUMP and 16 HPA fields, a few minutes
    python benchmarks/bench_pipeline_cost.py --fields 4 --geometry jump
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PRESET = {"jump": "jump-cellpainting", "hpa": "hpa"}


def instant_model(channels: tuple[str, ...]):
    """A full-size SubCell whose forward pass is free: zeros of the right shapes."""
    from subcell_scale.models import SubCell
    from subcell_scale.models.config import ModelConfig
    from subcell_scale.models.subcell import SubCellOutput

    class InstantSubCell(SubCell):
        def forward(self, x: torch.Tensor, **_: object) -> SubCellOutput:
            c = self.config
            b, _, h, w = x.shape
            return SubCellOutput(embedding=torch.zeros(b, c.embedding_dim),
                                 probabilities=torch.zeros(b, c.num_classes),
                                 pool_attention=torch.zeros(b, c.pool_heads, h // c.patch_size, w // c.patch_size))

    # the published width (1536-d embeddings, 31 classes); one layer only, as its weights are never used
    return InstantSubCell(ModelConfig(num_channels=len(channels), num_layers=1), n_classifiers=1, channels=channels,
                          device="cpu")


def bare_stages(path: Path, preset: str, n_fields: int) -> tuple[float, int]:
    """Seconds for read + labels + filter + crop called directly on the plate's fields, and their cells."""
    from subcell_scale.cells import extract_cells
    from subcell_scale.io import open_plate
    from subcell_scale.params import RunParams
    from subcell_scale.segment import filter_cells

    from subcell_scale.intensity import histogram_percentile, plate_histogram

    plate = open_plate(path)
    params = RunParams.resolve(preset)
    plan = params.plan(plate)
    channels = plan.passes if plan.multi_pass else plan.passes[0]
    sites = [(w, f) for w in plate.wells for f in plate.fields(w)][:n_fields]
    start, cells = time.perf_counter(), 0
    upper = None
    if params.crop.plate_upper_percentile is not None:  # the plate pass the pipeline makes too
        upper = tuple(histogram_percentile(plate_histogram(plate, threads=1), params.crop.plate_upper_percentile))
    for well, fld in sites:
        image = plate.read_field(well, fld)
        labels = plate.read_labels(well, fld, params.label_name)
        kept, _ = filter_cells(labels, plate.pixel_size, **params.cells.kwargs())
        crops, table = extract_cells(image, kept, plate.pixel_size, params.crop, channels=channels, plate_upper=upper)
        cells += len(table)
        del crops
    return time.perf_counter() - start, cells


def pipeline(path: Path, preset: str, model, out: Path, *, labels: bool) -> tuple[float, int, int]:
    from subcell_scale import embed_plate

    start = time.perf_counter()
    cells = embed_plate(str(path), model, out=out, preset=preset, progress=False, crop_on="cpu",
                        segment_if_missing=not labels, batch_size=64)
    fields = sum(1 for _ in (out / "shards").rglob("*.npz"))
    return time.perf_counter() - start, cells.n_obs, fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--geometry", nargs="+", choices=sorted(PRESET), default=["jump", "hpa"])
    parser.add_argument("--fields", type=int, default=None, help="fields per geometry (default 8 jump, 16 hpa)")
    parser.add_argument("--rate", type=float, default=3000.0, help="GPU crops per second to feed (default 3000)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from subcell_scale.io import open_plate
    from subcell_scale.io.demo import make_demo_plate
    from subcell_scale.params import RunParams

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for geometry in args.geometry:
            n_fields = args.fields or {"jump": 8, "hpa": 16}[geometry]
            n_wells = 4  # the demo platemap's smallest plate
            preset = PRESET[geometry]
            for labels in ((True, False) if geometry == "jump" else (True,)):
                root = Path(tmp) / f"{geometry}-{labels}"
                (path,) = make_demo_plate(root / "plates", n_plates=1, n_wells=n_wells, geometry=geometry,
                                          n_fields=-(-n_fields // n_wells), labels=labels)
                channels = RunParams.resolve(preset).plan(open_plate(path)).model_channels
                model = instant_model(channels)
                seconds, n_cells, fields = pipeline(path, preset, model, root / "run", labels=labels)
                bare = bare_stages(path, preset, fields) if labels else (float("nan"), n_cells)
                passes = 3 if geometry == "jump" else 1
                per_field = seconds / fields
                rows.append({"geometry": geometry, "labels": "in plate" if labels else "segmented in the run",
                             "fields": fields, "cells": n_cells, "s/field": per_field, "ms/cell": 1e3 * seconds / n_cells,
                             "fields/s/core": 1 / per_field,
                             "cores/GPU": args.rate / passes / (n_cells / fields) * per_field,
                             "pipeline/bare": seconds / bare[0] if labels else float("nan")})
    print(f"{'geometry':<8} {'labels':<22} {'fields':>6} {'cells':>6} {'s/field':>8} {'ms/cell':>8} "
          f"{'fields/s/core':>13} {'cores/GPU':>9} {'pipeline/bare':>13}")
    for r in rows:
        print(f"{r['geometry']:<8} {r['labels']:<22} {r['fields']:>6} {r['cells']:>6} {r['s/field']:>8.3f} "
              f"{r['ms/cell']:>8.2f} {r['fields/s/core']:>13.2f} {r['cores/GPU']:>9.1f} {r['pipeline/bare']:>13.2f}")
    print(f"(cores/GPU: one core's fields per second against a GPU embedding {args.rate:.0f} crops/s, crops cut "
          "on the CPU; with crops cut on the GPU, see benchmarks/bench_segment.py for the rest)")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
