"""The one rule for where the model runs: a name is checked once, and "auto" means CUDA when there is one.

The in-process model, a worker's model and the crops cut on the device all follow :func:`resolve_device`,
so a run never embeds on the GPU while it crops on the CPU because two places decided differently.
"""

from __future__ import annotations

import re

from .errors import ConfigError

__all__ = ["check_device", "resolve_device"]

_NAMES = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps|meta)$")  # meta: shapes only, to build a model before its weights


def check_device(device: object) -> str:
    """``device`` as a name this package accepts: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.

    Raises
    ------
    ConfigError
        Any other value, named (a typo such as ``"gpu"`` or ``"tpu"`` fails before a run starts).
    """
    text = "auto" if device is None else str(device)
    if not _NAMES.match(text):
        msg = f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}"
        raise ConfigError(msg)
    return text


def resolve_device(device: object = None) -> str:
    """The device to use: ``device`` as given, or (None, ``"auto"``) ``"cuda"`` when CUDA is available, else ``"cpu"``."""
    text = check_device(device)
    if text != "auto":
        return text
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
