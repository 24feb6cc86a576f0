"""``subcell-scale evaluate``: a preset's evaluation of a profiles file (replicate and MoA mAP, k-NN accuracy)."""

from __future__ import annotations

import argparse

from ._options import parse_overrides

NAME = "evaluate"
HELP = ("evaluate profiles as a preset's protocol does: replicate and MoA mAP with p/q-values, MoA and compound "
        "k-NN accuracy, per cell type (metrics/*.csv)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("profiles", metavar="PROFILES", help="profiles AnnData (.h5ad) or parquet (Metadata_ columns)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the metrics/*.csv tables")
    parser.add_argument("--preset", default="jump-cellpainting",
                        help="whose evaluation design to run (default jump-cellpainting: the SubCell JUMP benchmark)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=None, metavar="KEY=VALUE",
                        help="change design fields, e.g. null_size=1000 seed=0 nn_match=any negcon_in_pool=true "
                             "(see subcell_scale.metrics.EvaluationDesign; values as JSON)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import ProfilingError
    from ..metrics import evaluate_profiles
    from ..profiles import read_profiles

    path = Path(args.profiles)
    if not path.exists():
        msg = f"{path}: no such profiles file"
        raise ProfilingError(msg)
    tables = evaluate_profiles(read_profiles(path), args.out, preset=args.preset,
                               **parse_overrides(args.overrides or ()))
    summary = tables["summary"]
    if summary.empty:
        msg = f"{path}: nothing could be evaluated (see the warnings above)"
        raise ProfilingError(msg)
    for row in summary.itertuples():
        print(f"{row.cell_type:<10} {row.design:<12} {row.metric:<20} {row.value:.4f}  (n={row.n_groups})")
    print(f"tables written to {args.out}")
    return 0
