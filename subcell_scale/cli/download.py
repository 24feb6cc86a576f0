"""``subcell-scale download``: fetch published SubCell weights into the model cache."""

from __future__ import annotations

import argparse

NAME = "download"
HELP = "download published SubCell weights (encoder + MLP classifiers) into the model cache"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("variant", nargs="?", metavar="VARIANT",
                        help="published variant, e.g. all_channels_MAE-CellS-ProtS-Pool (see --list)")
    parser.add_argument("--classifiers", type=int, default=1, metavar="N",
                        help="number of MLP classifier seeds to fetch, 0..10 (default 1: seed 0)")
    parser.add_argument("--dest", metavar="DIR",
                        help="model cache folder (default $SUBCELL_SCALE_HOME or ~/.cache/subcell-scale)")
    parser.add_argument("--base-url", metavar="URL", default=None,
                        help="where the files are (default $SUBCELL_SCALE_BASE_URL, else the public CZI bucket "
                             "over HTTPS)")
    parser.add_argument("--force", action="store_true", help="download again even when cached and intact")
    parser.add_argument("--retries", type=int, default=3, help="resume attempts after a dropped connection")
    parser.add_argument("--list", action="store_true", help="list the variants and what is cached, then exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..models.download import cache_root, cache_status, download_variant

    if args.list:
        root = cache_root(args.dest)
        print(f"model cache: {root}")
        for row in cache_status(args.dest):
            seeds = row["classifier_seeds"]
            state = ("encoder" if row["encoder"] else "not cached") + (f", classifier seeds {seeds}" if seeds else "")
            print(f"{row['variant']:<40} {'/'.join(row['channels']):<34} {state}")
        return 0
    if not args.variant:
        msg = "name a VARIANT to download (or use --list)"
        raise ConfigError(msg)
    folder = download_variant(args.variant, n_classifiers=args.classifiers, dest=args.dest,
                              base_url=args.base_url, force=args.force, retries=args.retries,
                              progress=not args.no_progress)
    print(folder)
    return 0
