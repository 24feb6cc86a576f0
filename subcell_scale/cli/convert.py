"""``subcell-scale convert``: plain image files indexed by a CSV -> NGFF HCS plates."""

from __future__ import annotations

import argparse

NAME = "convert"
HELP = ("convert TIFF/PNG files listed in an index CSV (plate, well, field, channel, path) into OME-Zarr HCS plates; "
        "compressed microscope TIFFs (LZW, ZSTD, Deflate) included")


def _pixel_size(text: str) -> tuple[float, float]:
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or Y,X pair of numbers") from None
    if len(values) not in (1, 2) or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give one positive number or a Y,X pair")
    return (values[0], values[-1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", metavar="INDEX.csv",
                        help="one row per file: plate, well, field, and channel (single-channel file), "
                             "channels ('a;b;c', multi-channel file) or label (mask name); path relative "
                             "to the index")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder for <plate>.zarr (one per plate in the index)")
    parser.add_argument("--pixel-size", required=True, type=_pixel_size, metavar="UM",
                        help="micrometres per pixel (one number, or Y,X)")
    parser.add_argument("--version", choices=("0.4", "0.5"), default="0.5",
                        help="NGFF version: 0.5 (Zarr v3, default) or 0.4 (Zarr v2)")
    parser.add_argument("--channels", default=None, metavar="A,B,C",
                        help="channel order of the plates (default: order of first appearance in the index)")
    parser.add_argument("--levels", type=int, default=2, help="resolution levels per field (default: 2)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace plates that exist at OUT_DIR/<plate>.zarr, labels included (default: refuse)")
    parser.add_argument("--validate", action="store_true",
                        help="validate every written plate (ome-zarr-models and subcell-scale's own checks)")


def run(args: argparse.Namespace) -> int:
    from ..io.convert import convert_images
    from ..io.validate import validate_plate

    channels = [c.strip() for c in args.channels.split(",") if c.strip()] if args.channels else None
    paths = convert_images(args.index, args.out_dir, pixel_size=args.pixel_size, version=args.version,
                           channels=channels, levels=args.levels, overwrite=args.overwrite)
    for path in paths:
        if args.validate:
            validate_plate(path)
        print(path)
    return 0
