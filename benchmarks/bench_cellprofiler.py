"""Cost of the CellProfiler view: CPU cores per GPU for each cp_measure feature group.

A worker measures its fields' kept cells on CPU threads while its GPU embeds. To keep pace, a node
needs ``seconds per field x fields per second`` cores for each group. This script synthesizes one
field of each geometry with the demo generator (``"jump"``: 1080 px, 5 Cell Painting channels, about
250 cells; ``"hpa"``: 2048 px, 4 channels, about 20 cells), times each group on it with
:func:`subcell_scale.cellprofiler.measure_cells` (CPU seconds of one thread, best of ``--repeat``: a
measure of cores that other work on the machine does not inflate), and converts to
cores per GPU at the GPU's embedding rate: ``--jump-fps`` JUMP fields per second (default 5; three
478-px crops per cell), and for HPA the same crops per second at one 448-px crop per cell.

    python benchmarks/bench_cellprofiler.py [--geometry jump hpa] [--jump-fps 5] [--repeat 2]

Prints one row per group and geometry: seconds per field, milliseconds per cell, cores per GPU, and
the defaults' and every group's totals.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd

os.environ.setdefault("OMP_NUM_THREADS", "1")


def synthetic_field(geometry: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One field of the demo generator at ``geometry``: image (c, y, x) uint16, cell labels, channel names."""
    from subcell_scale.io.demo import (
        _plate_effects,
        layout_for,
        phenotypes,
        synthesize_field,
    )

    layout = layout_for(geometry)
    phenotype = next(iter(phenotypes(layout).values()))
    effects = _plate_effects(layout.name, layout.field_size, seed, 0)
    image, cells, _ = synthesize_field(layout, phenotype, effects, np.random.default_rng(seed),
                                       field_size=layout.field_size, cells_per_field=layout.cells_per_field)
    return image, cells, list(layout.channels)


def time_groups(image: np.ndarray, labels: np.ndarray, channels: list[str], groups: tuple[str, ...],
                repeat: int) -> dict[str, float]:
    """Best-of-``repeat`` CPU seconds of each group on one field."""
    from subcell_scale.cellprofiler import (
        cellprofiler_pixels,
        feature_names,
        measure_cells,
    )

    pixels = cellprofiler_pixels(image)
    out = {}
    for group in groups:
        feature_names(tuple(channels), (group,))  # column names cached before timing, as in a run
        best = float("inf")
        for _ in range(repeat):
            start = time.process_time()
            measure_cells(pixels, labels, channels, (group,))
            best = min(best, time.process_time() - start)
        print(f"  {group}: {best:.2f} s", flush=True)
        out[group] = best
    return out


def main() -> None:
    from subcell_scale.cellprofiler import DEFAULT_GROUPS, GROUPS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--geometry", nargs="+", default=["jump", "hpa"], choices=["jump", "hpa", "demo"])
    parser.add_argument("--jump-fps", type=float, default=5.0, help="JUMP fields a GPU embeds per second")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--groups", nargs="+", default=list(GROUPS))
    args = parser.parse_args()
    crops_per_s = args.jump_fps * 250 * 3  # JUMP: about 250 cells x 3 passes per field
    rows = []
    for geometry in args.geometry:
        image, labels, channels = synthetic_field(geometry)
        n_cells = int(len(np.unique(labels)) - 1)
        print(f"{geometry}: {image.shape}, {n_cells} cells", flush=True)
        cells_per_s = crops_per_s / 3 if geometry == "jump" else crops_per_s  # one pass per HPA cell
        seconds = time_groups(image, labels, channels, tuple(args.groups), args.repeat)
        for group, s in seconds.items():
            rows.append({"geometry": f"{geometry} ({image.shape[-1]} px, {len(channels)} ch, {n_cells} cells)",
                         "group": group, "s_per_field": s, "ms_per_cell": 1e3 * s / n_cells,
                         "cores_per_gpu": s / n_cells * cells_per_s})
    table = pd.DataFrame(rows)
    totals = []
    for geometry, part in table.groupby("geometry", sort=False):
        for name, groups in (("default groups", DEFAULT_GROUPS), ("all groups", GROUPS)):
            chosen = part[part["group"].isin(groups)]
            totals.append({"geometry": geometry, "group": name, **chosen[["s_per_field", "ms_per_cell",
                                                                          "cores_per_gpu"]].sum().to_dict()})
    table = pd.concat([table, pd.DataFrame(totals)], ignore_index=True)
    print(f"GPU rate: {args.jump_fps:g} JUMP fields/s = {crops_per_s:.0f} crops/s; one thread per measurement")
    print(table.round({"s_per_field": 3, "ms_per_cell": 2, "cores_per_gpu": 1}).to_string(index=False))


if __name__ == "__main__":
    main()
