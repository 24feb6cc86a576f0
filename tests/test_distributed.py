"""Cluster factory and GPU-resource scheduling on a real LocalCluster."""

from __future__ import annotations

import logging
import time

import numpy as np

import pytest

from subcell_scale.distributed import GPU_RESOURCE, get_client
from subcell_scale.errors import ConfigError


def _timed(tag: str, seconds: float) -> tuple[str, str, float, float]:
    from distributed import get_worker

    start = time.monotonic()
    time.sleep(seconds)
    return tag, get_worker().address, start, time.monotonic()


@pytest.fixture(scope="module")
def client():
    c = get_client("local", n_workers=2, threads_per_worker=2, dashboard=False)
    yield c
    c.close()


@pytest.mark.processes
def test_local_cluster_offers_one_gpu_per_worker(client):
    workers = client.scheduler_info(n_workers=-1)["workers"]
    assert len(workers) == 2
    assert all(info["resources"] == {GPU_RESOURCE: 1} for info in workers.values())
    assert all(info["nthreads"] == 2 for info in workers.values())


@pytest.mark.processes
def test_gpu_tasks_never_overlap_on_a_worker_while_cpu_tasks_do(client):
    gpu = [client.submit(_timed, "gpu", 0.3, resources={GPU_RESOURCE: 1}, pure=False) for _ in range(6)]
    cpu = [client.submit(_timed, "cpu", 0.3, pure=False) for _ in range(6)]
    results = client.gather(gpu + cpu)
    by_worker: dict[str, list[tuple[str, float, float]]] = {}
    for tag, worker, start, end in results:
        by_worker.setdefault(worker, []).append((tag, start, end))

    def overlaps(a, b):
        return a[1] < b[2] - 1e-3 and b[1] < a[2] - 1e-3

    n_cpu_gpu_overlaps = 0
    for runs in by_worker.values():
        gpu_runs = [r for r in runs if r[0] == "gpu"]
        for i, a in enumerate(gpu_runs):
            for b in gpu_runs[i + 1:]:
                assert not overlaps(a, b), f"two GPU tasks ran at once on one worker: {a} {b}"
        n_cpu_gpu_overlaps += sum(overlaps(g, c) for g in gpu_runs for c in runs if c[0] == "cpu")
    # the second thread of a worker is free for CPU work while the GPU task runs
    assert n_cpu_gpu_overlaps > 0


def test_dashboard_link_is_printed(capsys):
    c = get_client("local", n_workers=1, threads_per_worker=1, processes=False)
    try:
        out = capsys.readouterr().out
        assert "Dask dashboard:" in out
        assert c.dashboard_link.split("/status")[0] in out
    finally:
        c.close()
    assert c.status == "closed"


@pytest.mark.processes
def test_connects_to_a_running_scheduler(client):
    other = get_client(scheduler=client.scheduler.address, dashboard=False)
    try:
        assert other.submit(sum, [1, 2, 3], resources={GPU_RESOURCE: 1}).result(timeout=30) == 6
    finally:
        other.close()
    # closing a client that only connected leaves the cluster running
    assert client.submit(sum, [1, 1]).result(timeout=30) == 2


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"cluster": "nowhere.yaml"}, "neither one of auto, local, cuda nor an existing cluster config file"),
    ({"cluster": "local", "threads_per_worker": 0}, "must be >= 1"),
])
def test_bad_cluster_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        get_client(dashboard=False, **kwargs)


def test_cuda_cluster_without_dask_cuda_says_why():
    from subcell_scale.distributed.cluster import _dask_cuda_available

    if _dask_cuda_available():
        pytest.skip("dask-cuda is installed here")
    with pytest.raises(ConfigError, match="dask-cuda"):
        get_client("cuda", dashboard=False)


@pytest.mark.processes
def test_cluster_from_a_config_file_is_closed_with_its_client(tmp_path):
    cfg = tmp_path / "one.yaml"
    cfg.write_text("kind: local\nworkers: 1\nthreads_per_worker: 1\nlocal:\n  dashboard_address: ':0'\n")
    c = get_client(cfg, dashboard=False)
    cluster = c.cluster
    try:
        workers = c.scheduler_info(n_workers=-1)["workers"]
        assert [info["resources"] for info in workers.values()] == [{GPU_RESOURCE: 1}]
        assert c.submit(sum, [2, 3], resources={GPU_RESOURCE: 1}).result(timeout=30) == 5
    finally:
        c.close()
    assert cluster.status.name == "closed"


def _model_plugins_here(dask_worker) -> list[str]:
    return [name for name in dask_worker.plugins if name.startswith("subcell-model")]


def _unregistered_cleanly(caplog) -> bool:
    """No "could not unregister the model plugin" warning (a teardown that failed on a worker, say)."""
    return not [r for r in caplog.records if "could not unregister" in r.getMessage()]


@pytest.mark.processes
def test_a_worker_that_joins_after_a_run_loads_no_model(demo_plates, tiny_spec, tmp_path, caplog):
    """The run's model plugin leaves the cluster when its embedding ends; the next run registers it again."""
    from subcell_scale import embed_plate
    from subcell_scale.distributed import loads_per_worker

    demo = demo_plates(n_plates=2, n_wells=4, n_fields=1, field_size=384, cells_per_field=16, seed=0)
    c = get_client("local", n_workers=1, threads_per_worker=1, dashboard=False)
    try:
        with caplog.at_level(logging.WARNING, logger="subcell_scale"):
            cells = embed_plate(demo["plate"], tiny_spec, client=c, out=tmp_path / "run", progress=False,
                                out_size=32)
        assert cells.n_obs > 0 and _unregistered_cleanly(caplog)
        (first,) = c.scheduler_info(n_workers=-1)["workers"]
        assert [list(v.values()) for v in c.run(loads_per_worker).values()] == [[1]]  # once per worker and run
        assert not [n for n in c.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins))
                    if n.startswith("subcell-model")]
        assert c.run(_model_plugins_here) == {first: []}

        c.cluster.scale(2)
        c.wait_for_workers(2, timeout=120)
        loads = c.run(loads_per_worker)
        (late,) = set(loads) - {first}
        assert loads[late] == {} and c.run(_model_plugins_here)[late] == []  # it loaded nothing

        again = embed_plate(demo["plate"], tiny_spec, client=c, out=tmp_path / "again", progress=False, out_size=32)
        np.testing.assert_array_equal(np.asarray(again.X), np.asarray(cells.X))
        assert sorted(list(v.values()) for v in c.run(loads_per_worker).values()) == [[1], [1]]  # the next run's
    finally:
        c.close()


@pytest.mark.processes
def test_a_worker_without_the_gpu_resource_builds_the_model_only_when_a_task_needs_it(demo_plates, tiny_spec,
                                                                                         tmp_path, caplog):
    """A GPU cluster with a CPU-only helper: the helper never holds the model unless a task asks for it."""
    from distributed import Client, Nanny, Scheduler, SpecCluster

    from subcell_scale import embed_plate
    from subcell_scale.distributed import loads_per_worker, register_model, unregister_model, worker_model

    demo = demo_plates(n_plates=2, n_wells=4, n_fields=1, field_size=384, cells_per_field=16, seed=0)
    workers = {"gpu": {"cls": Nanny, "options": {"nthreads": 1, "resources": {GPU_RESOURCE: 1}}},
               "cpu": {"cls": Nanny, "options": {"nthreads": 1}}}
    with SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
                     silence_logs=False) as cluster, Client(cluster) as c:
        c.wait_for_workers(2, timeout=120)
        info = c.scheduler_info(n_workers=-1)["workers"]
        gpu = next(a for a, w in info.items() if w["resources"])
        cpu = next(a for a, w in info.items() if not w["resources"])

        cells = embed_plate(demo["plate"], tiny_spec, client=c, out=tmp_path / "run", progress=False, out_size=32)
        assert cells.n_obs > 0
        loads = c.run(loads_per_worker)
        assert list(loads[gpu].values()) == [1] and list(loads[cpu].values()) == [0]

        name = register_model(c, tiny_spec)
        assert c.run(loads_per_worker) == {gpu: {name: 1}, cpu: {name: 0}}  # built at once where it embeds
        assert c.submit(lambda: worker_model(name).embedding_dim, workers=[cpu], pure=False).result() > 0
        assert c.run(loads_per_worker) == {gpu: {name: 1}, cpu: {name: 1}}  # and on first use elsewhere
        with caplog.at_level(logging.WARNING, logger="subcell_scale"):
            unregister_model(c, name)  # the models' teardown runs on both workers (one built on each)
        assert _unregistered_cleanly(caplog)
        assert c.run(_model_plugins_here) == {gpu: [], cpu: []}
        assert c.run(loads_per_worker) == {gpu: {name: 1}, cpu: {name: 1}}  # the counts outlive the plugin
