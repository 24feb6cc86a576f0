"""Start a Dask cluster from a small YAML file: local, one machine's GPUs, SLURM or Kubernetes.

The files in the repository's ``cluster/`` folder are ready-made examples. Every file has a ``kind``
(``local`` | ``cuda`` | ``slurm`` | ``kubernetes``), an optional ``workers`` count and one section named
after the kind whose keys go to that cluster's own constructor, so a user who knows dask-jobqueue or
dask-cuda recognises every option. This module adds only the GPU wiring that the embedding tasks rely
on: each worker process owns one GPU and advertises it as the Dask resource ``GPU=1`` (see
:data:`WORKER_RESOURCES`), so at most one model runs per GPU.

Examples
--------
>>> from subcell_scale.distributed.deploy import cluster_from_file, render_slurm_job_script
>>> print(render_slurm_job_script("cluster/slurm.yaml"))  # doctest: +SKIP
>>> cluster = cluster_from_file("cluster/local-cuda.yaml")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from distributed.deploy import Cluster

logger = logging.getLogger(__name__)

KINDS = ("local", "cuda", "slurm", "kubernetes")
"""Values accepted for ``kind``."""

WORKER_RESOURCES = {"GPU": 1}
"""The Dask resource every worker advertises: one GPU (one model slot) per worker process."""

_TOP_LEVEL_KEYS = {"kind", "workers", "threads_per_worker", *KINDS}

_SLURM_PLACEHOLDER_SCHEDULER = "tcp://<scheduler-address>:8786"

_KUBERNETES_DEFAULTS: dict[str, Any] = {
    "name": "subcell-scale",
    "namespace": None,
    "image": "ghcr.io/dask/dask:latest",
    "image_pull_policy": "IfNotPresent",
    "worker_command": "dask-cuda-worker",
    "gpus_per_worker": 1,
    "worker_resources": {},
    "scheduler_resources": {},
    "env": {},
    "volumes": [],
    "volume_mounts": [],
    "scheduler_service_type": "ClusterIP",
    "idle_timeout": 0,
}


def load_cluster_config(config: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a cluster file (or an already loaded mapping).

    Parameters
    ----------
    config
        Path to a YAML file such as ``cluster/slurm.yaml``, or its content as a mapping.

    Returns
    -------
    A deep copy of the configuration with ``source`` (the file name, or ``"<mapping>"``) added, so
    later errors can name the file.

    Raises
    ------
    ConfigError
        The file is missing or not YAML, ``kind`` is unknown, a key is misspelt, or ``workers`` is not a
        non-negative integer.
    """
    if isinstance(config, Mapping):
        data, source = copy.deepcopy(dict(config)), "<mapping>"
    else:
        path = Path(config)
        if not path.is_file():
            msg = f"cluster file {path} does not exist (examples: the repository's cluster/ folder)"
            raise ConfigError(msg)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            msg = f"cluster file {path} is not valid YAML: {' '.join(str(exc).split())}"
            raise ConfigError(msg) from exc
        source = str(path)
        if not isinstance(data, dict):
            msg = f"cluster file {path} must hold a mapping with a 'kind' key, found {type(data).__name__}"
            raise ConfigError(msg)
    data.pop("source", None)
    kind = data.get("kind")
    if kind not in KINDS:
        msg = f"{source}: 'kind' must be one of {', '.join(KINDS)}, found {kind!r}"
        raise ConfigError(msg)
    unknown = sorted(set(data) - _TOP_LEVEL_KEYS)
    if unknown:
        msg = (f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; allowed are kind, workers, "
               f"threads_per_worker and a '{kind}' section")
        raise ConfigError(msg)
    for key in ("workers", "threads_per_worker"):
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            msg = f"{source}: '{key}' must be a non-negative integer or null, found {value!r}"
            raise ConfigError(msg)
    section = data.get(kind) or {}
    if not isinstance(section, dict):
        msg = f"{source}: the '{kind}' section must be a mapping of options, found {type(section).__name__}"
        raise ConfigError(msg)
    data[kind] = section
    data["source"] = source
    return data


def cluster_from_file(config: Mapping[str, Any] | str | os.PathLike[str]) -> Cluster:
    """Start the cluster a file describes and scale it to ``workers``.

    Parameters
    ----------
    config
        A cluster file (``cluster/*.yaml``) or its content as a mapping.

    Returns
    -------
    A started ``distributed`` cluster object: ``LocalCluster``, ``LocalCUDACluster``, ``SLURMCluster``
    or the operator's ``KubeCluster``. Pass it to ``distributed.Client``; close it when done.

    Notes
    -----
    ``kind: cuda`` needs dask-cuda (``pip install "subcell-scale[gpu]"``); without it, or without a
    visible GPU, it logs a warning and starts a process-based ``LocalCluster`` (one worker unless
    ``workers`` says otherwise) with the same worker resources, so a notebook written for a GPU box
    still runs on a laptop. ``kind: kubernetes`` needs
    dask-kubernetes and a cluster with the Dask operator installed.
    """
    cfg = load_cluster_config(config)
    kind = cfg["kind"]
    logger.info("starting a %s cluster from %s", kind, cfg["source"])
    if kind == "local":
        return _local_cluster(cfg)
    if kind == "cuda":
        return _cuda_cluster(cfg)
    if kind == "slurm":
        return _slurm_cluster(cfg)
    return _kubernetes_cluster(cfg)


def _local_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(cfg[cfg["kind"]])
    kwargs.setdefault("resources", dict(WORKER_RESOURCES))
    if cfg.get("workers") is not None:
        kwargs["n_workers"] = cfg["workers"]
    kwargs["threads_per_worker"] = cfg.get("threads_per_worker") or kwargs.get("threads_per_worker", 1)
    return kwargs


def _check_worker_options(cfg: dict[str, Any], kwargs: dict[str, Any], *classes: Any) -> None:
    """Reject a misspelt option here, before it reaches a worker process as an obscure failure."""
    from distributed import Nanny, Worker

    allowed: set[str] = set()
    for cls in (*classes, Nanny, Worker):
        allowed |= set(inspect.signature(cls).parameters)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        names = ", ".join(c.__name__ for c in classes)
        msg = f"{cfg['source']}: option(s) {', '.join(unknown)} in the '{cfg['kind']}' section not accepted by {names}"
        raise ConfigError(msg)


def _local_cluster(cfg: dict[str, Any]) -> Cluster:
    from distributed import LocalCluster

    kwargs = _local_kwargs(cfg)
    kwargs.setdefault("processes", True)
    _check_worker_options(cfg, kwargs, LocalCluster)
    return LocalCluster(**kwargs)


def _cuda_cluster(cfg: dict[str, Any]) -> Cluster:
    kwargs = _local_kwargs(cfg)
    try:
        from dask_cuda import LocalCUDACluster
        from dask_cuda.utils import get_n_gpus

        n_gpus, reason = get_n_gpus(), "no GPU is visible"
    except Exception as exc:  # ImportError, or NVML missing on a driverless machine
        n_gpus, reason = 0, f"{type(exc).__name__}: {exc}"
    if n_gpus == 0:
        logger.warning("%s: dask-cuda cannot start GPU workers here (%s); starting a LocalCluster without GPU "
                       "pinning instead", cfg["source"], reason)
        from distributed import LocalCluster

        cuda_only = {"CUDA_VISIBLE_DEVICES", "device_memory_limit", "rmm_pool_size", "rmm_async",
                     "rmm_allocator_external_lib_list", "pre_import", "enable_cudf_spill", "jit_unspill"}
        fallback = {k: v for k, v in kwargs.items() if k not in cuda_only}
        fallback.setdefault("n_workers", 1)
        fallback.setdefault("processes", True)
        _check_worker_options(cfg, fallback, LocalCluster)
        return LocalCluster(**fallback)
    logger.info("%d GPU(s) visible", n_gpus)
    _check_worker_options(cfg, kwargs, LocalCUDACluster, LocalCluster)
    return LocalCUDACluster(**kwargs)


def _slurm_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """SLURMCluster keywords with the one-GPU-per-job wiring added."""
    kwargs = dict(cfg["slurm"])
    use_gpu = kwargs.pop("gpu", True)
    if not isinstance(use_gpu, bool):
        msg = f"{cfg['source']}: slurm.gpu must be true or false, found {use_gpu!r}"
        raise ConfigError(msg)
    for key in ("cores", "memory"):
        if key not in kwargs:
            msg = f"{cfg['source']}: slurm.{key} is required (per job, e.g. cores: 8, memory: 64GB)"
            raise ConfigError(msg)
    kwargs.setdefault("job_name", "subcell-scale")
    processes = kwargs.setdefault("processes", 1)
    if processes != 1:
        msg = (f"{cfg['source']}: slurm.processes must be 1 (one worker process per job and GPU), "
               f"found {processes!r}; ask for more jobs with 'workers' instead")
        raise ConfigError(msg)
    for key in ("job_extra_directives", "worker_extra_args", "job_script_prologue"):
        value = kwargs.get(key, [])
        if isinstance(value, str) or not isinstance(value, list):
            msg = f"{cfg['source']}: slurm.{key} must be a list of strings, found {value!r}"
            raise ConfigError(msg)
        kwargs[key] = [str(v) for v in value]
    directives = kwargs["job_extra_directives"]
    if use_gpu and not any(d.startswith(("--gres", "--gpus", "-G")) for d in directives):
        directives.append("--gres=gpu:1")
    extra = kwargs["worker_extra_args"]
    if "--resources" not in extra:
        extra += ["--resources", ",".join(f"{k}={v}" for k, v in WORKER_RESOURCES.items())]
    if not kwargs["job_script_prologue"]:
        logger.warning("%s: slurm.job_script_prologue is empty; jobs will run %s, which must be the "
                       "environment with subcell-scale and torch", cfg["source"], kwargs.get("python", "python3"))
    return kwargs


def render_slurm_job_script(config: Mapping[str, Any] | str | os.PathLike[str]) -> str:
    """The batch script dask-jobqueue submits for each SLURM worker, without contacting SLURM.

    Use it to check a ``kind: slurm`` file before a run: the ``#SBATCH`` lines, the prologue that
    activates the environment, and the worker command with ``--resources GPU=1``. The scheduler address
    is shown as a placeholder because no scheduler is started.
    """
    cfg = load_cluster_config(config)
    if cfg["kind"] != "slurm":
        msg = f"{cfg['source']}: a SLURM job script needs kind: slurm, found kind: {cfg['kind']}"
        raise ConfigError(msg)
    from dask_jobqueue.slurm import SLURMJob

    kwargs = _slurm_kwargs(cfg)
    try:
        job = SLURMJob(scheduler=_SLURM_PLACEHOLDER_SCHEDULER, name="subcell-scale-worker", **kwargs)
    except (TypeError, ValueError) as exc:
        msg = f"{cfg['source']}: the 'slurm' section is not accepted by dask-jobqueue: {exc}"
        raise ConfigError(msg) from exc
    return job.job_script()


def _slurm_cluster(cfg: dict[str, Any]) -> Cluster:
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        msg = f"{cfg['source']}: kind: slurm needs dask-jobqueue: pip install 'subcell-scale[cluster]'"
        raise ConfigError(msg) from exc
    kwargs = _slurm_kwargs(cfg)
    try:
        cluster = SLURMCluster(**kwargs)
    except (TypeError, ValueError) as exc:
        msg = f"{cfg['source']}: the 'slurm' section is not accepted by dask-jobqueue: {exc}"
        raise ConfigError(msg) from exc
    if cfg.get("workers"):
        cluster.scale(jobs=cfg["workers"])
    return cluster


def render_kubernetes_spec(config: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """The ``DaskCluster`` resource (dask-kubernetes operator, ``kubernetes.dask.org/v1``) as a dict.

    Worker pods run ``worker_command`` (``dask-cuda-worker`` by default) with ``--resources GPU=1`` and
    request ``nvidia.com/gpu`` in their limits; the scheduler pod gets no GPU, which the operator's own
    ``make_cluster_spec`` cannot express because it applies one ``resources`` block to both. Write it
    out with ``yaml.safe_dump`` and ``kubectl apply -f`` it, or let :func:`cluster_from_file` hand it
    to ``KubeCluster(custom_cluster_spec=...)``.
    """
    cfg = load_cluster_config(config)
    if cfg["kind"] != "kubernetes":
        msg = f"{cfg['source']}: a Kubernetes spec needs kind: kubernetes, found kind: {cfg['kind']}"
        raise ConfigError(msg)
    unknown = sorted(set(cfg["kubernetes"]) - set(_KUBERNETES_DEFAULTS))
    if unknown:
        msg = (f"{cfg['source']}: unknown key(s) in the 'kubernetes' section: {', '.join(unknown)}; "
               f"allowed: {', '.join(sorted(_KUBERNETES_DEFAULTS))}")
        raise ConfigError(msg)
    k8s = {**copy.deepcopy(_KUBERNETES_DEFAULTS), **cfg["kubernetes"]}
    gpus = k8s["gpus_per_worker"]
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        msg = f"{cfg['source']}: kubernetes.gpus_per_worker must be a non-negative integer, found {gpus!r}"
        raise ConfigError(msg)
    for key in ("worker_resources", "scheduler_resources"):
        bad = sorted(set(k8s[key]) - {"requests", "limits"})
        if bad:
            msg = f"{cfg['source']}: kubernetes.{key} may only hold 'requests' and 'limits', found {bad}"
            raise ConfigError(msg)
    env = [{"name": str(k), "value": str(v)} for k, v in k8s["env"].items()]

    worker_resources = copy.deepcopy(k8s["worker_resources"])
    if gpus:
        worker_resources.setdefault("limits", {})["nvidia.com/gpu"] = gpus
    command = k8s["worker_command"]
    command = command.split() if isinstance(command, str) else [str(c) for c in command]
    resources_arg = ",".join(f"{k}={v}" for k, v in WORKER_RESOURCES.items())
    worker_args = [*command, "--name", "$(DASK_WORKER_NAME)", "--dashboard", "--dashboard-address", "8788",
                   "--resources", resources_arg]

    def container(name: str, args: list[str], resources: dict, ports: list[dict]) -> dict[str, Any]:
        spec = {"name": name, "image": k8s["image"], "imagePullPolicy": k8s["image_pull_policy"],
                "args": args, "env": copy.deepcopy(env), "resources": resources, "ports": ports}
        if k8s["volume_mounts"]:
            spec["volumeMounts"] = copy.deepcopy(k8s["volume_mounts"])
        return spec

    def pod(containers: list[dict]) -> dict[str, Any]:
        spec: dict[str, Any] = {"containers": containers}
        if k8s["volumes"]:
            spec["volumes"] = copy.deepcopy(k8s["volumes"])
        return spec

    def health() -> dict[str, Any]:
        return {"httpGet": {"port": "http-dashboard", "path": "/health"}}

    scheduler = container(
        "scheduler", ["dask-scheduler", "--host", "0.0.0.0"], copy.deepcopy(k8s["scheduler_resources"]),
        [{"name": "tcp-comm", "containerPort": 8786, "protocol": "TCP"},
         {"name": "http-dashboard", "containerPort": 8787, "protocol": "TCP"}],
    )
    scheduler["readinessProbe"] = {**health(), "initialDelaySeconds": 0, "periodSeconds": 1, "timeoutSeconds": 300}
    scheduler["livenessProbe"] = {**health(), "initialDelaySeconds": 15, "periodSeconds": 20}
    worker = container("worker", worker_args, worker_resources,
                       [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}])
    workers = cfg.get("workers")
    name = str(k8s["name"])
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": name},
        "spec": {
            "idleTimeout": int(k8s["idle_timeout"]),
            "worker": {"replicas": 1 if workers is None else workers, "spec": pod([worker])},
            "scheduler": {
                "spec": pod([scheduler]),
                "service": {
                    "type": k8s["scheduler_service_type"],
                    "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
                    "ports": [
                        {"name": "tcp-comm", "protocol": "TCP", "port": 8786, "targetPort": "tcp-comm"},
                        {"name": "http-dashboard", "protocol": "TCP", "port": 8787, "targetPort": "http-dashboard"},
                    ],
                },
            },
        },
    }


def _kubernetes_cluster(cfg: dict[str, Any]) -> Cluster:
    spec = render_kubernetes_spec(cfg)
    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError as exc:
        msg = (f"{cfg['source']}: kind: kubernetes needs dask-kubernetes (pip install dask-kubernetes); "
               "or apply the spec yourself: python -c \"import yaml, sys; from subcell_scale.distributed"
               f".deploy import render_kubernetes_spec; yaml.safe_dump(render_kubernetes_spec('{cfg['source']}'), "
               "sys.stdout)\" | kubectl apply -f -")
        raise ConfigError(msg) from exc
    return KubeCluster(custom_cluster_spec=spec, namespace=cfg["kubernetes"].get("namespace"))
