"""``subcell-scale evaluate``: replicate / activity / MoA mAP and MoA k-NN accuracy of a profiles file."""

from __future__ import annotations

import argparse

NAME = "evaluate"
HELP = "evaluate profiles: replicate, activity and MoA mAP with p/q-values, MoA k-NN accuracy (metrics/*.csv)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("profiles", metavar="PROFILES.h5ad", help="profiles AnnData (one row per well or consensus)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the metrics/*.csv tables")
    parser.add_argument("--design", choices=["replicate", "activity", "moa", "all"], default="all",
                        help="which evaluation; 'all' runs those the obs columns allow (default)")
    parser.add_argument("--compound-col", default="compound", help="perturbation column (default compound)")
    parser.add_argument("--moa-col", default="moa", help="MoA column, lists or '|'-separated (default moa)")
    parser.add_argument("--plate-col", default="plate",
                        help="plate column (default plate); replicates must come from other plates when several")
    parser.add_argument("--control-query", default="control_type == 'negcon'",
                        help="pandas query selecting negative controls (default \"control_type == 'negcon'\")")
    parser.add_argument("--null-size", type=int, default=10000, metavar="N",
                        help="random rank lists per configuration for p-values (default 10000)")
    parser.add_argument("--exact", choices=["no", "auto", "yes"], default="no",
                        help="exact p-values by enumerating rank orders: 'auto' where comb(L, M) <= null size, "
                             "'yes' up to a million orders (default no: copairs' permutation p-values)")
    parser.add_argument("--threshold", type=float, default=0.05, help="significance level for q-values (default 0.05)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the null distributions (default 0)")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 10], help="neighbourhood sizes for k-NN accuracy")
    parser.add_argument("--distance", default="cosine",
                        help="cosine (default), abs_cosine, correlation, euclidean, manhattan, chebyshev")
    parser.add_argument("--use-rep", default=None, metavar="KEY", help="evaluate adata.obsm[KEY] instead of X")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import anndata

    from ..errors import ProfilingError
    from ..metrics import evaluate_profiles

    path = Path(args.profiles)
    if not path.exists():
        msg = f"{path}: no such profiles file"
        raise ProfilingError(msg)
    try:
        adata = anndata.read_h5ad(path)
    except (OSError, KeyError, ValueError) as exc:
        msg = f"{path}: not a readable .h5ad AnnData file ({exc})"
        raise ProfilingError(msg) from exc
    plate_col = args.plate_col if args.plate_col in adata.obs.columns else None
    tables = evaluate_profiles(
        adata, Path(args.out), designs=args.design, pert_col=args.compound_col, moa_col=args.moa_col,
        plate_col=plate_col, control_query=args.control_query, null_size=args.null_size,
        threshold=args.threshold, seed=args.seed, k=args.k, distance=args.distance, use_rep=args.use_rep,
        exact={"no": False, "auto": "auto", "yes": True}[args.exact])
    summary = tables["summary"]
    if summary.empty:
        msg = (f"{path}: no design could be evaluated; obs needs {args.compound_col!r} "
               f"(and {args.moa_col!r} for MoA, controls for activity)")
        raise ProfilingError(msg)
    for row in summary.itertuples():
        print(f"{row.design:<10} {row.metric:<20} {row.value:.4f}  (n={row.n_groups})")
    print(f"tables written to {args.out}")
    return 0
