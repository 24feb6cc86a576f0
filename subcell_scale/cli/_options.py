"""Options shared by the commands, declared once; their defaults are the Python functions' defaults.

Every shared option defaults to None on the command line and is passed on only when given, so a
command behaves exactly as the Python call with the same arguments (``--batch-size`` unset means
``embed_plate(batch_size=None)``, i.e. :attr:`subcell_scale.settings.batch_size`). The help texts
show those defaults, read from the signatures.
"""

from __future__ import annotations

import argparse
import inspect
import json
from collections.abc import Callable
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterator

    from distributed import Client


def default_of(func: Callable[..., Any], name: str) -> Any:
    """The default of ``func``'s parameter ``name`` (what an option left unset means)."""
    return inspect.signature(func).parameters[name].default


def _shown(func: Callable[..., Any], name: str, setting: str | None = None) -> str:
    value = default_of(func, name)
    if value is None and setting is not None:
        from .._settings import settings

        return f"settings.{setting}, now {getattr(settings, setting)}"
    return str(value)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--classifiers``, ``--variant`` and ``--num-heads``."""
    parser.add_argument("--model", default=None, metavar="VARIANT|CHECKPOINT",
                        help="published variant (downloaded into the model cache on first use) or encoder "
                             "checkpoint file; default: the preset's variant")
    parser.add_argument("--classifiers", nargs="*", default=None, metavar="PATH",
                        help="classifier checkpoint files for a checkpoint --model")
    parser.add_argument("--variant", default=None, metavar="VARIANT",
                        help="which published variant a checkpoint --model is, when its file name does not say "
                             "(needed for 3-channel checkpoints: MT-DNA-Protein or ER-DNA-Protein); without "
                             "--model, the published variant to use (as --set variant=...)")
    parser.add_argument("--num-heads", type=int, default=None, metavar="N",
                        help="attention heads of a checkpoint whose width is not a multiple of 64 "
                             "(default: width / 64)")


def add_embedding_options(parser: argparse.ArgumentParser) -> None:
    """The options of :func:`subcell_scale.embed_plate` a command passes through."""
    from ..pipeline import embed_plate

    parser.add_argument("--preset", default=None, help="hpa (default) or jump-cellpainting")
    parser.add_argument("--channel-map", nargs="*", default=None, metavar="SLOT=NAME[,NAME...]",
                        help="model slot -> plate channel(s), e.g. nucleus=DAPI protein=GFP; several names give "
                             "one pass each")
    parser.add_argument("--platemap", default=None, metavar="CSV", help="plate, well, compound, moa, control_type ...")
    parser.add_argument("--label-name", default=None, help="label image holding the cells (default: the preset's)")
    parser.add_argument("--no-segment", action="store_true",
                        help="fail on fields without labels instead of segmenting them")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"crops per forward pass (default {_shown(embed_plate, 'batch_size', 'batch_size')})")
    parser.add_argument("--retries", type=int, default=None,
                        help=f"extra attempts of a failing field (default {_shown(embed_plate, 'retries')})")
    parser.add_argument("--format", choices=("zarr", "h5ad"), default=None,
                        help=f"cells file format (default {_shown(embed_plate, 'format')})")
    parser.add_argument("--set", dest="overrides", nargs="*", default=None, metavar="KEY=VALUE",
                        help="override preset parameters, e.g. out_size=224 mask_mode=none (values as JSON)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_cluster_options(parser: argparse.ArgumentParser, *, default: str) -> None:
    """``--scheduler`` | ``--cluster``, and ``--workers``; ``default`` says what runs when neither is given."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, metavar="ADDR", help="address of a running Dask scheduler")
    where.add_argument("--cluster", default=None, metavar="local|cuda|auto|FILE",
                       help=f"cluster to start: local, cuda, auto or a cluster config file (default: {default})")
    parser.add_argument("--workers", dest="n_workers", type=int, default=None, help="workers of a local cluster")


def embedding_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :func:`subcell_scale.embed_plate` keyword arguments given on the command line (only those)."""
    given = {
        "model": args.model, "classifiers": args.classifiers, "preset": args.preset,
        "channel_map": parse_channel_map(args.channel_map) if args.channel_map else None,
        "platemap": args.platemap, "label_name": args.label_name, "batch_size": args.batch_size,
        "retries": args.retries, "format": args.format,
    }
    options = {k: v for k, v in given.items() if v is not None}
    if args.no_segment:
        options["segment_if_missing"] = False
    if args.no_progress:
        options["progress"] = False
    overrides = parse_overrides(args.overrides or ())
    return {**options, **overrides, **model_options(args, overrides)}


def model_options(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``--model``, ``--classifiers``, ``--variant`` and ``--num-heads`` (with ``--set variant=``) ask for.

    A checkpoint told its variant or heads becomes a :class:`~subcell_scale.models.ModelSpec` that
    carries them (checked now: the files exist, the name agrees); ``--variant`` is also the preset's
    ``variant`` key, the published variant used when no ``--model`` is given.
    """
    from ..models.registry import get_variant
    from ..models.spec import checkpoint_spec, is_checkpoint_path

    overrides = overrides or {}
    variant = args.variant
    if variant is not None and overrides.get("variant") not in (None, variant) \
            and get_variant(overrides["variant"]) != get_variant(variant):
        msg = f"--variant {variant} and --set variant={overrides['variant']} disagree; give one"
        raise ConfigError(msg)
    variant = variant if variant is not None else overrides.get("variant")
    out: dict[str, Any] = {} if args.variant is None else {"variant": args.variant}
    if args.model is not None and is_checkpoint_path(args.model):
        if variant is not None or args.num_heads is not None:
            out["model"] = checkpoint_spec(args.model, args.classifiers or (), variant=variant,
                                           num_heads=args.num_heads)
            out["classifiers"] = None  # they travel in the spec
        return out
    if args.num_heads is not None:
        msg = "--num-heads applies to a checkpoint --model (the published variants have 12 heads)"
        raise ConfigError(msg)
    if args.model is not None and variant is not None and get_variant(args.model) != get_variant(variant):
        msg = f"--model {args.model} and variant {variant} name different published variants; give one"
        raise ConfigError(msg)
    return out


@contextmanager
def client_for(args: argparse.Namespace, *, default: str | None) -> Iterator[Client | None]:
    """The client the cluster options ask for (None: in this process), closed at the end."""
    cluster = args.cluster or default
    if args.scheduler is None and cluster is None:
        yield None
        return
    from ..distributed import get_client

    client = get_client(cluster or "auto", scheduler=args.scheduler, n_workers=args.n_workers)
    try:
        yield client
    finally:
        client.close()


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
