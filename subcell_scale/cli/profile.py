"""``subcell-scale profile``: cells AnnData -> well profiles (aggregate, normalise, select features)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "profile"
HELP = "aggregate a cells AnnData into well profiles, then normalise and select features (pycytominer semantics)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cells", metavar="CELLS", help="cells AnnData (.zarr or .h5ad), streamed from disk")
    parser.add_argument("--out", required=True, metavar="PROFILES.h5ad", help="profiles AnnData to write (.h5ad)")
    parser.add_argument("--preset", default=None,
                        help="aggregate and post-process as a preset does (hpa, jump-cellpainting) instead of the "
                             "options below")
    parser.add_argument("--chain", default=None, metavar="NAME",
                        help="a named post-processing chain (a preset's, or jump-recipe) instead of the steps below")
    parser.add_argument("--operation", choices=("median", "mean"), default="median",
                        help="per-well aggregation (default: median)")
    parser.add_argument("--per-field", action="store_true",
                        help="aggregate each field first, then average the fields of a well (SubCell JUMP analysis)")
    parser.add_argument("--group-by", nargs="+", default=["plate", "well"], metavar="COLUMN",
                        help="obs columns of one profile (default: plate well)")
    parser.add_argument("--normalize", choices=("standardize", "robustize", "mad_robustize", "spherize"),
                        metavar="METHOD", help="standardize, robustize, mad_robustize or spherize (default: none)")
    parser.add_argument("--reference", default="all", metavar="QUERY",
                        help="rows the normalisation is fitted on, a pandas query on obs, e.g. "
                             "\"control_type == 'negcon'\" (default: all)")
    parser.add_argument("--by", default=None, metavar="COLUMN",
                        help="fit the normalisation separately per value of this column, e.g. plate")
    parser.add_argument("--spherize-method", choices=("ZCA-cor", "ZCA", "PCA", "PCA-cor"), default="ZCA-cor",
                        help="with --normalize spherize (default: ZCA-cor)")
    parser.add_argument("--spherize-epsilon", type=float, default=1e-6,
                        help="with --normalize spherize (default: 1e-6)")
    parser.add_argument("--feature-select", nargs="+", default=None, metavar="OP",
                        choices=("variance_threshold", "correlation_threshold", "drop_na_columns", "drop_outliers",
                                 "blocklist"),
                        help="feature selection operations, in order (variance_threshold correlation_threshold "
                             "drop_na_columns drop_outliers blocklist)")
    parser.add_argument("--corr-threshold", type=float, default=0.9, help="for correlation_threshold (default: 0.9)")
    parser.add_argument("--blocklist", default=None, metavar="FILE", help="feature names to drop, one per line")
    parser.add_argument("--parquet", default=None, metavar="PATH",
                        help="also write the profiles as parquet (Metadata_ columns + features)")


def _steps(args: argparse.Namespace) -> list[dict]:
    """The post-processing steps the options describe (a chain for :func:`subcell_scale.profiles.postprocess`)."""
    steps = []
    if args.normalize:
        step = {"step": "normalize", "method": args.normalize, "reference": args.reference, "by": args.by}
        if args.normalize == "spherize":
            step.update(spherize_method=args.spherize_method, spherize_epsilon=args.spherize_epsilon)
        steps.append(step)
    if args.feature_select:
        steps.append({"step": "feature_select", "operation": args.feature_select,
                      "corr_threshold": args.corr_threshold, "blocklist": args.blocklist})
    return steps


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, ProfilingError
    from ..params import RunParams
    from ..presets import get_chain
    from ..profiles import write_parquet
    from ..workflow import make_profiles

    out = Path(args.out)
    if out.suffix != ".h5ad":
        raise ConfigError(f"--out {out}: profiles are written as .h5ad")
    if args.reference != "all" and args.normalize is None:
        raise ConfigError("--reference only applies with --normalize METHOD")
    manual = _steps(args)
    if manual and (args.preset or args.chain):
        raise ConfigError("--normalize/--feature-select describe a chain themselves; leave out --preset/--chain")
    if args.preset:
        recipe = RunParams.resolve(args.preset, **({"postprocess": args.chain} if args.chain else {})).profiling
    else:
        from ..params import Profiling

        aggregation = {"by": args.group_by, "operation": args.operation, "per_field": args.per_field}
        recipe = Profiling(aggregation, tuple(get_chain(args.chain) if args.chain else manual))
    profiles, skipped = make_profiles(args.cells, recipe)
    if skipped:
        raise ProfilingError(f"post-processing could not run: {skipped}")
    out.parent.mkdir(parents=True, exist_ok=True)
    profiles.write_h5ad(out)
    print(f"{profiles.n_obs} profiles x {profiles.n_vars} features -> {out}")
    if args.parquet:
        print(f"parquet -> {write_parquet(profiles, args.parquet)}")
    return 0
