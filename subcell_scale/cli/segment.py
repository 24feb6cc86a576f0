"""``subcell-scale segment``: segment every field of plates and store the labels inside them."""

from __future__ import annotations

import argparse

from ._options import add_cluster_options, client_for

NAME = "segment"
HELP = "segment every field (nuclei from DNA, cells on the cytoplasm) and write the labels into the plate"


def _param(text: str) -> tuple[str, float | str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        msg = f"expected KEY=VALUE, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    try:
        return key.strip(), float(value)
    except ValueError:
        return key.strip(), value.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plates", nargs="+", metavar="PLATE", help="OME-Zarr HCS plate(s), written in place")
    parser.add_argument("--channel-nucleus", metavar="NAME", default=None,
                        help="nuclear stain channel (default: the first of DNA, DAPI, Hoechst, nucleus...)")
    parser.add_argument("--channel-cell", metavar="NAME", action="append", default=None,
                        help="cytoplasm channel; repeat to average several (default: microtubules/ER, "
                             "or ER/AGP/RNA for Cell Painting)")
    parser.add_argument("--label-name", default="cells", metavar="NAME",
                        help="label image written into each field, reused by later runs (default: cells)")
    parser.add_argument("--overwrite", action="store_true", help="re-segment fields that already have the labels")
    parser.add_argument("--set", dest="params", type=_param, action="append", default=[], metavar="KEY=VALUE",
                        help="a segmentation parameter in micrometres, e.g. --set nucleus_min_distance_um=6 "
                             "(see subcell_scale.segment.SegmentParams)")
    add_cluster_options(parser, default="run in this process")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from .._constants import Status
    from ..segment import segment_plate
    from . import outcome_code

    failed = 0
    with client_for(args, default=None) as client:
        for plate in args.plates:
            summary = segment_plate(plate, nucleus_channel=args.channel_nucleus, cell_channel=args.channel_cell,
                                    label_name=args.label_name, overwrite=args.overwrite, client=client,
                                    progress=False if args.no_progress else None, **dict(args.params))
            print(f"{summary['plate']}: {summary['done']} fields segmented, {summary['skipped']} kept, "
                  f"{summary['failed']} failed; {summary['n_cells']} cells in labels/{args.label_name} "
                  f"({summary['seconds']:.1f} s)")
            for record in summary["fields"]:
                if record["status"] == Status.FAILED:
                    print(f"  failed: {record['error']}")
            failed += summary[Status.FAILED]
    return outcome_code(failed)
