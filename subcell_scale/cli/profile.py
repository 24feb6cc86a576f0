"""``subcell-scale profile``: cells -> well profiles (aggregate, then post-process), as the run was described.

Given a run directory (or a cells file inside one), the run's recorded description (``run.json``) says
how to aggregate and post-process, so the profiles equal the run's own; ``--preset``, ``--set`` and
the shorthand options below change it, and what was applied is recorded in ``uns["profiling"]``.
"""

from __future__ import annotations

import argparse

from ._options import add_run_options, given_options, require_out

NAME = "profile"
HELP = "aggregate a cells AnnData into well profiles, then normalise and select features (pycytominer semantics)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cells", metavar="CELLS|RUN",
                        help="a run directory, or a cells AnnData (.zarr or .h5ad), streamed from disk")
    add_run_options(parser, NAME, helps={
        "out": "folder for profiles.h5ad and profiles.parquet",
        "preset": "aggregate and post-process as this preset does (hpa, jump-cellpainting); default: the run's "
                  "recorded description, else hpa"})
    short = parser.add_argument_group("shorthands for --set (default: the description's)")
    short.add_argument("--chain", default=None, metavar="NAME",
                       help="a named post-processing chain (a preset's, or jump-recipe): --set postprocess=NAME")
    short.add_argument("--operation", choices=("median", "mean"), default=None,
                       help="per-well aggregation: --set aggregation.operation=...")
    short.add_argument("--per-field", action="store_const", const=True, default=None,
                       help="aggregate each field first, then average the fields of a well")
    short.add_argument("--group-by", nargs="+", default=None, metavar="COLUMN",
                       help="obs columns of one profile: --set aggregation.by=[...]")
    short.add_argument("--normalize", choices=("standardize", "robustize", "mad_robustize", "spherize"),
                       default=None, metavar="METHOD",
                       help="a chain of one normalisation (standardize, robustize, mad_robustize or spherize) instead "
                            "of the description's")
    short.add_argument("--reference", default=None, metavar="QUERY",
                       help="with --normalize: rows it is fitted on, a pandas query on obs (default: all)")
    short.add_argument("--by", default=None, metavar="COLUMN",
                       help="with --normalize: fit separately per value of this column, e.g. plate")
    short.add_argument("--feature-select", nargs="+", default=None, metavar="OP",
                       choices=("variance_threshold", "correlation_threshold", "drop_na_columns", "drop_outliers"),
                       help="feature selection after the chain (variance_threshold correlation_threshold ...)")


def shorthand_overrides(args: argparse.Namespace, base_chain: list[dict]) -> dict:
    """The preset overrides the shorthand options say."""
    from ..errors import UsageError

    overrides: dict = {}
    if args.operation is not None:
        overrides["aggregation.operation"] = args.operation
    if args.per_field:
        overrides["aggregation.per_field"] = True
    if args.group_by:
        overrides["aggregation.by"] = list(args.group_by)
    if (args.reference is not None or args.by is not None) and args.normalize is None:
        raise UsageError("--reference and --by only apply with --normalize METHOD")
    if args.normalize is not None and args.chain is not None:
        raise UsageError("--normalize describes a chain itself; leave out --chain")
    chain = None
    if args.chain is not None:
        from ..presets import get_chain

        chain = get_chain(args.chain)
    if args.normalize is not None:
        chain = [{"step": "normalize", "method": args.normalize, "reference": args.reference or "all",
                  "by": args.by}]
    if args.feature_select:
        chain = [*(base_chain if chain is None else chain),
                 {"step": "feature_select", "operation": list(args.feature_select)}]
    if chain is not None:
        overrides["postprocess"] = chain
    return overrides


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .._constants import Files
    from ..errors import ProfilingError
    from ..profiles import write_parquet
    from ..runspec import option_keywords
    from ..stages import make_profiles
    from .evaluate import description

    options = given_options(args, NAME)
    out = Path(require_out(options, NAME))
    cells = _cells_path(Path(args.cells))
    keywords = option_keywords({k: v for k, v in options.items() if k != "out"})
    params, source = description(Path(args.cells), keywords.pop("preset", None), keywords)
    params = params.replace(**shorthand_overrides(args, [s.to_dict() for s in params.profiling.postprocess]))
    print(f"profiling as {source}")
    profiles, skipped = make_profiles(cells, params.profiling)
    if skipped:
        raise ProfilingError(f"post-processing could not run: {skipped}")
    out.mkdir(parents=True, exist_ok=True)
    profiles.write_h5ad(out / Files.PROFILES)
    write_parquet(profiles, out / Files.PROFILES_PARQUET)
    print(f"{profiles.n_obs} profiles x {profiles.n_vars} features -> {out / Files.PROFILES}, "
          f"{out / Files.PROFILES_PARQUET}")
    return 0


def _cells_path(path):
    """A run directory's cells store, or the cells file given."""
    from .._constants import Files
    from ..errors import ProfilingError

    if path.is_dir() and not path.name.endswith(".zarr"):
        for name in (Files.CELLS_ZARR, Files.CELLS_H5AD):
            if (path / name).exists():
                return path / name
        msg = f"{path}: neither a cells AnnData nor a run directory holding {Files.CELLS_ZARR} or {Files.CELLS_H5AD}"
        raise ProfilingError(msg)
    if not path.exists():
        msg = f"{path}: no such cells file or run directory"
        raise ProfilingError(msg)
    return path
