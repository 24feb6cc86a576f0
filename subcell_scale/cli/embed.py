"""``subcell-scale embed``: SubCell embeddings of every cell of one or more plates into a results directory."""

from __future__ import annotations

import argparse

from ._options import add_run_options, client_for, given_options, require_out

NAME = "embed"
HELP = "embed every cell of OME-Zarr plates with SubCell into OUT/cells.zarr (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plates", nargs="*", metavar="PLATE",
                        help="OME-Zarr HCS plate(s), paths, URLs or globs; or 'plates' in --config, or --plates-from")
    add_run_options(parser, NAME, helps={
        "out": "results directory, or a URL such as s3://bucket/run for workers without a shared file system "
               "(credentials from the environment); rerunning with the same DIR resumes"})


def run(args: argparse.Namespace) -> int:
    from ..runspec import option_keywords
    from ..workflow import embed_plate
    from . import outcome_code

    options = given_options(args, NAME)
    out = require_out(options, NAME)
    keywords = option_keywords({k: v for k, v in options.items() if k not in ("scheduler", "cluster", "workers")})
    with client_for(options, default=None) as client:
        adata = embed_plate(keywords.pop("plates", None), client=client, **keywords)
    failed = list(adata.uns["subcell_scale"]["failed_fields"])
    print(f"{adata.n_obs} cells x {adata.n_vars} features -> {out}")
    if failed:
        print(f"{len(failed)} field(s) failed: {', '.join(failed)}; see {out}/manifest.json and rerun "
              "the same command to retry them")
    return outcome_code(len(failed))
