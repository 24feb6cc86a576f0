"""CPU cost per cell of everything around the model: read, decode, labels, filter, crop, mask, normalise.

Writes a small HPA-like demo plate, then for each output size times, on one core, the per-field work a
pipeline worker does before the model sees a batch, and reports milliseconds per cell. The numpy path
(:func:`extract_cells`) and the torch path on the CPU (:func:`extract_cells_torch`) are timed on the same
fields in the same run; segmentation (only needed when a plate has no labels) is timed per field.
Times are CPU seconds of this single-threaded process (``time.process_time``), i.e. per core, so a busy
machine inflates them less than wall-clock times; wall-clock figures are printed beside them.

    python3 benchmarks/bench_cells.py [--wells 4] [--fields 2] [--field-size 1024] [--cells-per-field 40]
        [--sizes 64 448]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # one core, so the figures are per core

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wells", type=int, default=4)
    parser.add_argument("--fields", type=int, default=2)
    parser.add_argument("--field-size", type=int, default=1024)
    parser.add_argument("--cells-per-field", type=int, default=40,
                        help="cells asked of the demo generator (HPA fields hold 20-60 at 2048 px, 0.08 um/px)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 448])
    parser.add_argument("--repeats", type=int, default=2, help="best of this many passes over the plate")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from subcell_scale.cells import CropSpec, extract_cells, extract_cells_torch
    from subcell_scale.io import make_demo_plate, open_plate
    from subcell_scale.segment import filter_cells, segment_field

    with tempfile.TemporaryDirectory() as tmp:
        path = make_demo_plate(tmp, n_plates=1, n_wells=args.wells, n_fields=args.fields,
                               field_size=args.field_size, cells_per_field=args.cells_per_field)[0]
        plate = open_plate(path)
        sites = [(w, f) for w in plate.wells for f in plate.fields(w)]
        pixel_size = plate.pixel_size
        print(f"plate {plate.name}: {len(sites)} fields of {args.field_size} px at {pixel_size[0]} um/px, "
              f"channels {plate.channel_names}; 1 thread")

        def prepare(well: str, field: str) -> tuple[np.ndarray, np.ndarray]:
            image = plate.read_field(well, field)
            labels, _ = filter_cells(plate.read_labels(well, field, "cells"), pixel_size)
            return image, labels

        for w, f in sites:  # warm-up: imports, metadata and the OS file cache
            prepare(w, f)
        cpu, wall = time.process_time(), time.perf_counter()
        n_read = 0
        for w, f in sites:
            _, labels = prepare(w, f)
            n_read += int(np.count_nonzero(np.bincount(labels.ravel())[1:]))
        cpu, wall = (time.process_time() - cpu) * 1e3, (time.perf_counter() - wall) * 1e3
        print(f"cells kept after filter_cells: {n_read}; read + decode + labels + filter alone: "
              f"{cpu / n_read:.2f} ms/cell CPU ({wall / n_read:.2f} wall)")

        results = {}
        for size in args.sizes:
            spec = CropSpec(out_size=size)
            for name, fn in (("numpy", extract_cells), ("torch-cpu", extract_cells_torch)):
                fn(*prepare(*sites[0]), pixel_size, spec)  # warm-up
                best, best_wall = np.inf, np.inf
                for _ in range(args.repeats):
                    cpu, wall = time.process_time(), time.perf_counter()
                    n_cells = 0
                    for w, f in sites:
                        image, labels = prepare(w, f)
                        crops, table = fn(image, labels, pixel_size, spec)
                        n_cells += len(table)
                    best = min(best, (time.process_time() - cpu) * 1e3 / n_cells)
                    best_wall = min(best_wall, (time.perf_counter() - wall) * 1e3 / n_cells)
                results[(size, name)] = best
                print(f"out {size:4d} px, window {spec.window(pixel_size)[0]} px, {name:9s}: "
                      f"{best:6.2f} ms/cell CPU ({best_wall:6.2f} wall) end to end (read..normalise), {n_cells} cells")
        for size in args.sizes:
            ratio = results[(size, "torch-cpu")] / results[(size, "numpy")]
            print(f"out {size} px: torch-cpu / numpy time = {ratio:.2f}")
        if len(args.sizes) > 1:
            lo, hi = min(args.sizes), max(args.sizes)
            print(f"numpy {hi} px / {lo} px time = {results[(hi, 'numpy')] / results[(lo, 'numpy')]:.2f}")

        cpu = time.process_time()
        for w, f in sites[:4]:
            segment_field(plate.read_field(w, f), plate.channel_names, pixel_size)
        seg_ms = (time.process_time() - cpu) * 1e3 / min(4, len(sites))
        print(f"segment_field (only without stored labels): {seg_ms:.0f} ms/field CPU, "
              f"{seg_ms * len(sites) / n_read:.1f} ms/cell")


if __name__ == "__main__":
    main()
