"""``subcell-scale embed``: SubCell embeddings of every cell of one or more plates into a results directory."""

from __future__ import annotations

import argparse

from ._options import add_cluster_options, add_embedding_options, add_model_options, client_for, embedding_options

NAME = "embed"
HELP = "embed every cell of OME-Zarr plates with SubCell into OUT/cells.zarr (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plates", nargs="+", metavar="PLATE", help="OME-Zarr HCS plate(s) (.zarr)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="results directory, or a URL such as s3://bucket/run for workers without a shared "
                             "file system (credentials from the environment); rerunning with the same DIR resumes")
    add_model_options(parser)
    add_embedding_options(parser)
    add_cluster_options(parser, default="run in this process")
    parser.add_argument("--device", default=None, help="in-process device: cuda or cpu (default: cuda if present)")


def run(args: argparse.Namespace) -> int:
    from ..pipeline import embed_plate
    from . import outcome_code

    options = embedding_options(args)
    plates = args.plates if len(args.plates) > 1 else args.plates[0]
    with client_for(args, default=None) as client:
        adata = embed_plate(plates, client=client, out=args.out, device=args.device, **options)
    failed = list(adata.uns["subcell_scale"]["failed_fields"])
    print(f"{adata.n_obs} cells x {adata.n_vars} features -> {args.out}")
    if failed:
        print(f"{len(failed)} field(s) failed: {', '.join(failed)}; see {args.out}/manifest.json and rerun "
              "the same command to retry them")
    return outcome_code(len(failed))
