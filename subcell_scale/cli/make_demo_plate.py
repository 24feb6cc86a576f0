"""``subcell-scale make-demo-plate``: write deterministic synthetic plates and their platemap."""

from __future__ import annotations

import argparse

NAME = "make-demo-plate"
HELP = ("write synthetic OME-Zarr plates (HPA-like, or Cell Painting with --cellpainting) with ground-truth "
        "cell and nucleus labels, plus platemap.csv, into OUT_DIR")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder for <plate>.zarr and platemap.csv")
    parser.add_argument("--cellpainting", action="store_true",
                        help="5-channel Cell Painting layout (DNA, ER, RNA, AGP, Mito at 0.598 um/px) instead of "
                             "the HPA-like one (microtubules, er, dna, protein at 0.32 um/px)")
    parser.add_argument("--plates", type=int, default=2, metavar="N", help="plates to write (default: 2)")
    parser.add_argument("--wells", type=int, default=24, metavar="N",
                        help="wells per plate, filling rows A.. of a 96-well plate, 384 above 96 (default: 24)")
    parser.add_argument("--fields", type=int, default=2, metavar="N", help="fields per well (default: 2)")
    parser.add_argument("--size", type=int, default=512, metavar="PX", help="field width and height (default: 512)")
    parser.add_argument("--cells", type=int, default=None, metavar="N",
                        help="cells per field (default: 10, or 40 with --cellpainting)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="random seed; the same seed gives byte-identical plates (default: 0)")
    parser.add_argument("--version", choices=("0.4", "0.5"), default="0.5",
                        help="NGFF version: 0.5 on Zarr v3 (default) or 0.4 on Zarr v2")


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from .._constants import Files
    from ..io.demo import make_demo_plate

    start = time.perf_counter()
    paths = make_demo_plate(args.out_dir, n_plates=args.plates, n_wells=args.wells, n_fields=args.fields,
                            field_size=args.size, cells_per_field=args.cells, seed=args.seed,
                            cellpainting=args.cellpainting, version=args.version)
    seconds = time.perf_counter() - start
    for path in paths:
        print(path)
    print(Path(args.out_dir) / Files.PLATEMAP)
    print(f"{len(paths)} plate(s) x {args.wells} wells x {args.fields} fields in {seconds:.1f} s")
    return 0
