"""``subcell-scale demo``: the whole job on generated plates, on a local cluster, in minutes."""

from __future__ import annotations

import argparse

NAME = "demo"
HELP = "generate demo plates and run segmentation, embedding, profiles, metrics and the report on them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo-run", metavar="DIR", help="run directory (default demo-run)")
    parser.add_argument("--plates", dest="n_plates", type=int, default=2, help="demo plates (default 2)")
    parser.add_argument("--wells", dest="n_wells", type=int, default=12, help="wells per plate (default 12)")
    parser.add_argument("--fields", dest="n_fields", type=int, default=1, help="fields per well (default 1)")
    parser.add_argument("--cluster", default="auto", metavar="local|cuda|auto|FILE", help="cluster to start")
    parser.add_argument("--workers", dest="n_workers", type=int, default=None, help="workers of a local cluster")
    parser.add_argument("--seed", type=int, default=0, help="seed of the plates and of random weights")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..workflow import demo
    from .run import report

    result = demo(args.out, n_plates=args.n_plates, n_wells=args.n_wells, n_fields=args.n_fields,
                  cluster=args.cluster, n_workers=args.n_workers, seed=args.seed,
                  progress=False if args.no_progress else None)
    return report(result)
