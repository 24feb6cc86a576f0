"""``subcell-scale profile``: cells AnnData -> well profiles (aggregate, normalise, select features)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "profile"
HELP = "aggregate a cells AnnData into well profiles, then normalise and select features (pycytominer semantics)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cells", metavar="CELLS", help="cells AnnData (.zarr or .h5ad), streamed from disk")
    parser.add_argument("--out", required=True, metavar="PROFILES.h5ad", help="profiles AnnData to write (.h5ad)")
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


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..profiles import aggregate, feature_select, normalize, write_parquet

    out = Path(args.out)
    if out.suffix != ".h5ad":
        raise ConfigError(f"--out {out}: profiles are written as .h5ad")
    if args.reference != "all" and args.normalize is None:
        raise ConfigError("--reference only applies with --normalize METHOD")
    profiles = aggregate(args.cells, by=args.group_by, operation=args.operation, per_field=args.per_field)
    if args.normalize:
        profiles = normalize(profiles, method=args.normalize, reference=args.reference, by=args.by,
                             spherize_method=args.spherize_method, spherize_epsilon=args.spherize_epsilon)
    if args.feature_select:
        profiles = feature_select(profiles, operation=args.feature_select, corr_threshold=args.corr_threshold,
                                  blocklist=args.blocklist)
    out.parent.mkdir(parents=True, exist_ok=True)
    profiles.write_h5ad(out)
    print(f"{profiles.n_obs} profiles x {profiles.n_vars} features -> {out}")
    if args.parquet:
        print(f"parquet -> {write_parquet(profiles, args.parquet)}")
    return 0
