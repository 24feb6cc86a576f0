"""The ``subcell-scale`` command line: one sub-command per stage, plus ``run`` and ``demo``.

Each sub-command lives in its own module of this package with ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; heavy imports happen inside ``run`` so
``--help`` is instant. Errors print one line on stderr and exit non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .. import __version__
from ..errors import SubcellScaleError

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="subcell-scale",
        description="SubCell embeddings, localization and JUMP-style profiles for OME-Zarr plates.",
    )
    parser.add_argument("--version", action="version", version=f"subcell-scale {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug log output, also from Dask")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{module_name}")
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    # before distributed is imported, so the scheduler and every worker process it spawns keep quiet
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning" if args.verbose < 1 else "info")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("subcell_scale").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("subcell-scale: interrupted", file=sys.stderr)
        return 130
    except SubcellScaleError as exc:
        if args.traceback:
            raise
        print(f"subcell-scale {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except (OSError, ValueError, RuntimeError) as exc:
        if args.traceback:
            raise
        print(f"subcell-scale {args.command}: error: {type(exc).__name__}: {_one_line(exc)} "
              "(rerun with --traceback for details)", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
