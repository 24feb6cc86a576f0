"""``subcell-scale segment``: segment every field of plates and store the labels (in the plates, or in --out)."""

from __future__ import annotations

import argparse

from ._options import add_run_options, client_for, given_options

NAME = "segment"
HELP = ("segment every field (nuclei from DNA, cells on the cytoplasm) and write the labels into the plate "
        "(or into --out for a plate that cannot be written)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plates", nargs="*", metavar="PLATE",
                        help="OME-Zarr HCS plate(s), paths, URLs or globs; or 'plates' in --config, or --plates-from")
    add_run_options(parser, NAME, helps={
        "out": "run directory recording each field (manifest.json); it keeps the labels of a plate that cannot "
               "be written, where runs into the same directory find them",
        "set": "preset parameters, or segmentation parameters by name in micrometres, e.g. "
               "nucleus_min_distance_um=6 (see subcell_scale.segment.SegmentParams; values as JSON)"})


def run(args: argparse.Namespace) -> int:
    from .._constants import Status
    from ..runspec import option_keywords
    from ..workflow import segment_plate
    from . import outcome_code

    options = given_options(args, NAME)
    keywords = option_keywords({k: v for k, v in options.items() if k not in ("scheduler", "cluster", "workers")})
    keywords.setdefault("label_name", "cells")
    with client_for(options, default=None) as client:
        summary = segment_plate(keywords.pop("plates", None), client=client, **keywords)
    names = list(dict.fromkeys(r["plate"] for r in summary["fields"]))
    for plate in names:
        rows = [r for r in summary["fields"] if r["plate"] == plate]
        done = sum(r["status"] == Status.DONE for r in rows)
        kept = sum(r["status"] == Status.SKIPPED for r in rows)
        failed = [r for r in rows if r["status"] == Status.FAILED]
        cells = sum(r["n_cells"] or 0 for r in rows)
        print(f"{plate}: {done} fields segmented, {kept} kept, {len(failed)} failed; {cells} cells in "
              f"labels/{summary['label_name']}")
        for record in failed:
            print(f"  failed {record['well']}/{record['field']}: {record['error']}")
    print(f"{summary['n_fields']} fields in {summary['seconds']:.1f} s")
    return outcome_code(summary[Status.FAILED])
