"""The ``subcell-scale`` command line: one sub-command per stage, plus ``run`` and ``demo``.

Each sub-command lives in its own module of this package with ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; the options of a run are declared once, from
:data:`subcell_scale.runspec.OPTIONS` (:mod:`._options`), so every command takes them the same way and
their ``--config`` keys are their long names. ``-v`` and ``--traceback`` stand anywhere on the line.
Only the command being run builds its options, and heavy imports happen inside ``run``, so ``--help``
is instant.

Exit codes (:class:`ExitCode`) are the same for every command: 0 everything finished, 1 an error
in the inputs (one line on stderr), 2 a usage error (an option missing, of the wrong type or
contradicting another), 3 finished but fields failed (a rerun retries them), 4 every field finished
but a later step could not run (named in the summary), 130 interrupted.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import logging
import os
import sys
from collections.abc import Mapping

from .._version import __version__
from ..errors import SubcellScaleError, UsageError, resource_error

# Sub-command modules, in the order ``--help`` lists them.
COMMANDS = (
    "demo",
    "run",
    "make_demo_plate",
    "convert",
    "segment",
    "download",
    "embed",
    "profile",
    "evaluate",
)


class ExitCode(enum.IntEnum):
    """What a command's exit status means (see the module docstring)."""

    OK = 0
    ERROR = 1
    USAGE = 2
    FIELDS_FAILED = 3
    STEPS_SKIPPED = 4
    INTERRUPTED = 130


def outcome_code(failed_fields: int, skipped_steps: Mapping[str, str] | None = None) -> ExitCode:
    """The exit status of a command that finished: failed fields first, then skipped steps."""
    if failed_fields:
        return ExitCode.FIELDS_FAILED
    if skipped_steps:
        return ExitCode.STEPS_SKIPPED
    return ExitCode.OK


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that sub-command gets its options (the others list their help)."""
    parser = argparse.ArgumentParser(
        prog="subcell-scale",
        description="SubCell embeddings, localization and JUMP-style profiles for OME-Zarr plates.",
    )
    parser.add_argument("--version", action="version", version=f"subcell-scale {__version__}")
    _add_common(parser, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{module_name}")
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        _add_common(p, argparse.SUPPRESS)
        if command in (None, module.NAME):
            module.add_arguments(p)
        p.set_defaults(_run=module.run, command=module.NAME)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """The parsed command line; a command's options and plates may come in any order."""
    from ._options import split_several

    argv = split_several(argv)
    names = {importlib.import_module(f"{__name__}.{m}").NAME for m in COMMANDS}
    at = next((i for i, a in enumerate(argv) if a in names), None)
    parser = build_parser(argv[at] if at is not None else "")
    if at is None:
        return parser.parse_args(argv)
    head = parser.parse_args(argv[:at])  # --help, --version, -v before the command
    command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[argv[at]]
    args = command.parse_intermixed_args(argv[at + 1:])
    args.verbose = getattr(head, "verbose", 0) + getattr(args, "verbose", 0)
    args.traceback = getattr(head, "traceback", False) or getattr(args, "traceback", False)
    return args


def _add_common(parser: argparse.ArgumentParser, default: object) -> None:
    """``-v`` and ``--traceback``, accepted before the command and after it alike."""
    parser.add_argument("-v", "--verbose", action="count", default=default, help="debug log output, also from Dask")
    parser.add_argument("--traceback", action="store_true", default=default, help="show the full traceback on errors")


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else list(argv))
    args.verbose = getattr(args, "verbose", 0)
    args.traceback = getattr(args, "traceback", False)
    if not getattr(args, "command", None):
        build_parser("").print_help()
        return ExitCode.USAGE
    # before distributed is imported, so the scheduler and every worker process it spawns keep quiet
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning" if args.verbose < 1 else "info")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("subcell_scale").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("subcell-scale: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except UsageError as exc:
        if args.traceback:
            raise
        print(f"subcell-scale {args.command}: usage error: {_one_line(exc)}", file=sys.stderr)
        return ExitCode.USAGE
    except SubcellScaleError as exc:
        if args.traceback:
            raise
        print(f"subcell-scale {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return ExitCode.ERROR
    except (OSError, ValueError, RuntimeError, MemoryError) as exc:
        if args.traceback:
            raise
        resource = resource_error(exc, None, "while writing" if isinstance(exc, OSError) else "")
        if resource is not None:  # the machine ran short, not the input: say what and where
            print(f"subcell-scale {args.command}: error: {_one_line(resource)}", file=sys.stderr)
            return ExitCode.ERROR
        print(f"subcell-scale {args.command}: error: {type(exc).__name__}: {_one_line(exc)} "
              "(rerun with --traceback for details)", file=sys.stderr)
        return ExitCode.ERROR


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
