"""subcell-scale: SubCell embeddings, localization and well profiles for whole OME-Zarr plates.

The public surface, as in scanpy::

    import subcell_scale as ss

    ss.run(...), ss.demo(...)                   the whole job into a run directory
    ss.read_config(...)                         a config file's run as Python keywords
    ss.embed_plate(...), ss.read_cells(...)     plates -> cells AnnData
    ss.ModelView(...)                           a user's model embedded beside SubCell (a view)
    ss.segment_plate(...)                       labels for plates that have none
    ss.open_plate(...), ss.field_crops(...)     plates and the crops the model sees
    ss.get_client(...)                          a Dask cluster set up for embedding
    ss.profiles, ss.metrics                     well profiles and their evaluation
    ss.cellprofiler, ss.views                   CellProfiler measurements; views side by side
    ss.tl, ss.pl                                computing on AnnData, and drawing what was computed
    ss.datasets                                 demo plates
    ss.settings                                 session-wide defaults

Everything but ``settings`` is imported lazily, so that ``import subcell_scale`` and
``subcell-scale --help`` stay fast (torch, dask and zarr load on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes
from ._settings import settings
from ._version import __version__

# public name -> module that defines it
_LAZY = {
    "open_plate": "subcell_scale.io",
    "Plate": "subcell_scale.io",
    "read_platemap": "subcell_scale.io",
    "make_demo_plate": "subcell_scale.io",
    "SubCell": "subcell_scale.models",
    "ModelSpec": "subcell_scale.models",
    "RunParams": "subcell_scale.params",
    "ModelView": "subcell_scale.modelview",
    "embed_plate": "subcell_scale.workflow",
    "segment_plate": "subcell_scale.workflow",
    "field_crops": "subcell_scale.pipeline",
    "read_cells": "subcell_scale.cellstore",
    "run": "subcell_scale.workflow",
    "demo": "subcell_scale.workflow",
    "read_config": "subcell_scale.runspec",
    "get_client": "subcell_scale.distributed",
}
_SUBMODULES = {"io", "models", "profiles", "metrics", "tl", "pl", "datasets", "distributed", "segment", "cells",
               "presets", "params", "illumination", "errors", "cellprofiler", "views"}

__all__ = [*_LAZY, *sorted(_SUBMODULES), "settings", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from . import (cellprofiler, cells, datasets, distributed, errors, illumination, io, metrics, models, params, pl,
                   presets, profiles, segment, tl, views)
    from .cellstore import read_cells
    from .distributed import get_client
    from .io import Plate, make_demo_plate, open_plate, read_platemap
    from .models import ModelSpec, SubCell
    from .modelview import ModelView
    from .params import RunParams
    from .pipeline import field_crops
    from .runspec import read_config
    from .workflow import demo, embed_plate, run, segment_plate


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, _SUBMODULES, also=("settings", "__version__"))
