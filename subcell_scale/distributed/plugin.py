"""The SubCell model held once per worker, so that it never travels inside a task graph.

A :class:`~subcell_scale.models.ModelSpec` says how to build the model (published variant, checkpoint
files or seeded random weights); it is small and pickles with the plugin. Each worker builds the model
from it once per run (see :class:`SubCellPlugin` for when), on its own GPU when it has one, and tasks
fetch it with :func:`worker_model`. Checkpoint files on object storage (a model instance saved into an ``s3://``
run directory) are fetched once, at that build, into a local temporary folder that is removed once
the weights are read; :meth:`~subcell_scale.models.ResolvedModel.for_workers` saves an instance there.
"""

from __future__ import annotations

import logging
import threading
import weakref
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
    on the worker. A worker that offers the ``GPU`` resource (where the embedding runs) builds the
    model when the plugin arrives, in a thread, so the worker keeps answering the scheduler while
    weights load; any other worker (the CPU-only helpers of a GPU cluster, or every worker of a
    cluster without the resource) builds it only when a task first asks for it (:func:`worker_model`),
    so a worker that never embeds never holds the model. A run registers its plugin when its
    embedding starts and unregisters it when it ends (:func:`unregister_model`), which drops the
    model, so a worker that joins later loads nothing. ``n_loads`` counts builds, and
    :func:`loads_per_worker` reports them, also after the run: a test (or a curious user) checks
    with ``client.run(loads_per_worker)`` that each worker loaded the model at most once per run.
    """

    idempotent = True  # registering the same plugin again does not rebuild the model

    def __init__(self, spec: ModelSpec, device: str | None = None) -> None:
        self.spec = spec
        self.device = device
        self.name = plugin_name(spec)
        self.model: SubCell | None = None
        self.n_loads = 0
        self._lock = threading.Lock()
        self._worker: Worker | None = None
        self._device: str | None = None  # where the model was built

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "device": self.device}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"], state["device"])

    async def setup(self, worker: Worker | None = None) -> None:
        self._worker = worker
        if worker is not None:
            _LOADS[worker] = {self.name: 0}  # this worker's record follows the model registered last
        if worker is not None and _offers_gpu_resource(worker):
            import asyncio

            await asyncio.to_thread(self.load)

    def load(self) -> SubCell:
        """The model, built on the first call (one build per worker, whichever thread asks first)."""
        with self._lock:
            if self.model is not None:
                return self.model
            import torch

            if self.spec.torch_threads is not None:
                torch.set_num_threads(int(self.spec.torch_threads))
            device = resolve_device(self.device)  # the worker's own GPU: dask-cuda makes it device 0
            self.model = load_spec(self.spec, device)
            self._device = str(device)
            self.n_loads += 1
            if self._worker is not None:
                _LOADS.setdefault(self._worker, {})[self.name] = self.n_loads
            log.info("worker %s: SubCell model loaded on %s (load %d)",
                     getattr(self._worker, "address", "?"), device, self.n_loads)
            return self.model

    def teardown(self, worker: Worker | None = None) -> None:
        with self._lock:
            on_gpu = self.model is not None and (self._device or "").startswith("cuda")
            self.model = None
        if on_gpu:  # give the run's GPU memory back to other work on this worker
            import torch

            torch.cuda.empty_cache()


_LOADS: weakref.WeakKeyDictionary[Worker, dict[str, int]] = weakref.WeakKeyDictionary()
"""Per worker (of this process): model builds of the plugin registered last, kept after it is removed."""


def _offers_gpu_resource(worker: Worker) -> bool:
    from .cluster import GPU_RESOURCE

    return GPU_RESOURCE in (getattr(worker.state, "total_resources", None) or {})


def load_spec(spec: ModelSpec, device: str | None = None) -> SubCell:
    """Build the model of ``spec``; checkpoint files at URLs are fetched to a local temporary folder
    first (under their own names, which may tell the variant) and removed once the weights are read."""
    if spec.source != "checkpoint":
        return spec.load(device=device)
    from ..rundir import RunPath

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
    return plugin.load()


def register_model(client: Any, spec: ModelSpec, device: str | None = None) -> str:
    """Register the model on every current and future worker of ``client``'s cluster; returns the plugin name.

    Models of other specs registered earlier are dropped first, so a worker holds one model at a time.
    A run calls :func:`unregister_model` with the name when its embedding ends.
    """
    name = plugin_name(spec)
    for other in _registered(client):
        if other != name:
            unregister_model(client, other)
    client.register_plugin(SubCellPlugin(spec, device), name=name)
    return name


def unregister_model(client: Any, name: str) -> None:
    """Remove the model plugin ``name`` from the cluster: every worker drops the model, and a worker
    that joins afterwards loads nothing. A plugin already gone, or a cluster that went away (the run
    is ending on an error), is only logged."""
    try:
        client.unregister_worker_plugin(name)
    except ValueError:  # not registered (any more)
        pass
    except Exception as exc:  # noqa: BLE001 - the run is over either way; say so, never hide its own error
        log.warning("could not unregister the model plugin %s from the cluster (%s: %s)", name,
                    type(exc).__name__, exc)


def _registered(client: Any) -> set[str]:
    names = client.run(_model_plugins)
    return {n for per_worker in names.values() for n in per_worker}


def _model_plugins(dask_worker: Worker) -> list[str]:
    return [n for n in dask_worker.plugins if n.startswith(PLUGIN_NAME)]


def loads_per_worker(dask_worker: Worker) -> dict[str, int]:
    """Model builds on this worker of the model plugin registered last, by plugin name (use with
    ``client.run``): during a run and after it (the plugin is gone then, its count is kept); empty
    on a worker that has never received a model plugin (one that joined after the last run)."""
    return dict(_LOADS.get(dask_worker, {}))
