"""subcell-scale: SubCell embeddings, localization and well profiles for whole OME-Zarr plates.

The top-level names are imported lazily so that ``import subcell_scale`` and ``subcell-scale --help``
stay fast (torch, dask and zarr load on first use).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "open_plate": "subcell_scale.io",
    "Plate": "subcell_scale.io",
    "read_platemap": "subcell_scale.io",
    "make_demo_plate": "subcell_scale.io",
    "SubCell": "subcell_scale.models",
    "embed_plate": "subcell_scale.pipeline",
    "get_client": "subcell_scale.distributed",
}
_SUBMODULES = {"io", "models", "profiles", "metrics", "pl", "distributed", "segment", "cells", "presets",
               "illumination"}

__all__ = [*_LAZY, *sorted(_SUBMODULES), "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from . import cells, distributed, illumination, io, metrics, models, pl, presets, profiles, segment
    from .distributed import get_client
    from .io import Plate, make_demo_plate, open_plate, read_platemap
    from .models import SubCell
    from .pipeline import embed_plate


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"subcell_scale.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'subcell_scale' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
