"""``subcell-scale run``: plates + platemap -> cells, profiles, metrics, figures and report in one directory."""

from __future__ import annotations

import argparse
import sys

from ._options import add_cluster_options, add_embedding_options, add_model_options, embedding_options

NAME = "run"
HELP = "segment, embed, profile and evaluate plates; write cells, profiles, metrics, figures and a report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..workflow import run

    parser.add_argument("plates", nargs="*", metavar="PLATE", help="OME-Zarr HCS plate(s); or give them in --config")
    parser.add_argument("--out", required=True, metavar="DIR", help="run directory; the same DIR resumes")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML/TOML file holding any of these options; command-line values win")
    add_model_options(parser)
    add_embedding_options(parser)
    add_cluster_options(parser, default=f"{run.__kwdefaults__['cluster']}: LocalCUDACluster with GPUs, "
                                         "else LocalCluster")
    parser.add_argument("--null-size", type=int, default=None,
                        help=f"mAP null distribution size (default {run.__kwdefaults__['null_size']})")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"seed of the mAP null (default {run.__kwdefaults__['seed']})")
    parser.add_argument("--no-figures", action="store_true", help="skip figures and the report")


def options_from(args: argparse.Namespace) -> dict:
    """Config-file options overridden by the ones given on the command line."""
    from ..errors import ConfigError
    from ..workflow import load_config

    options = load_config(args.config) if args.config else {}
    options.update(options.pop("overrides", None) or {})
    given = {"plates": args.plates or None, "scheduler": args.scheduler, "cluster": args.cluster,
             "n_workers": args.n_workers, "null_size": args.null_size, "seed": args.seed}
    options.update({k: v for k, v in given.items() if v is not None})
    options.update(embedding_options(args))
    if args.no_figures:
        options["figures"] = False
    if not options.get("plates"):
        msg = "no plate given: name plates on the command line or under 'plates' in --config"
        raise ConfigError(msg)
    return options


def report(result) -> int:
    """Print a run's summary; the exit status says what is incomplete (see :class:`~subcell_scale.cli.ExitCode`)."""
    from . import outcome_code

    for line in result.lines():
        print(line)
    code = outcome_code(result.fields_failed, result.skipped)
    if result.fields_failed:
        print(f"run incomplete: {result.fields_failed} field(s) failed (see {result.out / 'manifest.json'}); "
              "rerun the same command to retry them", file=sys.stderr)
    elif result.skipped:
        print(f"run incomplete: step(s) skipped: {'; '.join(f'{k}: {v}' for k, v in result.skipped.items())}",
              file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    from ..workflow import run as run_plates

    options = options_from(args)
    plates = options.pop("plates")
    return report(run_plates(plates, out=args.out, **options))
