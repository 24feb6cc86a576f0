"""``subcell-scale demo``: the whole job on generated plates, on a local cluster, in minutes."""

from __future__ import annotations

import argparse

from ._options import add_run_options, given_options, positive_int

NAME = "demo"
HELP = "generate demo plates and run segmentation, embedding, profiles, metrics and the report on them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .._constants import DemoSize

    plates = parser.add_argument_group("demo plates (the same defaults as make-demo-plate)")
    plates.add_argument("--plates", dest="n_plates", type=positive_int, default=None, metavar="N",
                        help=f"demo plates (default {DemoSize.PLATES})")
    plates.add_argument("--wells", dest="n_wells", type=positive_int, default=None, metavar="N",
                        help=f"wells per plate (default {DemoSize.WELLS})")
    plates.add_argument("--fields", dest="n_fields", type=positive_int, default=None, metavar="N",
                        help=f"fields per well (default {DemoSize.FIELDS})")
    plates.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of the plates and of random weights, as make-demo-plate's (default 0; the mAP "
                             "null's seed is --set design.seed=N)")
    add_run_options(parser, NAME, helps={"out": "run directory (default demo-run); the same DIR resumes",
                                         "preset": "hpa (default: HPA-like plates) or jump-cellpainting "
                                                   "(Cell Painting plates)"})


def run(args: argparse.Namespace) -> int:
    from ..runspec import option_keywords
    from ..workflow import demo
    from .run import report

    keywords = option_keywords(given_options(args, NAME))
    keywords.setdefault("out", "demo-run")
    out = keywords.pop("out")
    result = demo(out, n_plates=args.n_plates, n_wells=args.n_wells, n_fields=args.n_fields, seed=args.seed,
                  **keywords)
    return report(result)
