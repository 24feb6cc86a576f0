"""Cluster files: SLURM job scripts and Kubernetes specs carry the GPU wiring; local kinds really start."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import yaml

from subcell_scale.distributed import deploy
from subcell_scale.errors import ConfigError

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "cluster"


def _walk(obj):
    """Every (key, value) pair in a nested dict/list structure."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _walk(value)


@pytest.mark.parametrize("name", ["local.yaml", "local-cuda.yaml", "slurm.yaml", "kubernetes.yaml"])
def test_shipped_cluster_files_load(name):
    cfg = deploy.load_cluster_config(CLUSTER_DIR / name)
    assert cfg["kind"] in deploy.KINDS
    assert cfg["source"].endswith(name)


def test_slurm_job_script_has_one_gpu_the_resource_and_the_prologue():
    script = deploy.render_slurm_job_script(CLUSTER_DIR / "slurm.yaml")
    lines = script.splitlines()
    assert "#SBATCH --gres=gpu:1" in lines
    assert "#SBATCH -p gpu" in lines
    assert "#SBATCH --cpus-per-task=8" in lines
    assert "#SBATCH -t 04:00:00" in lines
    worker = [i for i, line in enumerate(lines) if "distributed.cli.dask_worker" in line]
    assert len(worker) == 1
    command = lines[worker[0]]
    assert command.startswith("python3 -m distributed.cli.dask_worker")
    assert "--resources GPU=1" in command
    assert "--nworkers" not in command  # one worker process per job and GPU
    prologue = yaml.safe_load((CLUSTER_DIR / "slurm.yaml").read_text())["slurm"]["job_script_prologue"]
    positions = [lines.index(line) for line in prologue]
    assert positions == sorted(positions)
    assert positions[-1] < worker[0]  # the environment is active before the worker starts
    assert lines[0] == "#!/usr/bin/env bash"


def _slurm(**section):
    base = {"cores": 4, "memory": "16GB", "job_script_prologue": ["source env/bin/activate"]}
    return {"kind": "slurm", "workers": 2, "slurm": {**base, **section}}


def test_slurm_site_gpu_directive_replaces_the_default():
    script = deploy.render_slurm_job_script(_slurm(job_extra_directives=["--gpus=1", "--constraint=a100"]))
    assert "#SBATCH --gpus=1" in script
    assert "#SBATCH --constraint=a100" in script
    assert "--gres" not in script
    assert "--resources GPU=1" in script


def test_slurm_without_gpu_keeps_the_model_slot():
    script = deploy.render_slurm_job_script(_slurm(gpu=False))
    assert "--gres" not in script and "--gpus" not in script
    assert "--resources GPU=1" in script


def test_slurm_user_resources_are_not_doubled():
    script = deploy.render_slurm_job_script(_slurm(worker_extra_args=["--resources", "GPU=1,MEM=1"]))
    assert script.count("--resources") == 1
    assert "--resources GPU=1,MEM=1" in script


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"processes": 2}, "processes must be 1"),
        ({"job_script_prologue": "source env/bin/activate"}, "must be a list"),
        ({"queu": "gpu"}, "not accepted by dask-jobqueue.*queu"),
        ({"gpu": "yes"}, "gpu must be true or false"),
    ],
)
def test_slurm_bad_sections_name_the_problem(section, match):
    with pytest.raises(ConfigError, match=match):
        deploy.render_slurm_job_script(_slurm(**section))


def test_slurm_needs_cores_and_memory():
    with pytest.raises(ConfigError, match="slurm.memory is required"):
        deploy.render_slurm_job_script({"kind": "slurm", "slurm": {"cores": 4}})


def test_slurm_cluster_starts_its_scheduler_and_uses_the_same_script():
    cfg = _slurm(scheduler_options={"dashboard_address": ":0"})
    cfg["workers"] = 0  # nothing is submitted: no sbatch here
    cluster = deploy.cluster_from_file(cfg)
    try:
        script = cluster.job_script()
        assert cluster.scheduler_address in script
        assert "#SBATCH --gres=gpu:1" in script
        assert "--resources GPU=1" in script
        assert "source env/bin/activate" in script
    finally:
        cluster.close()


def test_kubernetes_spec_gpu_on_workers_only():
    spec = deploy.render_kubernetes_spec(CLUSTER_DIR / "kubernetes.yaml")
    assert spec["apiVersion"] == "kubernetes.dask.org/v1"
    assert spec["kind"] == "DaskCluster"
    assert spec["metadata"]["name"] == "subcell-scale"
    worker_group = spec["spec"]["worker"]
    assert worker_group["replicas"] == 4
    (worker,) = worker_group["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["args"][0] == "dask-cuda-worker"
    i = worker["args"].index("--resources")
    assert worker["args"][i + 1] == "GPU=1"
    assert "$(DASK_WORKER_NAME)" in worker["args"]
    scheduler_part = spec["spec"]["scheduler"]
    assert not any(key == "nvidia.com/gpu" for key, _ in _walk(scheduler_part))
    (scheduler,) = scheduler_part["spec"]["containers"]
    assert scheduler["args"][0] == "dask-scheduler"
    assert {p["containerPort"] for p in scheduler["ports"]} == {8786, 8787}
    assert scheduler_part["service"]["selector"] == {
        "dask.org/cluster-name": "subcell-scale", "dask.org/component": "scheduler"}
    # requests/limits from the file survive next to the GPU limit
    assert worker["resources"]["requests"] == {"cpu": "4", "memory": "24Gi"}
    assert worker["resources"]["limits"]["memory"] == "32Gi"
    assert scheduler["resources"]["limits"] == {"memory": "4Gi"}
    # the shared volume reaches both pods
    for part in (worker_group, scheduler_part):
        assert part["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "subcell-scale-data"
    assert worker["volumeMounts"] == scheduler["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert {"name": "SUBCELL_SCALE_HOME", "value": "/data/models"} in worker["env"]


def test_kubernetes_spec_dumps_as_plain_yaml():
    spec = deploy.render_kubernetes_spec(CLUSTER_DIR / "kubernetes.yaml")
    text = yaml.safe_dump(spec)
    assert "&id" not in text and "*id" not in text  # no shared objects: kubectl-friendly
    assert yaml.safe_load(text) == spec


def test_kubernetes_cpu_only_and_custom_command():
    spec = deploy.render_kubernetes_spec({
        "kind": "kubernetes", "workers": 2,
        "kubernetes": {"gpus_per_worker": 0, "worker_command": ["dask", "worker"]},
    })
    (worker,) = spec["spec"]["worker"]["spec"]["containers"]
    assert worker["args"][:2] == ["dask", "worker"]
    assert not any(key == "nvidia.com/gpu" for key, _ in _walk(spec))


def test_kubernetes_unknown_key_is_named():
    with pytest.raises(ConfigError, match="imag\\b"):
        deploy.render_kubernetes_spec({"kind": "kubernetes", "kubernetes": {"imag": "x"}})


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("dask_kubernetes") is not None,
    reason="dask-kubernetes installed: cluster_from_file would contact a cluster",
)
def test_kubernetes_without_dask_kubernetes_says_how_to_apply():
    with pytest.raises(ConfigError, match="kubectl apply"):
        deploy.cluster_from_file(CLUSTER_DIR / "kubernetes.yaml")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("kind: pbs\n", "'kind' must be one of"),
        ("kind: local\nworker: 2\n", "unknown key.*'worker'"),
        ("kind: local\nworkers: -1\n", "non-negative integer"),
        ("kind: local\nlocal: [1, 2]\n", "must be a mapping"),
        ("- a\n- b\n", "must hold a mapping"),
        ("kind: [local\n", "not valid YAML"),
    ],
)
def test_bad_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match) as info:
        deploy.load_cluster_config(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        deploy.cluster_from_file(tmp_path / "nope.yaml")


def test_local_misspelt_option_fails_before_starting():
    with pytest.raises(ConfigError, match="memory_limt"):
        deploy.cluster_from_file({"kind": "local", "workers": 1, "local": {"memory_limt": "1GiB"}})


def _gpu_task(x):
    return x + 1


@pytest.fixture(scope="module")
def local_cluster_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cluster") / "local.yaml"
    path.write_text("kind: local\nworkers: 1\nthreads_per_worker: 2\nlocal:\n  memory_limit: 1GiB\n"
                    "  dashboard_address: ':0'\n")
    return path


@pytest.mark.processes
def test_local_cluster_starts_with_gpu_resource(local_cluster_file):
    from distributed import Client

    cluster = deploy.cluster_from_file(local_cluster_file)
    try:
        with Client(cluster) as client:
            info = client.scheduler_info()["workers"]
            assert len(info) == 1
            (worker,) = info.values()
            assert worker["resources"] == {"GPU": 1}
            assert worker["nthreads"] == 2
            assert worker["memory_limit"] == 2**30
            assert client.submit(_gpu_task, 41, resources={"GPU": 1}).result(timeout=60) == 42
    finally:
        cluster.close()


@pytest.mark.processes
def test_cuda_kind_falls_back_to_cpu_with_a_warning(caplog):
    pytest.importorskip("distributed")
    if __import__("importlib").util.find_spec("dask_cuda") is not None:
        pytest.skip("dask-cuda installed: the fallback is not taken")
    from distributed import Client

    cfg = {"kind": "cuda", "workers": 1, "cuda": {"device_memory_limit": 0.8, "dashboard_address": ":0"}}
    with caplog.at_level(logging.WARNING, logger="subcell_scale.distributed.deploy"):
        cluster = deploy.cluster_from_file(cfg)
    try:
        assert "starting a LocalCluster without GPU pinning" in caplog.text
        with Client(cluster) as client:
            (worker,) = client.scheduler_info()["workers"].values()
            assert worker["resources"] == {"GPU": 1}
    finally:
        cluster.close()


@pytest.mark.processes
def test_get_client_starts_the_cluster_of_a_file(local_cluster_file):
    from subcell_scale.distributed import get_client

    client = get_client(cluster=local_cluster_file)
    cluster = client.cluster
    try:
        (worker,) = client.scheduler_info()["workers"].values()
        assert worker["resources"] == {"GPU": 1}
        assert client.submit(_gpu_task, 1, resources={"GPU": 1}).result(timeout=60) == 2
    finally:
        client.close()
    assert cluster.status.name == "closed"  # closing the client closes the cluster the file started


# -- a real SLURM ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """munged + slurmctld + slurmd on loopback, configured in a temporary folder (see tests/_slurm.py)."""
    from _slurm import single_node_slurm, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    with single_node_slurm(root) as env, pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", env["SLURM_CONF"])  # sbatch, squeue and scancel of dask-jobqueue find it
        yield {"env": env, "root": root}


@pytest.mark.slurm
def test_embed_plate_on_sbatch_started_workers_equals_the_in_process_run(slurm, tmp_path, one_torch_thread):
    import os
    import sys

    import numpy as np

    from _slurm import PARTITION, queue
    from subcell_scale.distributed import get_client
    from subcell_scale.models import ModelSpec
    from subcell_scale.io.demo import make_demo_plate
    from subcell_scale.models.config import ModelConfig
    from subcell_scale import embed_plate

    (plate,) = make_demo_plate(tmp_path / "demo", n_plates=1, n_wells=4, n_fields=2, field_size=256,
                               cells_per_field=8, seed=3)
    tiny = ModelConfig(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=128, num_channels=4,
                       pool_int_dim=32)
    spec = ModelSpec("random", config=tiny.to_dict(), seed=0, n_classifiers=1)
    cluster_file = tmp_path / "slurm-cpu.yaml"
    cluster_file.write_text(yaml.safe_dump({"kind": "slurm", "workers": 2, "slurm": {
        "gpu": False, "queue": PARTITION, "cores": 1, "memory": "2GB", "walltime": "00:10:00",
        "job_script_prologue": ["export OMP_NUM_THREADS=1"], "python": sys.executable,
        "local_directory": str(tmp_path / "scratch"), "log_directory": str(slurm["root"] / "jobs"),
        "scheduler_options": {"dashboard_address": ":0"}}}))

    client = get_client(cluster=cluster_file, dashboard=False)
    try:
        script = client.cluster.job_script()
        assert "--resources GPU=1" in script and "--gres" not in script and f"#SBATCH -p {PARTITION}" in script
        client.wait_for_workers(2, timeout=60)
        jobs = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
        assert len(set(jobs.values())) == 2 and set(jobs.values()) <= set(queue(slurm["env"]))  # sbatch's jobs
        on_slurm = embed_plate(plate, spec, client=client, progress=False, out_size=32)
    finally:
        client.close()
    in_process = embed_plate(plate, spec, progress=False, out_size=32)
    assert on_slurm.n_obs == in_process.n_obs > 0
    assert list(on_slurm.obs_names) == list(in_process.obs_names)
    assert np.array_equal(np.asarray(on_slurm.X), np.asarray(in_process.X))  # bit-identical on CPU
    assert np.array_equal(on_slurm.obsm["localization"], in_process.obsm["localization"])
    # closing the client cancelled the worker jobs
    deadline = time.monotonic() + 30
    while queue(slurm["env"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert queue(slurm["env"]) == []
