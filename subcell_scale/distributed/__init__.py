"""Dask side of subcell-scale: the cluster factory, the per-worker model and the one scheduler.

This layer only schedules: it decides where a field runs, and the work itself is done by the same
stage functions (:mod:`subcell_scale.pipeline.field`, :mod:`subcell_scale.segment`, the model) that run
in a notebook without a cluster. Names are imported lazily, so planning a run loads no Dask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

_LAZY = {
    "GPU_RESOURCE": "cluster",
    "count_gpus": "cluster",
    "get_client": "cluster",
    "PLUGIN_NAME": "plugin",
    "SubCellPlugin": "plugin",
    "loads_per_worker": "plugin",
    "register_model": "plugin",
    "unregister_model": "plugin",
    "worker_model": "plugin",
    "load_cluster_config": "deploy",
    "render_kubernetes_spec": "deploy",
    "render_slurm_job_script": "deploy",
    "Failure": "scheduler",
    "Outcome": "scheduler",
    "Stage": "scheduler",
    "map_tasks": "scheduler",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from .cluster import GPU_RESOURCE, count_gpus, get_client
    from .deploy import load_cluster_config, render_kubernetes_spec, render_slurm_job_script
    from .plugin import (
        PLUGIN_NAME,
        SubCellPlugin,
        loads_per_worker,
        register_model,
        unregister_model,
        worker_model,
    )
    from .scheduler import Failure, Outcome, Stage, map_tasks


__getattr__, __dir__ = lazy_attributes(__name__, {name: f"{__name__}.{module}" for name, module in _LAZY.items()})
