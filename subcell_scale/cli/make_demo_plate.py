"""``subcell-scale make-demo-plate``: write deterministic synthetic plates and their platemap."""

from __future__ import annotations

import argparse

NAME = "make-demo-plate"
HELP = ("write synthetic OME-Zarr plates (HPA-like, or Cell Painting with --cellpainting; small demo fields, or "
        "JUMP / HPA screen geometry with --geometry) with ground-truth cell and nucleus labels, plus platemap.csv, "
        "into OUT_DIR")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .._constants import DemoSize

    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder for <plate>.zarr and platemap.csv")
    parser.add_argument("--cellpainting", action="store_true",
                        help="5-channel Cell Painting layout (DNA, ER, RNA, AGP, Mito at 0.598 um/px) instead of "
                             "the HPA-like one (microtubules, er, dna, protein at 0.32 um/px)")
    parser.add_argument("--geometry", choices=("demo", "jump", "hpa"), default="demo",
                        help="demo: small quick fields (default); jump: JUMP Cell Painting fields (1080 px at "
                             "0.598 um/px, ~250 cells, 9 per well; implies --cellpainting); hpa: HPA Cell Atlas "
                             "confocal fields (2048 px at 0.08 um/px, ~20 cells, 4 per well)")
    parser.add_argument("--plates", type=int, default=DemoSize.PLATES, metavar="N",
                        help="plates to write (default: %(default)s, as the demo)")
    parser.add_argument("--wells", type=int, default=DemoSize.WELLS, metavar="N",
                        help="wells per plate, filling rows A.. of a 96-well plate, 384 above 96 (default: "
                             "%(default)s, as the demo)")
    parser.add_argument("--fields", type=int, default=None, metavar="N",
                        help=f"fields per well (default: {DemoSize.FIELDS}, as the demo; 9 for --geometry jump, 4 "
                             "for --geometry hpa)")
    parser.add_argument("--size", type=int, default=None, metavar="PX",
                        help="field width and height (default: 512; 1080 for jump, 2048 for hpa)")
    parser.add_argument("--cells", type=int, default=None, metavar="N",
                        help="cells per field (default: 10, or 40 with --cellpainting; 250 for jump, 20 for hpa)")
    parser.add_argument("--no-labels", dest="labels", action="store_false",
                        help="store no ground-truth label images, like a published JUMP plate (runs segment it)")
    parser.add_argument("--processes", type=int, default=1, metavar="N",
                        help="worker processes synthesizing and writing fields (default: 1; use the number of "
                             "cores for plate-scale plates); the plates are the same whatever the number")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="random seed; the same seed gives byte-identical plates (default: 0)")
    parser.add_argument("--version", choices=("0.4", "0.5"), default="0.5",
                        help="NGFF version: 0.5 on Zarr v3 (default) or 0.4 on Zarr v2")


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from .._constants import Files
    from ..io.demo import layout_for, make_demo_plate

    start = time.perf_counter()
    paths = make_demo_plate(args.out_dir, n_plates=args.plates, n_wells=args.wells, n_fields=args.fields,
                            field_size=args.size, cells_per_field=args.cells, seed=args.seed,
                            cellpainting=args.cellpainting, geometry=args.geometry, labels=args.labels,
                            processes=args.processes, version=args.version)
    seconds = time.perf_counter() - start
    for path in paths:
        print(path)
    print(Path(args.out_dir) / Files.PLATEMAP)
    n_fields = (args.fields if args.fields is not None
                else layout_for(args.geometry, cellpainting=args.cellpainting).fields_per_well)
    total = len(paths) * args.wells * n_fields
    print(f"{len(paths)} plate(s) x {args.wells} wells x {n_fields} fields in {seconds:.1f} s "
          f"({total / seconds:.1f} fields/s)")
    return 0
