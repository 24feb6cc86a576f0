"""How long a demo plate takes, and where the time goes.

Run: ``python3 benchmarks/bench_demo.py [--wells 24] [--fields 2] [--size 512] [--cellpainting]``, or at
screen geometry ``python3 benchmarks/bench_demo.py --geometry jump --wells 4 --processes 1 16``
(``--geometry hpa`` for HPA confocal fields; ``--no-labels`` as for a published JUMP plate).

Measured in one run, on the same fields:

- ``make_demo_plate`` end to end (one plate) with each ``--processes`` count: wall time, fields/s,
  and fields per CPU second (this process, its threads and its worker processes, spawning included),
  which is the fields/s one core sustains;
- the same fields synthesized one after another without writing, and then written one after another
  with ``PlateWriter`` without synthesizing: the ratio of the end-to-end time to their sum is what
  computing fields in threads ahead of the writer saves;
- shot noise drawn with ``Generator.poisson`` against the Gaussian limit ``acquire`` uses.

Times are wall clock and CPU (all threads of this process); on a shared machine read the ratios.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from subcell_scale.io import synthetic
from subcell_scale.io.demo import PlateEffects, design_platemap, layout_for, make_demo_plate, phenotypes, \
    synthesize_field
from subcell_scale.io.writer import PlateWriter


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]


def cpu_with_children() -> float:
    """CPU seconds of this process and of its finished child processes."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", choices=("demo", "jump", "hpa"), default="demo")
    parser.add_argument("--wells", type=int, default=24)
    parser.add_argument("--fields", type=int, default=None, help="default: the geometry's fields per well")
    parser.add_argument("--size", type=int, default=None, help="default: the geometry's field size")
    parser.add_argument("--cellpainting", action="store_true")
    parser.add_argument("--no-labels", dest="labels", action="store_false")
    parser.add_argument("--processes", type=int, nargs="+", default=[1],
                        help="process counts to time make_demo_plate with (default: 1)")
    args = parser.parse_args()
    layout = layout_for(args.geometry, cellpainting=args.cellpainting)
    args.fields = args.fields or layout.fields_per_well
    args.size = args.size or layout.field_size
    n = args.wells * args.fields

    with tempfile.TemporaryDirectory() as tmp:
        rates = []
        for processes in args.processes:
            start, cpu = time.perf_counter(), cpu_with_children()
            make_demo_plate(Path(tmp) / f"p{processes}", n_plates=1, n_wells=args.wells, n_fields=args.fields,
                            field_size=args.size, cellpainting=args.cellpainting, geometry=args.geometry,
                            labels=args.labels, processes=processes)
            rates.append((processes, time.perf_counter() - start, cpu_with_children() - cpu))
        plate_wall = rates[0][1]

        design = design_platemap(layout, n_plates=1, n_wells=args.wells, seed=0)
        effects = PlateEffects.draw(layout, args.size, seed=0, plate_index=0)
        table = phenotypes(layout)
        start = clock()
        fields = [(well, f, synthesize_field(layout, table[compound], effects, np.random.default_rng([0, 2, 0, w, f]),
                                             field_size=args.size, cells_per_field=layout.cells_per_field))
                  for w, (well, compound) in enumerate(zip(design["well"], design["compound"]))
                  for f in range(args.fields)]
        synth_wall, synth_cpu = since(start)

        start = clock()
        chunk = min(args.size, layout.max_chunk)
        with PlateWriter(Path(tmp) / "write-only.zarr", name="write-only", channel_names=layout.channels,
                         pixel_size=layout.pixel_size, rows=8, columns=12, field_count=args.fields,
                         chunks=(1, chunk, chunk)) as writer:
            for well, f, (image, cells, nuclei) in fields:
                writer.write_field(well, str(f), image,
                                   labels={"cells": cells, "nuclei": nuclei} if args.labels else None)
        write_wall, write_cpu = since(start)

    signal = fields[0][2][0].astype(np.float32) / 1000.0
    rng = np.random.default_rng(0)
    start = clock()
    for c in range(signal.shape[0]):
        rng.poisson(np.clip(signal[c] * layout.photons[c], 0, None))
    poisson_wall, _ = since(start)
    start = clock()
    for c in range(signal.shape[0]):
        synthetic.acquire(signal[c], rng, photons=layout.photons[c])
    gauss_wall, _ = since(start)

    print(f"{layout.name}: 1 plate x {args.wells} wells x {args.fields} fields of {args.size} px ({n} fields, "
          f"{'with' if args.labels else 'no'} labels)")
    for processes, wall, cpu in rates:
        print(f"  make_demo_plate, {processes:2d} process(es): wall {wall:6.2f} s  cpu {cpu:6.2f} s  "
              f"{n / wall:6.2f} fields/s  {n / cpu:5.2f} fields per CPU s")
    print(f"  synthesis only         wall {synth_wall:6.2f} s  cpu {synth_cpu:6.2f} s  "
          f"({1000 * synth_cpu / n:.0f} ms cpu per field)")
    print(f"  writing only           wall {write_wall:6.2f} s  cpu {write_cpu:6.2f} s  "
          f"({1000 * write_cpu / n:.0f} ms cpu per field)")
    print(f"  end to end / (synthesis + writing), wall: {plate_wall / (synth_wall + write_wall):.2f}")
    print(f"  writing / synthesis, cpu: {write_cpu / synth_cpu:.2f}")
    print(f"  Poisson sampling / acquire (Gaussian limit + read noise + uint16), one field: "
          f"{poisson_wall / gauss_wall:.1f}x")


if __name__ == "__main__":
    main()
