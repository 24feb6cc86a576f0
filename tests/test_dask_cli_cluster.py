"""Clusters users start by hand: ``dask scheduler`` and ``dask worker`` processes, with or without GPUs.

The scheduler and every worker are separate processes started with the ``dask`` command line, with
their own working directory; the client is this test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, get_task_stream

from subcell_scale._constants import Files
from subcell_scale._settings import settings
from subcell_scale import embed_plate

pytestmark = [pytest.mark.processes]

SMALL = {"out_size": 32}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}


def _dask(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(["dask", *args], cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """The in-process reference runs with one torch thread, as the workers do."""


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """A ``dask scheduler`` process and its address."""
    folder = tmp_path_factory.mktemp("scheduler")
    file = folder / "scheduler.json"
    proc = _dask("scheduler", "--scheduler-file", str(file), "--port", "0", "--no-dashboard", cwd=folder)
    for _ in range(300):
        if file.exists() and file.stat().st_size:
            break
        time.sleep(0.1)
    else:
        _stop(proc)
        pytest.fail(f"dask scheduler did not start: {proc.stderr.read().decode()[-2000:]}")
    yield json.loads(file.read_text())["address"]
    _stop(proc)


@pytest.fixture(scope="module")
def demo(demo_plates) -> dict:
    return demo_plates(n_plates=1, n_wells=4, n_fields=1, field_size=256, cells_per_field=8, seed=5)


@pytest.fixture(scope="module")
def reference(demo, tiny_spec):
    return embed_plate(demo["plate"], tiny_spec, progress=False, **SMALL)


def _worker(address: str, cwd: Path, *extra: str) -> subprocess.Popen:
    return _dask("worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard", *extra, cwd=cwd)


def _wait_workers(client: Client, n: int) -> dict:
    """The scheduler's workers once exactly ``n`` are connected (workers of earlier tests gone)."""
    for _ in range(600):
        workers = client.scheduler_info(n_workers=-1)["workers"]
        if len(workers) == n:
            return workers
        time.sleep(0.1)
    pytest.fail(f"expected {n} workers, the scheduler has {len(workers)}")


def test_workers_without_the_gpu_resource_embed_with_a_relative_out(scheduler, demo, reference, tiny_spec,
                                                                     tmp_path, monkeypatch, caplog):
    """``dask worker`` without ``--resources``: used (one warning), never waited for; a relative ``out``
    is the client's, not each worker's working directory."""
    elsewhere = tmp_path / "worker-cwd"
    elsewhere.mkdir()
    worker = _worker(scheduler, elsewhere)
    try:
        with Client(scheduler) as client:
            _wait_workers(client, 1)
            monkeypatch.chdir(tmp_path)
            with caplog.at_level("WARNING", logger="subcell_scale"):
                cells = embed_plate(demo["plate"], tiny_spec, client=client, out="run", progress=False, **SMALL)
    finally:
        _stop(worker)
    assert sum("offers the resource GPU=1" in r.getMessage() for r in caplog.records) == 1
    assert list(cells.obs_names) == list(reference.obs_names)
    assert np.array_equal(np.asarray(cells.X), reference.X)
    assert len(list((tmp_path / "run" / Files.SHARDS).rglob("*.npz"))) == 4
    assert not (elsewhere / "run").exists()
    manifest = json.loads((tmp_path / "run" / Files.MANIFEST).read_text())
    assert manifest["embed"]["summary"]["done"] == 4


def test_a_mixed_cluster_sends_embedding_to_gpu_workers(scheduler, demo, reference, tiny_spec, tmp_path):
    plain = _worker(scheduler, tmp_path, "--name", "cpu-only")
    gpu = _worker(scheduler, tmp_path, "--name", "gpu", "--resources", "GPU=1")
    try:
        with Client(scheduler) as client:
            workers = _wait_workers(client, 2)
            gpu_address = next(a for a, info in workers.items() if info.get("resources"))
            with get_task_stream(client) as stream:
                cells = embed_plate(demo["plate"], tiny_spec, client=client, progress=False, **SMALL)
    finally:
        _stop(plain, gpu)
    embedded_on = {t["worker"] for t in stream.data if str(t["key"]).startswith("embed-")}
    assert embedded_on == {gpu_address}
    assert np.array_equal(np.asarray(cells.X), reference.X)


def test_a_cluster_still_starting_is_waited_for_visibly(scheduler, demo, reference, tiny_spec, tmp_path, capsys):
    late = subprocess.Popen(["bash", "-c", f"sleep 3; exec dask worker {scheduler} --nthreads 1 --no-dashboard "
                                           "--resources GPU=1"], cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        with Client(scheduler) as client:
            _wait_workers(client, 0)
            cells = embed_plate(demo["plate"], tiny_spec, client=client, progress=False, **SMALL)
    finally:
        _stop(late)
    assert "waiting for workers to join the cluster" in capsys.readouterr().out
    assert np.array_equal(np.asarray(cells.X), reference.X)


def test_a_cluster_that_never_gets_a_worker_is_named(scheduler, demo, tiny_spec):
    with Client(scheduler) as client, settings.override(worker_timeout=2):
        _wait_workers(client, 0)
        with pytest.raises(TimeoutError, match=f"no worker joined the cluster at {scheduler} within 2 s"):
            embed_plate(demo["plate"], tiny_spec, client=client, progress=False, **SMALL)
