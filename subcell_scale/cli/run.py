"""``subcell-scale run``: plates + platemap -> cells, profiles, metrics, figures and report in one directory."""

from __future__ import annotations

import argparse
import sys

from ._options import add_run_options, given_options, require_out

NAME = "run"
HELP = "segment, embed, profile and evaluate plates; write cells, profiles, metrics, figures and a report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plates", nargs="*", metavar="PLATE",
                        help="OME-Zarr HCS plate(s), paths, URLs or globs; or 'plates' in --config, or --plates-from")
    add_run_options(parser, NAME)


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
    from ..runspec import option_keywords
    from ..workflow import run as run_plates

    options = given_options(args, NAME)
    require_out(options, NAME)
    keywords = option_keywords(options)
    return report(run_plates(keywords.pop("plates", None), **keywords))
