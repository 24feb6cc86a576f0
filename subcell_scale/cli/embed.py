"""``subcell-scale embed``: SubCell embeddings of every cell of one or more plates into a results directory."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import ConfigError

NAME = "embed"
HELP = "embed every cell of OME-Zarr plates with SubCell into OUT/cells.zarr (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plates", nargs="+", metavar="PLATE", help="OME-Zarr HCS plate(s) (.zarr)")
    parser.add_argument("--model", default=None, metavar="VARIANT|CHECKPOINT",
                        help="published variant name (from the model cache) or encoder checkpoint file; "
                             "default: the preset's variant")
    parser.add_argument("--classifiers", nargs="*", default=(), metavar="PATH",
                        help="classifier checkpoint files for a checkpoint --model")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="results directory; rerunning with the same DIR resumes")
    parser.add_argument("--preset", default=None, help="hpa (default) or jump-cellpainting")
    parser.add_argument("--channel-map", nargs="*", default=(), metavar="SLOT=NAME[,NAME...]",
                        help="model slot -> plate channel, e.g. nucleus=DAPI; several names give one pass each")
    parser.add_argument("--platemap", default=None, metavar="CSV", help="platemap joined on (plate, well)")
    parser.add_argument("--label-name", default=None, help="label image holding the cells (default: cells)")
    parser.add_argument("--no-segment", action="store_true",
                        help="fail on fields without labels instead of segmenting them")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, metavar="ADDR", help="address of a running Dask scheduler")
    where.add_argument("--cluster", default=None, metavar="local|cuda|auto|FILE",
                       help="start a Dask cluster (default: run in this process)")
    parser.add_argument("--workers", type=int, default=None, help="workers of a local cluster")
    parser.add_argument("--batch-size", type=int, default=64, help="crops per forward pass (default 64)")
    parser.add_argument("--retries", type=int, default=1, help="extra attempts for a failing field (default 1)")
    parser.add_argument("--device", default=None, help="in-process device: cuda or cpu (default: cuda if present)")
    parser.add_argument("--format", choices=("zarr", "h5ad"), default="zarr", help="cells file format")
    parser.add_argument("--set", dest="overrides", nargs="*", default=(), metavar="KEY=VALUE",
                        help="override preset parameters, e.g. out_size=224 mask_mode=none (values as JSON)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_channel_map(items: list[str] | tuple[str, ...]) -> dict[str, str | list[str]] | None:
    """``["nucleus=DAPI", "protein=Mito,AGP"]`` -> ``{"nucleus": "DAPI", "protein": ["Mito", "AGP"]}``."""
    out: dict[str, str | list[str]] = {}
    for item in items:
        slot, sep, names = item.partition("=")
        if not sep or not slot or not names:
            msg = f"--channel-map {item!r}: expected SLOT=NAME or SLOT=NAME,NAME,..."
            raise ConfigError(msg)
        parts = [n.strip() for n in names.split(",") if n.strip()]
        out[slot.strip()] = parts if len(parts) > 1 else parts[0]
    return out or None


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["out_size=224", "mask_mode=none"]`` -> ``{"out_size": 224, "mask_mode": "none"}`` (JSON values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            msg = f"--set {item!r}: expected KEY=VALUE"
            raise ConfigError(msg)
        try:
            out[key.strip()] = json.loads(text)
        except ValueError:
            out[key.strip()] = text
    return out


def run(args: argparse.Namespace) -> int:
    from ..pipeline import embed_plate

    overrides = parse_overrides(args.overrides)
    channel_map = parse_channel_map(args.channel_map)
    client = None
    if args.scheduler or args.cluster:
        from ..distributed import get_client

        client = get_client(args.cluster or "auto", scheduler=args.scheduler, n_workers=args.workers)
    try:
        adata = embed_plate(
            args.plates if len(args.plates) > 1 else args.plates[0], args.model, list(args.classifiers) or None,
            client, out=args.out, preset=args.preset, channel_map=channel_map, platemap=args.platemap,
            label_name=args.label_name, segment_if_missing=not args.no_segment, batch_size=args.batch_size,
            device=args.device, retries=args.retries, progress=not args.no_progress, format=args.format,
            **overrides)
    finally:
        if client is not None:
            client.close()
    failed = adata.uns["subcell_scale"]["failed_fields"]
    print(f"{adata.n_obs} cells x {adata.n_vars} features -> {args.out}")
    if len(failed):
        print(f"{len(failed)} field(s) failed: {', '.join(failed)}; see {args.out}/manifest.json and rerun "
              "the same command to retry them")
        return 1
    return 0
