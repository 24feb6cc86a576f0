"""Where the work runs: a local GPU cluster, a local CPU cluster, a configured cluster or a running scheduler.

Every worker advertises ``resources={"GPU": 1}`` so the embedding task (which asks for one ``GPU``)
runs once at a time per worker while the worker's other threads read and crop the next fields. On a
machine without GPUs the same resource is declared on a CPU ``LocalCluster``, so the schedule — and
what the tests exercise — is the same everywhere.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

log = logging.getLogger(__name__)

GPU_RESOURCE = "GPU"
"""Name of the worker resource that one embedding task holds."""

CLUSTER_KINDS = ("auto", "local", "cuda")


def count_gpus() -> int:
    """Number of CUDA devices visible to this process (0 when torch or the driver is missing)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0
    try:
        return int(torch.cuda.device_count())
    except RuntimeError:  # pragma: no cover - broken driver
        return 0


def _dask_cuda_available() -> bool:
    """``dask_cuda`` imports only where NVIDIA libraries are installed; anything else means no."""
    try:
        import dask_cuda  # noqa: F401
    except Exception:  # ImportError, or cuda bindings failing at import  # noqa: BLE001
        return False
    return True


def get_client(
    cluster: str | os.PathLike = "auto",
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | float | None = None,
    dashboard: bool = True,
    **cluster_kwargs: Any,
) -> Client:
    """Start (or connect to) a Dask cluster set up for SubCell embedding and return its client.

    Parameters
    ----------
    cluster
        ``"auto"``: a ``dask_cuda.LocalCUDACluster`` (one worker per GPU) when GPUs and dask-cuda are
        present, else a CPU ``LocalCluster``. ``"local"``: always a ``LocalCluster`` (one worker per
        GPU if there are GPUs, else ``n_workers``). ``"cuda"``: a ``LocalCUDACluster`` or an error
        saying why not. A path: a cluster config file (SLURM, Kubernetes; see ``cluster/``) handed to
        :func:`subcell_scale.distributed.deploy.cluster_from_file`.
    scheduler
        Address of a running scheduler (``tcp://host:8786``); when given, ``cluster`` is ignored and
        nothing is started. Workers started with ``--resources GPU=1`` get the embedding tasks; a
        cluster without that resource embeds on any worker (said once when a run starts).
    n_workers, threads_per_worker
        Local clusters only. Two threads per worker (the default) let one thread embed while the
        other reads and crops the next field; more threads help when segmentation is the bottleneck.
    memory_limit
        Per-worker memory limit of a local cluster (Dask's ``"auto"`` when None).
    dashboard
        Print the dashboard link once the cluster is up.
    **cluster_kwargs
        Passed on to the local cluster class.

    Returns
    -------
    distributed.Client
        Closing it also shuts down a cluster this function started.
    """
    from distributed import Client

    if scheduler is not None:
        try:
            client = Client(scheduler)
        except OSError as exc:
            msg = f"cannot reach the Dask scheduler at {scheduler}: {exc}; is it running, and is the address right?"
            raise ConfigError(msg) from None
    else:
        client = _start(cluster, n_workers, threads_per_worker, memory_limit, cluster_kwargs)
    if dashboard:
        link = client.dashboard_link
        log.info("Dask dashboard: %s", link)
        print(f"Dask dashboard: {link}", flush=True)
    return client


def _start(cluster, n_workers, threads_per_worker, memory_limit, cluster_kwargs) -> Client:
    threads = 2 if threads_per_worker is None else int(threads_per_worker)
    if threads < 1 or (n_workers is not None and int(n_workers) < 1):
        msg = f"get_client: n_workers and threads_per_worker must be >= 1, got {n_workers}, {threads_per_worker}"
        raise ConfigError(msg)
    common: dict[str, Any] = {"threads_per_worker": threads, "resources": {GPU_RESOURCE: 1}, **cluster_kwargs}
    if memory_limit is not None:
        common["memory_limit"] = memory_limit
    kind = os.fspath(cluster)
    if kind not in CLUSTER_KINDS:
        return _from_file(Path(kind))
    n_gpus = count_gpus()
    if kind == "cuda" or (kind == "auto" and n_gpus and _dask_cuda_available()):
        return _cuda_client(n_gpus, n_workers, common)
    if kind == "auto" and n_gpus > 1:
        log.warning("%d GPUs found but dask-cuda is not installed: starting one worker on GPU 0; "
                    "`pip install 'subcell-scale[gpu]'` to use every GPU", n_gpus)
    if n_workers is None:
        n_workers = 1 if n_gpus else max(1, (os.cpu_count() or 1) // threads)
    elif n_gpus and n_workers > 1 and kind == "auto":
        log.warning("%d workers share the visible GPU(s) without dask-cuda pinning", n_workers)
    from distributed import Client

    # Client(**kwargs) owns the LocalCluster it starts and closes it with itself.
    common.setdefault("processes", True)
    return Client(n_workers=int(n_workers), **common)


def _cuda_client(n_gpus: int, n_workers: int | None, common: dict[str, Any]) -> Client:
    if not _dask_cuda_available():
        msg = ("cluster='cuda' needs dask-cuda with NVIDIA libraries (`pip install 'subcell-scale[gpu]'` "
               "or 'dask-cuda[cu12]'); use cluster='local' on machines without them")
        raise ConfigError(msg)
    if n_gpus == 0:
        msg = "cluster='cuda': no CUDA device is visible (check CUDA_VISIBLE_DEVICES and the driver)"
        raise ConfigError(msg)
    from dask_cuda import LocalCUDACluster

    if n_workers is not None:
        common["n_workers"] = int(n_workers)
    return _owning_client(LocalCUDACluster(**common))


def _from_file(path: Path) -> Client:
    if not path.is_file():
        msg = (f"cluster {str(path)!r} is neither one of {', '.join(CLUSTER_KINDS)} "
               "nor an existing cluster config file")
        raise ConfigError(msg)
    try:
        from .deploy import cluster_from_file
    except ImportError as exc:
        msg = f"cluster config file {path}: cluster deployment support is not installed ({exc})"
        raise ConfigError(msg) from exc
    return _owning_client(cluster_from_file(path))


def _owning_client(cluster: Any) -> Client:
    """A client that closes ``cluster`` when it is closed itself."""
    from distributed import Client

    class _ClusterClient(Client):
        def close(self, *args: Any, **kwargs: Any) -> Any:
            result = super().close(*args, **kwargs)
            cluster.close()
            return result

    return _ClusterClient(cluster)
