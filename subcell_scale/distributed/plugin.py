"""The SubCell model held once per worker, so that it never travels inside a task graph.

A :class:`~subcell_scale.models.ModelSpec` says how to build the model (published variant, checkpoint
files or seeded random weights); it is small and pickles with the plugin. Each worker builds the model
from it once, in :meth:`SubCellPlugin.setup`, on its own GPU when it has one, and tasks fetch it with
:func:`worker_model`. Checkpoint files on object storage (a model instance saved into an ``s3://``
run directory) are fetched once, at that build, into a local temporary folder that is removed once
the weights are read; :meth:`~subcell_scale.models.ResolvedModel.for_workers` saves an instance there.
"""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from distributed import WorkerPlugin, get_worker

from .._device import resolve_device
from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Worker

    from ..models import ModelSpec, SubCell

log = logging.getLogger(__name__)

PLUGIN_NAME = "subcell-model"
"""Prefix of the plugin names; each model spec is registered as ``subcell-model-<digest>``."""


class SubCellPlugin(WorkerPlugin):
    """Worker plugin that builds the model once per worker process and keeps it for every task.

    The instance is pickled once, at registration, with its :class:`ModelSpec` only; weights are read
    in :meth:`setup` on the worker. ``n_loads`` counts builds, so a test (or a curious user) can check
    with ``client.run(loads_per_worker)`` that each worker loaded the model exactly once.
    """

    idempotent = True  # registering the same plugin again does not rebuild the model

    def __init__(self, spec: ModelSpec, device: str | None = None) -> None:
        self.spec = spec
        self.device = device
        self.name = plugin_name(spec)
        self.model: SubCell | None = None
        self.n_loads = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "device": self.device}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"], state["device"])

    def setup(self, worker: Worker | None = None) -> None:
        with self._lock:
            if self.model is not None:
                return
            import torch

            if self.spec.torch_threads is not None:
                torch.set_num_threads(int(self.spec.torch_threads))
            device = resolve_device(self.device)  # the worker's own GPU: dask-cuda makes it device 0
            self.model = load_spec(self.spec, device)
            self.n_loads += 1
            log.info("worker %s: SubCell model loaded on %s (load %d)",
                     getattr(worker, "address", "?"), device, self.n_loads)

    def teardown(self, worker: Worker | None = None) -> None:
        self.model = None


def load_spec(spec: ModelSpec, device: str | None = None) -> SubCell:
    """Build the model of ``spec``; checkpoint files at URLs are fetched to a local temporary folder
    first (under their own names, which may tell the variant) and removed once the weights are read."""
    if spec.source != "checkpoint":
        return spec.load(device=device)
    from ..store import RunPath

    with ExitStack() as files:
        encoder, *classifiers = (str(files.enter_context(RunPath(p, spec.storage_options).local_copy()))
                                 for p in (spec.encoder_path, *spec.classifier_paths))
        return replace(spec, encoder_path=encoder, classifier_paths=tuple(classifiers)).load(device=device)


def plugin_name(spec: ModelSpec) -> str:
    """Name of the plugin holding the model of ``spec`` (one per distinct spec)."""
    import hashlib
    import json

    text = json.dumps({**spec.describe(), "threads": spec.torch_threads}, sort_keys=True, default=str)
    return f"{PLUGIN_NAME}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def worker_model(name: str) -> SubCell:
    """The model held by this worker's plugin ``name`` (call from inside a task)."""
    worker = get_worker()
    plugin = worker.plugins.get(name)
    if plugin is None:
        msg = f"worker {worker.address} has no {name!r} plugin; register the model with register_model()"
        raise ConfigError(msg)
    if plugin.model is None:
        plugin.setup(worker)
    return plugin.model


def register_model(client: Any, spec: ModelSpec, device: str | None = None) -> str:
    """Register the model on every current and future worker of ``client``'s cluster; returns the plugin name.

    Models of other specs registered earlier are dropped first, so a worker holds one model at a time.
    """
    name = plugin_name(spec)
    for other in _registered(client):
        if other != name:
            client.unregister_worker_plugin(other)
    client.register_plugin(SubCellPlugin(spec, device), name=name)
    return name


def _registered(client: Any) -> set[str]:
    names = client.run(_model_plugins)
    return {n for per_worker in names.values() for n in per_worker}


def _model_plugins(dask_worker: Worker) -> list[str]:
    return [n for n in dask_worker.plugins if n.startswith(PLUGIN_NAME)]


def loads_per_worker(dask_worker: Worker) -> dict[str, int]:
    """Model builds of each model plugin on this worker (use with ``client.run``)."""
    return {name: plugin.n_loads for name, plugin in dask_worker.plugins.items() if name.startswith(PLUGIN_NAME)}
