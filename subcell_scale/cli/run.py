"""``subcell-scale run``: plates + platemap -> cells, profiles, metrics, figures and report in one directory."""

from __future__ import annotations

import argparse
import sys

from .embed import parse_channel_map, parse_overrides

NAME = "run"
HELP = "segment, embed, profile and evaluate plates; write cells, profiles, metrics, figures and a report"

EXIT_INCOMPLETE = 3
"""Exit status of a run that finished but left fields failed or steps skipped (see its summary)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plates", nargs="*", metavar="PLATE", help="OME-Zarr HCS plate(s); or give them in --config")
    parser.add_argument("--out", required=True, metavar="DIR", help="run directory; the same DIR resumes")
    parser.add_argument("--platemap", default=None, metavar="CSV", help="plate, well, compound, moa, control_type")
    parser.add_argument("--model", default=None, metavar="VARIANT|CHECKPOINT",
                        help="published variant (model cache) or encoder checkpoint; default: the preset's")
    parser.add_argument("--classifiers", nargs="*", default=None, metavar="PATH",
                        help="classifier checkpoints for a checkpoint --model")
    parser.add_argument("--preset", default=None, help="hpa (default) or jump-cellpainting")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML/TOML file holding any of these options; command-line values win")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, metavar="ADDR", help="address of a running Dask scheduler")
    where.add_argument("--cluster", default=None, metavar="local|cuda|auto|FILE",
                       help="cluster to start (default auto: LocalCUDACluster with GPUs, else LocalCluster)")
    parser.add_argument("--workers", dest="n_workers", type=int, default=None, help="workers of a local cluster")
    parser.add_argument("--channel-map", nargs="*", default=None, metavar="SLOT=NAME[,NAME...]",
                        help="model slot -> plate channel(s), e.g. nucleus=DAPI protein=GFP")
    parser.add_argument("--batch-size", type=int, default=None, help="crops per forward pass (default 32)")
    parser.add_argument("--format", choices=("zarr", "h5ad"), default=None, help="cells file format (default zarr)")
    parser.add_argument("--retries", type=int, default=None, help="extra attempts for a failing field (default 1)")
    parser.add_argument("--null-size", type=int, default=None, help="mAP null distribution size (default 10000)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the mAP null (default 0)")
    parser.add_argument("--no-figures", action="store_true", help="skip figures and the report")
    parser.add_argument("--set", dest="overrides", nargs="*", default=None, metavar="KEY=VALUE",
                        help="override preset parameters, e.g. out_size=224 (values as JSON)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def options_from(args: argparse.Namespace) -> dict:
    """Config-file options overridden by the ones given on the command line."""
    from ..errors import ConfigError
    from ..run import load_config

    options = load_config(args.config) if args.config else {}
    overrides = dict(options.pop("overrides", None) or {})
    if args.overrides:
        overrides.update(parse_overrides(args.overrides))
    given = {
        "plates": args.plates or None, "platemap": args.platemap, "model": args.model,
        "classifiers": args.classifiers, "preset": args.preset, "scheduler": args.scheduler,
        "cluster": args.cluster, "n_workers": args.n_workers, "batch_size": args.batch_size,
        "channel_map": parse_channel_map(args.channel_map) if args.channel_map else None,
        "format": args.format, "retries": args.retries, "null_size": args.null_size, "seed": args.seed,
    }
    options.update({k: v for k, v in given.items() if v is not None})
    if args.no_figures:
        options["figures"] = False
    if not options.get("plates"):
        msg = "no plate given: name plates on the command line or under 'plates' in --config"
        raise ConfigError(msg)
    return {**options, **overrides}


def report(result) -> int:
    for line in result.lines():
        print(line)
    if not result.ok:
        print(f"run incomplete: see {result.out / 'manifest.json'}; rerun the same command to retry failed "
              "fields", file=sys.stderr)
        return EXIT_INCOMPLETE
    return 0


def run(args: argparse.Namespace) -> int:
    from ..run import run as run_plates

    options = options_from(args)
    plates = options.pop("plates")
    return report(run_plates(plates, out=args.out, progress=not args.no_progress, **options))
