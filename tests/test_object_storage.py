"""Runs whose ``out`` is an S3 URL: clusters without a shared file system keep the whole run in a bucket.

The bucket is served by a real S3 protocol server on loopback (moto's server mode, ``s3_server`` in
conftest); the cluster's workers are separate processes that reach it with the run's storage options,
started in an empty working directory that must stay empty.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from distributed import get_task_stream
from zarr.storage import FsspecStore

from subcell_scale.store import read_field_records
from subcell_scale._constants import Files, Keys, Status
from subcell_scale.cellstore import read_cells
from subcell_scale.distributed.plugin import loads_per_worker, plugin_name
from subcell_scale.errors import ConfigError, RunDirectoryError
from subcell_scale import embed_plate
from subcell_scale.models import resolve_model
from subcell_scale.profiles import aggregate
from subcell_scale.rundir import RunPath
from subcell_scale.store import ResultsStore

pytestmark = [pytest.mark.s3, pytest.mark.processes]

# a flat field estimated from the plate and a plate intensity percentile: files the run keeps in
# out/flatfield and out/intensity, which the workers read back from the bucket
SMALL = {"out_size": 32, "illumination": "estimate", "plate_upper_percentile": 99.9}
BUCKET = "runs"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """The in-process reference runs with one torch thread, as the workers do."""


@pytest.fixture(scope="module")
def s3(s3_server):
    s3_server.bucket(BUCKET)
    return s3_server


@pytest.fixture(scope="module")
def demo(demo_plates) -> dict:
    return demo_plates(n_plates=1, n_wells=4, n_fields=1, field_size=256, cells_per_field=8, seed=5)


@pytest.fixture(scope="module")
def reference(demo, tiny_spec):
    return embed_plate(demo["plate"], tiny_spec, progress=False, **SMALL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two worker processes (a local cluster) started in an empty folder: ``(client, folder)``."""
    from subcell_scale.distributed import get_client

    folder = tmp_path_factory.mktemp("cluster-cwd")
    before = os.getcwd()
    os.chdir(folder)
    try:
        client = get_client("local", n_workers=2, threads_per_worker=1, dashboard=False)
    finally:
        os.chdir(before)
    yield client, folder
    client.close()


@pytest.fixture(scope="module")
def run(s3, demo, tiny_spec, cluster, tmp_path_factory):
    """The demo plate embedded on the cluster into ``s3://runs/run``, from an empty working directory."""
    client, _ = cluster
    cwd = tmp_path_factory.mktemp("client-cwd")
    before = os.getcwd()
    os.chdir(cwd)
    try:
        cells = embed_plate(demo["plate"], tiny_spec, client=client, out=f"s3://{BUCKET}/run",
                            storage_options=s3.options, progress=False, **SMALL)
    finally:
        os.chdir(before)
    return {"cells": cells, "url": f"s3://{BUCKET}/run", "key": f"{BUCKET}/run", "cwd": cwd}


def _same(cells, reference) -> None:
    assert list(cells.obs_names) == list(reference.obs_names)
    assert np.array_equal(np.asarray(cells.X), reference.X)
    assert np.array_equal(np.asarray(cells.obsm[Keys.LOCALIZATION]), reference.obsm[Keys.LOCALIZATION])
    pd.testing.assert_frame_equal(cells.obs, reference.obs)


def _shards(s3, key: str) -> dict[str, bytes]:
    return {k: s3.fs.cat(k) for k in s3.fs.find(f"{key}/{Files.SHARDS}")}


def _embedded(stream) -> list[str]:
    return [str(t["key"]) for t in stream.data if str(t["key"]).startswith(("prepare-", "embed-"))]


def test_a_cluster_writes_the_whole_run_to_the_bucket_and_nothing_on_local_disk(run, reference, demo, s3, cluster):
    _same(run["cells"], reference)
    keys = set(s3.fs.find(run["key"]))
    plate = os.path.basename(demo["plate"]).removesuffix(".zarr")
    shards = {k for k in keys if k.startswith(f"{run['key']}/{Files.SHARDS}/")}
    assert shards == {f"{run['key']}/{Files.SHARDS}/{plate}/{well}_0.npz" for well in ("A01", "A02", "A03", "A04")}
    for name in (Files.MANIFEST, Files.RUN, f"{Files.FLATFIELD}/{plate}.npy", f"{Files.INTENSITY}/{plate}.npy",
                 f"{Files.CELLS_ZARR}/zarr.json", f"{Files.CELLS_ZARR}/X/zarr.json"):
        assert f"{run['key']}/{name}" in keys, name
    assert f"{run['key']}/{Files.LOCK}" not in keys  # released
    assert not any(k.startswith(f"{run['key']}/{Files.MODEL}/") for k in keys)  # a spec needs no files
    assert not any(".tmp" in k or "/." in k for k in keys)  # nothing left half-written
    manifest = json.loads(s3.fs.cat(f"{run['key']}/{Files.MANIFEST}"))
    assert manifest["embed"]["summary"]["done"] == 4 and manifest["embed"]["summary"]["n_cells"] == reference.n_obs
    assert "testing" not in json.dumps(manifest)  # credentials are never recorded
    # the returned AnnData reads the bucket: its matrix is a dask array over the zarr array there
    (array,) = [v for v in dict(run["cells"].X.__dask_graph__()).values() if isinstance(v, zarr.Array)]
    assert isinstance(array.store, FsspecStore) and array.store.path == f"{run['key']}/{Files.CELLS_ZARR}"
    # nothing went to local disk: neither the client's nor the workers' working directories got a file
    _, worker_cwd = cluster
    assert not any(run["cwd"].rglob("*")) and not any(worker_cwd.rglob("*"))


def test_a_second_call_resumes_from_the_bucket_without_recomputing(run, reference, demo, tiny_spec, s3, cluster,
                                                                   caplog):
    client, _ = cluster
    before = _shards(s3, run["key"])
    with get_task_stream(client) as stream, caplog.at_level("INFO", logger="subcell_scale"):
        again = embed_plate(demo["plate"], tiny_spec, client=client, out=run["url"], storage_options=s3.options,
                            progress=False, **SMALL)
    assert not _embedded(stream)
    assert any(": 4 of 4 fields already done" in r.getMessage() for r in caplog.records)
    assert _shards(s3, run["key"]) == before  # every shard object is the one the first call wrote
    _same(again, reference)


def test_read_cells_opens_the_run_in_the_bucket(run, reference, s3):
    for where in (run["url"], f"{run['url']}/{Files.CELLS_ZARR}", RunPath(run["url"], s3.options)):
        _same(read_cells(where, storage_options=s3.options), reference)
    loaded = read_cells(run["url"], storage_options=s3.options, load=True)
    assert isinstance(loaded.X, np.ndarray) and np.array_equal(loaded.X, reference.X)
    # profiles straight from the bucket, as the README suggests instead of `run` with a URL
    wells = aggregate(read_cells(run["url"], storage_options=s3.options))
    expected = aggregate(reference)
    assert list(wells.obs_names) == list(expected.obs_names) and np.array_equal(wells.X, expected.X)
    with pytest.raises(RunDirectoryError, match="no cells.zarr"):
        read_cells(f"s3://{BUCKET}/nothing-here", storage_options=s3.options)


def test_a_model_instance_is_saved_into_the_bucket_and_the_workers_load_it_from_there(s3, demo, tiny_model,
                                                                                      reference, cluster):
    client, _ = cluster
    cells = embed_plate(demo["plate"], tiny_model, client=client, out=f"s3://{BUCKET}/instance",
                        storage_options=s3.options, progress=False, **SMALL)
    _same(cells, reference)
    saved = set(s3.fs.find(f"{BUCKET}/instance/{Files.MODEL}"))
    assert saved == {f"{BUCKET}/instance/{Files.MODEL}/encoder.pth", f"{BUCKET}/instance/{Files.MODEL}/classifier_0.pth"}
    # the spec the workers were given reads the bucket (the plugin's name is a digest of the spec, paths included)
    spec = resolve_model(tiny_model).for_workers(RunPath(f"s3://{BUCKET}/instance", s3.options) / Files.MODEL)
    assert spec.encoder_path == f"s3://{BUCKET}/instance/{Files.MODEL}/encoder.pth"
    loads = client.run(loads_per_worker)
    assert all(n == {plugin_name(spec): 1} for n in loads.values())  # loaded from there, once per worker


def test_a_half_written_manifest_object_is_kept_aside_and_rebuilt(run, reference, demo, tiny_spec, s3, cluster):
    client, _ = cluster
    key = f"{BUCKET}/damaged"
    for name in s3.fs.find(run["key"]):
        if f"/{Files.CELLS_ZARR}/" not in name:
            s3.fs.copy(name, key + name[len(run["key"]):])
    half = s3.fs.cat(f"{key}/{Files.MANIFEST}")[:150]
    s3.fs.pipe(f"{key}/{Files.MANIFEST}", half)
    with get_task_stream(client) as stream:
        cells = embed_plate(demo["plate"], tiny_spec, client=client, out=f"s3://{key}", storage_options=s3.options,
                            progress=False, **SMALL)
    assert not _embedded(stream)  # rebuilt from the shards it could verify
    _same(cells, reference)
    (aside,) = s3.fs.glob(f"{key}/{Files.MANIFEST}.damaged-*")
    assert s3.fs.cat(aside) == half
    manifest = json.loads(s3.fs.cat(f"{key}/{Files.MANIFEST}"))
    records = read_field_records(f"s3://{key}", s3.options)
    assert {f["status"] for f in records.values()} == {Status.DONE} and len(records) == 4


def test_a_missing_bucket_or_bad_credentials_give_one_clear_error_naming_the_url(s3, demo, tiny_spec):
    url = "s3://no-such-bucket/run"
    with pytest.raises(RunDirectoryError, match="bucket exists") as missing:
        embed_plate(demo["plate"], tiny_spec, out=url, storage_options=s3.options, progress=False, **SMALL)
    assert url in str(missing.value) and "\n" not in str(missing.value)
    wrong = {**s3.options, "key": "someone", "secret": "wrong"}
    with s3.checking_credentials(), pytest.raises(RunDirectoryError, match="credentials") as refused:
        embed_plate(demo["plate"], tiny_spec, out=f"s3://{BUCKET}/refused", storage_options=wrong, progress=False,
                    **SMALL)
    assert f"s3://{BUCKET}/refused" in str(refused.value)
    assert not s3.fs.exists(f"{BUCKET}/refused")


def test_the_lock_on_object_storage_refuses_a_second_run_and_takes_over_a_dead_ones(s3):
    url = f"s3://{BUCKET}/locked"
    store = ResultsStore(url, storage_options=s3.options)
    with store.lock():
        assert json.loads(s3.fs.cat(f"{BUCKET}/locked/{Files.LOCK}"))["pid"] == os.getpid()
        with pytest.raises(RunDirectoryError, match="in use by another run"):
            with ResultsStore(url, storage_options=s3.options).lock():
                pass
        with pytest.raises(FileExistsError):  # the conditional PUT itself refuses
            (store.root / Files.LOCK).create(b"{}")
    assert not s3.fs.exists(f"{BUCKET}/locked/{Files.LOCK}")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    s3.fs.pipe(f"{BUCKET}/locked/{Files.LOCK}",
               json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}).encode())
    with store.lock():
        assert json.loads(s3.fs.cat(f"{BUCKET}/locked/{Files.LOCK}"))["pid"] == os.getpid()
    s3.fs.pipe(f"{BUCKET}/locked/{Files.LOCK}", json.dumps({"pid": 1, "host": "another-node"}).encode())
    with pytest.raises(RunDirectoryError, match="another-node"):  # never taken from another host
        with store.lock():
            pass
    s3.fs.rm(f"{BUCKET}/locked/{Files.LOCK}")


def test_the_command_line_embeds_to_a_url_with_credentials_from_the_environment(s3, demo, reference, tiny_model,
                                                                                 tmp_path):
    checkpoint = tmp_path / "tiny.pth"
    torch.save(tiny_model.encoder_state_dict(), checkpoint)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_ENDPOINT_URL": s3.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    sets = [f"{k}={json.dumps(v)}" for k, v in SMALL.items()]
    done = subprocess.run([sys.executable, "-c", "import sys; from subcell_scale.cli import main; sys.exit(main())",
                           "embed", demo["plate"], "--model", str(checkpoint), "--out", f"s3://{BUCKET}/cli",
                           "--no-progress", "--set", *sets], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert f"-> s3://{BUCKET}/cli" in done.stdout
    cells = read_cells(f"s3://{BUCKET}/cli", storage_options=s3.options)
    assert list(cells.obs_names) == list(reference.obs_names)
    assert np.array_equal(np.asarray(cells.X), reference.X)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pth"]


def test_run_asks_for_a_local_out(demo):
    from subcell_scale.workflow import run

    with pytest.raises(ConfigError, match="give a local --out .* embed --out URL"):
        run(demo["plate"], out=f"s3://{BUCKET}/whole-run")


def test_h5ad_cells_need_a_local_out(s3, demo, tiny_spec):
    with pytest.raises(ConfigError, match="format='zarr' on object storage"):
        embed_plate(demo["plate"], tiny_spec, out=f"s3://{BUCKET}/h5ad", storage_options=s3.options, format="h5ad",
                    progress=False, **SMALL)


@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path, s3_server) -> RunPath:
    """An empty run directory, on local disk and in the bucket: RunPath behaves the same on both."""
    if request.param == "local":
        return RunPath(tmp_path / "place")
    s3_server.bucket("places")
    return RunPath(f"s3://places/{tmp_path.name}", s3_server.options)


def test_run_paths_write_whole_files_on_disk_and_in_a_bucket(place, tmp_path):
    target = place / "model" / "encoder.pth"
    with pytest.raises(ZeroDivisionError), target.writer() as fh:
        fh.write(b"half")
        _ = 1 / 0
    assert not target.exists()  # a failed writer publishes nothing
    with target.writer() as fh:
        fh.write(b"weights")
    with target.local_copy() as local:
        assert local.read_bytes() == b"weights"
    target.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(FileExistsError):
        target.create(b"other")
    (place / "lock").create(b"mine")
    assert (place / "lock").read_bytes() == b"mine"
    with pytest.raises(FileNotFoundError):
        (place / "missing").read_bytes()

    staging = tmp_path / "staging"
    (staging / "X" / "c").mkdir(parents=True)
    (staging / "zarr.json").write_text("{}")
    (staging / "X" / "c" / "0").write_bytes(b"chunk")
    store = place / "cells.zarr"
    store.put_tree(staging, skip=("zarr.json",))
    assert (store / "X" / "c" / "0").exists() and not (store / "zarr.json").exists()
    store.put_tree(staging)
    assert (store / "zarr.json").read_bytes() == b"{}" and not any(p.is_file() for p in staging.rglob("*"))
    (place / "lock").move(place / "lock-aside")
    assert not (place / "lock").exists() and (place / "lock-aside").read_bytes() == b"mine"
    store.remove()
    assert not store.exists() and target.exists()
