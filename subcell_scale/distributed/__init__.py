"""Dask side of subcell-scale: the cluster factory, the per-worker model and the per-field tasks.

This layer only schedules: it decides where a field runs, and the work itself is done by the same
stage functions (:mod:`subcell_scale.cells`, :mod:`subcell_scale.segment`, the model) that run in a
notebook without a cluster.
"""

from __future__ import annotations

from .cluster import GPU_RESOURCE, count_gpus, get_client
from .plugin import PLUGIN_NAME, ModelSpec, SubCellPlugin, loads_per_worker, register_model, worker_model

__all__ = [
    "GPU_RESOURCE",
    "PLUGIN_NAME",
    "ModelSpec",
    "SubCellPlugin",
    "count_gpus",
    "get_client",
    "loads_per_worker",
    "register_model",
    "worker_model",
]
