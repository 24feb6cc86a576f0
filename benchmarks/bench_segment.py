"""CPU cost of a field before the model, and how many CPU cores keep one GPU busy (not a test).

Run::

    python benchmarks/bench_segment.py                       # 8 JUMP fields and 8 HPA fields
    python benchmarks/bench_segment.py --fields 16 --root /tmp/bench-plates --processes 16
    python benchmarks/bench_segment.py --engine-rate 3000    # model crops/s of one GPU
    python benchmarks/bench_segment.py --geometry hpa --set work_pixel_size_um=0.64   # a cheaper grid

On realistic synthetic plates (``make_demo_plate(geometry="jump" | "hpa")``: 1080 px JUMP fields at
0.598 um/px with ~250 cells, 2048 px HPA confocal fields at 0.08 um/px with ~20 cells), one process
limited to one core (one BLAS, Blosc and zarr thread) does, per field, what a run does before the
model, with the parameters of the matching preset (``jump-cellpainting``, ``hpa``):

- read: ``Plate.read_field`` (zarr, Blosc-LZ4);
- segment: :func:`subcell_scale.segment.segment_field` with the preset's ``segmentation`` parameters;
- filter: :func:`subcell_scale.segment.filter_cells` (the preset's area bounds and border rule);
- crop: :func:`subcell_scale.cells.extract_cells` with the preset's crop geometry and passes, on CPU
  (a GPU worker cuts crops on its device instead, so it is listed apart).

Times are CPU seconds of this process (``time.process_time``, every thread counted), medians over
fields: core-seconds, what a machine pays whatever its load. Cores per GPU = (cells/s the GPU
embeds / kept cells per field) x CPU seconds per field, where the GPU embeds ``engine_rate / passes``
cells/s (3 passes per cell for ``jump-cellpainting``, 1 for ``hpa``). The ground-truth labels of the
synthetic plates give the segmentation's F1 and mean IoU (IoU > 0.5 matching) alongside; with
``--set`` (segmentation parameters over the preset's), the labels are also compared with those of the
preset's own parameters, which is the tolerance a cheaper setting trades.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # one core, set before numpy loads

import argparse
import statistics
import tempfile
import time
from pathlib import Path

GEOMETRIES = {"jump": "jump-cellpainting", "hpa": "hpa"}
STAGES = ("read", "segment", "filter", "crop")


def one_core() -> None:
    """Blosc and zarr decode with one thread, as a worker with one core would."""
    import numcodecs.blosc
    import zarr

    numcodecs.blosc.set_nthreads(1)
    zarr.config.set({"threading.max_workers": 1, "async.concurrency": 1})


def plate_for(root: Path, geometry: str, n_fields: int, processes: int) -> Path:
    """A one-plate synthetic screen with at least ``n_fields`` fields (reused when already in ``root``)."""
    from subcell_scale.io.demo import layout_for, make_demo_plate

    layout = layout_for(geometry)
    path = root / geometry / f"{layout.plate_prefix}-1.zarr"
    if path.exists():
        return path
    n_wells = max(4, -(-n_fields // layout.fields_per_well))
    start = time.perf_counter()
    make_demo_plate(root / geometry, n_plates=1, n_wells=n_wells, geometry=geometry, processes=processes)
    print(f"  wrote {n_wells} wells x {layout.fields_per_well} {geometry} fields in "
          f"{time.perf_counter() - start:.0f} s ({processes} processes)")
    return path


def measure(path: Path, preset: str, n_fields: int, overrides: dict) -> dict:
    from subcell_scale.cells import extract_cells
    from subcell_scale.io import open_plate
    from subcell_scale.params import RunParams
    from subcell_scale.segment import filter_cells, match_scores, segment_field

    plate = open_plate(path)
    params = RunParams.resolve(preset)
    plan = params.plan(plate)
    segmentation = {**params.segmentation.kwargs(), **overrides}
    spec = params.crop
    upper = None
    if spec.plate_upper_percentile is not None:  # the plate pass the pipeline makes once, before the fields
        from subcell_scale.intensity import histogram_percentile, plate_histogram

        upper = tuple(histogram_percentile(plate_histogram(plate), spec.plate_upper_percentile))
    passes = plan.passes
    channels = passes if plan.multi_pass else passes[0]
    sites = [(w, f) for w in plate.wells for f in plate.fields(w)][:n_fields]
    seconds: dict[str, list[float]] = {s: [] for s in STAGES}
    cells, kept, f1, iou, agree_f1, agree_iou = [], [], [], [], [], []
    for well, field in sites:
        start = time.process_time()
        image = plate.read_field(well, field)
        t_read = time.process_time()
        labels = segment_field(image, plate.channel_names, plate.pixel_size, **segmentation)
        t_segment = time.process_time()
        filtered, _ = filter_cells(labels, plate.pixel_size, **params.cells.kwargs())
        t_filter = time.process_time()
        crops, table = extract_cells(image, filtered, plate.pixel_size, spec, channels=channels, plate_upper=upper)
        t_crop = time.process_time()
        del crops
        for stage, (a, b) in zip(STAGES, ((start, t_read), (t_read, t_segment), (t_segment, t_filter),
                                          (t_filter, t_crop))):
            seconds[stage].append(b - a)
        scores = match_scores(labels, plate.read_labels(well, field, "cells"))
        cells.append(scores["n_predicted"])
        kept.append(len(table))
        f1.append(scores["f1"])
        iou.append(scores["mean_iou"])
        if overrides:
            reference = segment_field(image, plate.channel_names, plate.pixel_size, **params.segmentation.kwargs())
            agreement = match_scores(labels, reference)
            agree_f1.append(agreement["f1"])
            agree_iou.append(agreement["mean_iou"])
    return {"fields": len(sites), "passes": len(passes), "shape": image.shape,
            "seconds": {s: statistics.median(v) for s, v in seconds.items()},
            "cells": statistics.mean(cells), "kept": statistics.mean(kept),
            "f1": statistics.mean(f1), "iou": statistics.mean(iou), "crop_size": spec.size,
            "segmentation": segmentation,
            "agreement": (statistics.mean(agree_f1), statistics.mean(agree_iou)) if overrides else None}


def report(geometry: str, preset: str, m: dict, engine_rate: float) -> None:
    s = m["seconds"]
    cells_per_s = engine_rate / m["passes"]
    fields_per_s = cells_per_s / m["kept"]
    before_model_gpu_crops = s["read"] + s["segment"] + s["filter"]
    c, h, w = m["shape"]
    print(f"\n{geometry} ({preset}): {m['fields']} fields of {c} x {h} x {w}, {m['cells']:.0f} cells segmented, "
          f"{m['kept']:.0f} kept per field; {m['passes']} pass(es) of {m['crop_size']} px crops")
    print(f"  segmentation {m['segmentation'] or '(defaults)'} vs ground truth: F1 {m['f1']:.3f}, "
          f"mean IoU {m['iou']:.3f}")
    if m["agreement"]:
        print(f"  vs the preset's own segmentation: F1 {m['agreement'][0]:.3f}, mean IoU {m['agreement'][1]:.3f}")
    for stage in STAGES:
        print(f"  {stage:8s} {s[stage]:7.3f} CPU s/field   {1000 * s[stage] / m['kept']:7.2f} ms/cell")
    print(f"  one GPU at {engine_rate:.0f} crops/s embeds {cells_per_s:.0f} cells/s = {fields_per_s:.1f} fields/s; "
          f"cores it needs:")
    print(f"    segmentation alone           {fields_per_s * s['segment']:6.1f}")
    print(f"    read + segment + filter      {fields_per_s * before_model_gpu_crops:6.1f}   (crops cut on the GPU)")
    print(f"    ... + crops on the CPU       {fields_per_s * (before_model_gpu_crops + s['crop']):6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=8, help="fields measured per geometry (default: 8)")
    parser.add_argument("--engine-rate", type=float, default=3000.0,
                        help="model crops per second of one GPU (default: 3000, an H100-class target)")
    parser.add_argument("--geometry", choices=tuple(GEOMETRIES), nargs="+", default=list(GEOMETRIES))
    parser.add_argument("--root", default=None, help="where the synthetic plates are kept and reused "
                                                     "(default: a temporary folder)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="processes writing the plates (default: every core)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a segmentation parameter over the preset's (repeatable), e.g. "
                             "work_pixel_size_um=0.64 or nucleus_min_distance_um=10")
    args = parser.parse_args()
    overrides = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        overrides[key] = value if value.isalpha() else float(value)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp)
        paths = {g: plate_for(root, g, args.fields, args.processes) for g in args.geometry}
        one_core()
        for geometry, path in paths.items():
            preset = GEOMETRIES[geometry]
            report(geometry, preset, measure(path, preset, args.fields, overrides), args.engine_rate)


if __name__ == "__main__":
    main()
