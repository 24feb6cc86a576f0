"""The options of the commands that describe a run, declared once from :data:`subcell_scale.runspec.OPTIONS`.

Every command takes the same option the same way, because each is built here from the one table:
``--set KEY=VALUE ...``, ``--channel-map SLOT=NAME ...`` and ``--classifiers PATH ...`` take several
values (and stop at the first word that is not one, so a plate named after them is not swallowed),
and may be repeated; ``-v`` and ``--traceback`` stand anywhere on the line. An option left out is
None and is not passed on, so a command behaves as the Python call with the same keywords; with
``--config FILE`` the file's values come first and the command line's win.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..runspec import COMMANDS, OPTIONS, load_config

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterator

    from distributed import Client

_TAKES_SEVERAL: dict[str, Callable[[str], bool]] = {
    "--set": lambda word: "=" in word,
    "--channel-map": lambda word: "=" in word,
    "--classifiers": lambda word: word.endswith((".pth", ".pt")) or Path(word).is_file(),
}
"""Options followed by several values, and what a value looks like (a plate does not)."""


def split_several(argv: Sequence[str]) -> list[str]:
    """``--set a=1 b=2 plate.zarr`` as ``--set=a=1 --set=b=2 plate.zarr``: each value its own option, so
    argparse never takes a plate for one of them."""
    out: list[str] = []
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        looks = _TAKES_SEVERAL.get(word)
        if looks is None:
            out.append(word)
            i += 1
            continue
        values = []
        i += 1
        while i < len(words) and not words[i].startswith("-") and looks(words[i]):
            values.append(words[i])
            i += 1
        if not values:
            out.append(word)  # argparse says what is missing
        out += [f"{word}={value}" for value in values]
    return out


def default_of(func: Callable[..., Any], name: str) -> Any:
    """The default of ``func``'s parameter ``name`` (what an option left unset means)."""
    import inspect

    return inspect.signature(func).parameters[name].default


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (a usage error otherwise, exit status 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer of at least 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def device_name(text: str) -> str:
    """An argparse type: a device name of the one device rule (a usage error otherwise, exit status 2)."""
    from .._device import check_device
    from ..errors import ConfigError

    try:
        return check_device(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("device must be", "must be")) from None


_TYPES = {"retries": non_negative_int, "null-size": positive_int, "seed": int, "device": device_name}


def add_run_options(parser: argparse.ArgumentParser, command: str, *, skip: Sequence[str] = (),
                    helps: Mapping[str, str] | None = None) -> None:
    """Add the options of ``command`` (:data:`subcell_scale.runspec.COMMANDS`) to its parser.

    ``skip`` leaves some out (a command that declares them its own way); ``helps`` replaces help texts.
    """
    group = parser.add_argument_group("run options (also keys of --config)")
    for flag in COMMANDS[command]:
        if flag in skip:
            continue
        option = OPTIONS[flag]
        text = (helps or {}).get(flag, option.help)
        if flag == "batch-size":
            from .._settings import settings

            text = text.replace("settings.batch_size", f"settings.batch_size, now {settings.batch_size}")
        dest = flag.replace("-", "_")
        if option.kind == "switch":
            group.add_argument(f"--{flag}", dest=dest, action="store_const", const=True, default=None, help=text)
        elif option.kind in ("list", "pairs"):
            group.add_argument(f"--{flag}", dest=dest, action="append", default=None, metavar=option.metavar,
                               help=text + (" (several may follow, or repeat the option)" if f"--{flag}" in
                                            _TAKES_SEVERAL else " (repeat the option for several)"))
        else:
            kind = _TYPES.get(flag) or (positive_int if option.type is int else option.type)
            group.add_argument(f"--{flag}", dest=dest, type=kind, default=None, metavar=option.metavar,
                               choices=option.choices, help=text)


def given_options(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The options of ``command`` on the command line over those of ``--config`` (keyed by long name).

    Mappings (``--set``, ``--channel-map``) are merged entry by entry; ``plates`` holds the
    positional plates when the command has them.
    """
    from ..runspec import split_pairs

    options: dict[str, Any] = {}
    config = getattr(args, "config", None)
    if config:
        options.update(load_config(config, command))
    for flag in COMMANDS[command]:
        if flag == "config":
            continue
        value = getattr(args, flag.replace("-", "_"), None)
        if value is None:
            continue
        option = OPTIONS[flag]
        if option.kind == "pairs":
            value = {**dict(options.get(flag) or {}), **split_pairs(value, flag)}
        options[flag] = value
    plates = getattr(args, "plates", None)
    if plates:
        options["plates"] = list(plates)
    return options


@contextmanager
def client_for(options: Mapping[str, Any], *, default: str | None) -> Iterator[Client | None]:
    """The client the cluster options ask for (None: in this process), closed at the end."""
    scheduler, cluster = options.get("scheduler"), options.get("cluster") or default
    if scheduler is None and cluster is None:
        yield None
        return
    from ..distributed import get_client

    client = get_client(cluster or "auto", scheduler=scheduler, n_workers=options.get("workers"))
    cluster_object = getattr(client, "cluster", None)
    try:
        yield client
    finally:
        client.close()
        if cluster_object is not None:
            cluster_object.close()


def require_out(options: Mapping[str, Any], command: str) -> str:
    """The ``out`` of a command that needs one, given on the command line or in its config file."""
    out = options.get("out")
    if not out:
        msg = f"`subcell-scale {command}` needs --out DIR (or 'out' in its --config file)"
        raise UsageError(msg)
    return os.fspath(out)
