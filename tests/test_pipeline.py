"""embed_plate end to end on demo plates: in-process vs LocalCluster, accounting, resume, AnnData contract."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from subcell_scale.store import read_field_records
from subcell_scale._constants import VAR_PREFIX, Files, Keys, Obs
from subcell_scale.distributed import loads_per_worker
from subcell_scale.errors import (
    ChannelMismatchError,
    CheckpointError,
    ConfigError,
    PlateNotFoundError,
    RunDirectoryError,
)
from subcell_scale.io import open_plate
from subcell_scale.models import ModelSpec, SubCell
from subcell_scale.models.registry import CLASS_NAMES
from subcell_scale import embed_plate
from subcell_scale.store import read_shard

SMALL = {"out_size": 64}  # the physical crop stays 71.68 um; the model sees 64 px


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every test here runs with one torch thread."""


@pytest.fixture(scope="module")
def demo(demo_plates) -> dict:
    return demo_plates(n_plates=2, n_wells=4, n_fields=1, field_size=384, cells_per_field=16, seed=0)


@pytest.fixture(scope="module")
def model(tiny_model) -> SubCell:
    return tiny_model


@pytest.fixture(scope="module")
def spec(tiny_spec) -> ModelSpec:
    return tiny_spec


@pytest.fixture(scope="module")
def reference(demo, model, tmp_path_factory):
    """The in-process run every other run is compared with."""
    out = tmp_path_factory.mktemp("ref")
    adata = embed_plate(demo["plates"], model, out=out, platemap=demo["platemap"], progress=False, **SMALL)
    return out, adata


@pytest.fixture(scope="module")
def client(local_client):
    return local_client


def _same(a: ad.AnnData, b: ad.AnnData) -> None:
    assert list(a.obs_names) == list(b.obs_names)
    x, y = np.asarray(a.X), np.asarray(b.X)
    assert np.array_equal(x, y), f"max difference {np.abs(x - y).max()}"
    assert np.array_equal(np.asarray(a.obsm[Keys.LOCALIZATION]), np.asarray(b.obsm[Keys.LOCALIZATION]))
    pd.testing.assert_frame_equal(a.obs, b.obs)


def test_cells_anndata_contract(demo, reference, tiny_config):
    out, adata = reference
    assert adata.n_obs > 20
    assert adata.X.dtype == np.float32 and adata.n_vars == tiny_config.embedding_dim
    assert list(adata.var_names[:2]) == [f"{VAR_PREFIX}0000", f"{VAR_PREFIX}0001"]
    obs = adata.obs
    for col in Obs.CATEGORICAL:
        assert isinstance(obs[col].dtype, pd.CategoricalDtype), col
    assert set(obs["compound"]) and "control_type" in obs and "moa" in obs
    assert all(name == f"{p}_{w}_{f}_{lab}" for name, p, w, f, lab in
               zip(adata.obs_names, obs[Obs.PLATE], obs[Obs.WELL], obs[Obs.FIELD], obs[Obs.LABEL]))
    # deterministic order: plate, well, field, label
    keys = list(zip(obs[Obs.PLATE].astype(str), obs[Obs.WELL].astype(str), obs[Obs.FIELD].astype(str), obs[Obs.LABEL]))
    assert keys == sorted(keys)
    # platemap joined on (plate, well)
    platemap = pd.read_csv(demo["platemap"]).set_index(["plate", "well"])
    expected = platemap.loc[list(zip(obs[Obs.PLATE].astype(str), obs[Obs.WELL].astype(str))), "compound"].to_numpy()
    assert np.array_equal(obs["compound"].astype(str).to_numpy(), expected)
    # row / column from the well name
    assert all(str(w)[0] == str(r) and int(str(w)[1:]) == int(c) for w, r, c in zip(obs[Obs.WELL], obs[Obs.ROW], obs[Obs.COLUMN]))
    # spatial = centroids (x, y) in micrometres
    plate = open_plate(demo["plates"][0])
    py, px = plate.pixel_size
    np.testing.assert_allclose(adata.obsm[Keys.SPATIAL], np.c_[obs[Obs.CENTROID_X] * px, obs[Obs.CENTROID_Y] * py])
    assert adata.obsm[Keys.LOCALIZATION].shape == (adata.n_obs, 31)
    assert list(adata.uns[Keys.LOCALIZATION_CLASSES]) == list(CLASS_NAMES)
    prov = adata.uns[Keys.PROVENANCE]
    assert prov["checkpoint_sha256"] == SubCell.random(tiny_config, seed=0).checkpoint_sha256
    assert prov["channel_mapping"]["demo-plate-1"] == {"microtubules": "microtubules", "er": "er", "dna": "nucleus",
                                                      "protein": "protein"}
    assert prov["crop"]["out_size"] == 64 and prov["crop"]["crop_um"] == pytest.approx(71.68)
    assert list(prov["crop_window_px"]["demo-plate-1"]) == [224, 224]  # 71.68 um at 0.32 um/px
    assert prov["plates"]["demo-plate-1"] == demo["plates"][0]


def test_embeddings_equal_the_model_on_the_crops(demo, reference, model):
    """The pipeline's X for a field is exactly the model applied to that field's crops."""
    from subcell_scale.pipeline import field_crops

    _, adata = reference
    crops, cells = field_crops(demo["plates"][0], "A01", "0", **SMALL)
    direct = model.embed(crops[:, 0], batch_size=7)["embedding"]
    sub = adata[(adata.obs[Obs.PLATE] == "demo-plate-1") & (adata.obs[Obs.WELL] == "A01")]
    assert list(sub.obs[Obs.LABEL]) == list(cells[Obs.LABEL])
    assert np.array_equal(np.asarray(sub.X), direct)


def test_written_anndata_reads_back_and_runs_scanpy(reference):
    import scanpy as sc

    out, adata = reference
    back = ad.read_zarr(out / Files.CELLS_ZARR)
    _same(adata, back)
    assert back.uns[Keys.PROVENANCE]["checkpoint_sha256"] == adata.uns[Keys.PROVENANCE]["checkpoint_sha256"]
    sc.pp.neighbors(back, use_rep="X", n_neighbors=5, method="gauss")  # no numba JIT: seconds, not a minute
    sc.tl.umap(back)
    sc.tl.leiden(back, flavor="igraph", n_iterations=2)
    assert back.obsm["X_umap"].shape == (back.n_obs, 2)
    assert back.obs["leiden"].nunique() >= 1


def test_every_ground_truth_cell_is_embedded_or_dropped_with_a_reason(demo, reference):
    out, adata = reference
    manifest = json.loads((out / Files.MANIFEST).read_text())
    records = read_field_records(out)
    n_dropped = 0
    for path in demo["plates"]:
        plate = open_plate(path)
        for well in plate.wells:
            for fld in plate.fields(well):
                truth = set(np.unique(plate.read_labels(well, fld, "cells")).tolist()) - {0}
                shard = read_shard(out / "shards" / plate.name / f"{well}_{fld}.npz")
                mask = (adata.obs[Obs.PLATE] == plate.name) & (adata.obs[Obs.WELL] == well) & (adata.obs[Obs.FIELD] == fld)
                embedded = set(adata.obs.loc[mask, Obs.LABEL].tolist())
                dropped = [lab for labels in shard.dropped.values() for lab in labels]
                assert embedded.isdisjoint(dropped) and len(dropped) == len(set(dropped))
                assert embedded | set(dropped) == truth
                record = records[f"{plate.name}/{well}/{fld}"]
                assert record["status"] == "done" and record["n_cells"] == len(embedded)
                assert record["dropped"] == {k: len(v) for k, v in shard.dropped.items()}
                n_dropped += len(dropped)
    assert n_dropped > 0  # the demo has border cells, so the check above is not vacuous
    assert manifest["embed"]["summary"]["n_cells"] == adata.n_obs


@pytest.mark.processes
def test_cluster_runs_are_bit_identical_to_in_process(demo, reference, spec, model, client, tmp_path):
    _, ref = reference
    two = embed_plate(demo["plates"], spec, client=client, out=tmp_path / "two", platemap=demo["platemap"],
                      progress=False, **SMALL)
    _same(ref, two)
    # the model was built once on each worker, however many fields each ran
    loads = client.run(loads_per_worker)
    assert len(loads) == 2 and all(list(v.values()) == [1] for v in loads.values())
    # an instance reaches the workers as a checkpoint file in out, not through the graph
    inst = embed_plate(demo["plates"], model, client=client, out=tmp_path / "inst", platemap=demo["platemap"],
                       progress=False, batch_size=3, **SMALL)
    _same(ref, inst)
    assert (tmp_path / "inst" / "model" / "encoder.pth").is_file()
    assert all(list(v.values()) == [1] for v in client.run(loads_per_worker).values())


@pytest.mark.processes
def test_one_worker_and_another_batch_size_give_the_same_embeddings(demo, reference, spec, client):
    _, ref = reference
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    client.retire_workers(workers=workers[1:])  # last user of the module's cluster: keep one worker
    assert len(client.scheduler_info(n_workers=-1)["workers"]) == 1
    adata = embed_plate(demo["plates"], spec, client=client, platemap=demo["platemap"], batch_size=5,
                        progress=False, **SMALL)
    _same(ref, adata)
    # crops cut with torch on the embedding side: the same within float32 rounding
    on_device = embed_plate(demo["plates"], spec, client=client, platemap=demo["platemap"], batch_size=5,
                            progress=False, crop_on="device", **SMALL)
    assert list(on_device.obs_names) == list(ref.obs_names)
    np.testing.assert_allclose(on_device.X, ref.X, atol=1e-4)


@pytest.mark.slow
def test_a_failed_field_is_recorded_and_a_rerun_finishes_only_it(demo, reference, model, tmp_path):
    _, ref = reference
    plates = [str(shutil.copytree(p, tmp_path / Path(p).name)) for p in demo["plates"]]
    field = Path(plates[1]) / open_plate(plates[1]).well_path("A02") / "0"
    level0 = json.loads((field / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]["datasets"][0]
    image = field / level0["path"]
    chunks = sorted(p for p in image.rglob("*") if p.is_file() and p.name != "zarr.json")
    original = chunks[0].read_bytes()
    chunks[0].write_bytes(b"not a zarr chunk")  # a damaged chunk (a missing one would read as zeros)
    out = tmp_path / "run"
    first = embed_plate(plates, model, out=out, platemap=demo["platemap"], progress=False, retries=1, **SMALL)
    manifest = json.loads((out / Files.MANIFEST).read_text())
    record = read_field_records(out)["demo-plate-2/A02/0"]
    assert record["status"] == "failed" and record["attempts"] == 2
    assert "A02" in record["error"]
    assert manifest["embed"]["summary"]["failed"] == 1 and manifest["embed"]["summary"]["done"] == 7
    assert list(first.uns[Keys.PROVENANCE]["failed_fields"]) == ["demo-plate-2/A02/0"]
    assert not (first.obs[Obs.WELL].astype(str) + first.obs[Obs.PLATE].astype(str) == "A02demo-plate-2").any()

    chunks[0].write_bytes(original)
    shards = sorted((out / "shards").rglob("*.npz"))
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    second = embed_plate(plates, model, out=out, platemap=demo["platemap"], progress=False, **SMALL)
    assert all(p.stat().st_mtime_ns == stamps[p] for p in shards)  # finished fields were not recomputed
    assert read_field_records(out)["demo-plate-2/A02/0"]["status"] == "done"
    _same(ref, second)


def _embed_cmd(plates: list[str], out: Path, checkpoint: Path) -> list[str]:
    return [sys.executable, "-c", "import sys; from subcell_scale.cli import main; sys.exit(main())", "embed", *plates, "--model", str(checkpoint),
            "--out", str(out), "--set", "out_size=64", "--no-progress", "--batch-size", "4"]


@pytest.mark.slow
def test_killed_cli_run_resumes_to_the_same_anndata(demo, reference, model, tmp_path):
    _, ref = reference
    ref = ref[ref.obs[Obs.PLATE] == "demo-plate-1"]
    plates = demo["plates"][:1]  # four fields
    checkpoint = tmp_path / "tiny.pth"
    torch.save(model.encoder_state_dict(), checkpoint)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_embed_cmd(plates, out, checkpoint), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if list((out / "shards").rglob("*.npz")):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(list((out / "shards").rglob("*.npz")))
    assert 0 < n_before < 4, "the run was not stopped midway"
    assert not (out / Files.CELLS_ZARR).exists()

    done = subprocess.run(_embed_cmd(plates, out, checkpoint), env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    back = ad.read_zarr(out / Files.CELLS_ZARR)
    assert back.obs_names.is_unique
    assert list(back.obs_names) == list(ref.obs_names)
    assert np.array_equal(np.asarray(back.X), np.asarray(ref.X))
    assert Keys.LOCALIZATION not in back.obsm  # no classifiers given on the command line
    manifest = json.loads((out / Files.MANIFEST).read_text())
    assert manifest["embed"]["summary"]["done"] == 4 and manifest["embed"]["summary"]["failed"] == 0


def test_out_directory_with_other_parameters_is_refused(demo, reference, model):
    out, _ = reference
    with pytest.raises(RunDirectoryError, match="other parameters"):
        embed_plate(demo["plates"], model, out=out, progress=False, out_size=32)


def test_missing_channel_fails_before_any_work(demo, model, tmp_path):
    with pytest.raises(ChannelMismatchError, match="Mito"):
        embed_plate(demo["plates"][0], model, out=tmp_path / "x", channel_map={"protein": "Mito"}, progress=False)
    assert not (tmp_path / "x").exists()


def test_in_memory_run_without_out(demo, reference, model):
    _, ref = reference
    adata = embed_plate(demo["plates"], model, platemap=demo["platemap"], progress=False, batch_size=1, **SMALL)
    _same(ref, adata)


def test_fields_without_labels_are_segmented_and_the_labels_written_back(demo, model, tmp_path):
    plate_path = str(shutil.copytree(demo["plates"][0], tmp_path / "p.zarr"))
    with pytest.raises(PlateNotFoundError, match="well A01 field 0: no label image 'seg'.* segmentation is off"):
        embed_plate(plate_path, model, label_name="seg", segment_if_missing=False, progress=False, **SMALL)
    out = tmp_path / "run"
    adata = embed_plate(plate_path, model, out=out, label_name="seg", progress=False, **SMALL)
    plate = open_plate(plate_path)
    for well in plate.wells:
        assert "seg" in plate.label_names(well, "0")
        shard = read_shard(out / "shards" / plate.name / f"{well}_0.npz")
        assert shard.meta["segmented"] is True
        labels = plate.read_labels(well, "0", "seg")
        kept = adata.obs.loc[adata.obs[Obs.WELL] == well, Obs.LABEL]
        assert set(kept) | {v for vals in shard.dropped.values() for v in vals} == set(np.unique(labels)) - {0}
    assert adata.n_obs > 0
    # the written labels are used as they are on the next run: nothing is segmented again
    again = embed_plate(plate_path, model, label_name="seg", segment_if_missing=False, progress=False, **SMALL)
    _same(adata, again)


@pytest.mark.parametrize(("model_arg", "error", "match"), [
    ("missing/encoder.pth", CheckpointError, "missing/encoder.pth does not exist"),
    ("NoSuchVariant", ConfigError, "unknown SubCell variant 'NoSuchVariant'; known variants: all_channels"),
])
def test_bad_model_arguments_are_named(demo, model_arg, error, match, tmp_path):
    with pytest.raises(error, match=match):
        embed_plate(demo["plates"][0], model_arg, out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_finished_field_whose_labels_changed_is_recomputed(demo, model, tmp_path):
    from subcell_scale.io import write_labels

    plate_path = str(shutil.copytree(demo["plates"][0], tmp_path / "p.zarr"))
    out = tmp_path / "run"
    first = embed_plate(plate_path, model, out=out, progress=False, **SMALL).to_memory()  # the store is replaced
    assert isinstance(first.X, np.ndarray)
    shards = {p: p.stat().st_mtime_ns for p in (out / Files.SHARDS).rglob("*.npz")}
    plate = open_plate(plate_path)
    labels = plate.read_labels("A02", "0", "cells")
    largest = np.bincount(labels.ravel())[1:].argmax() + 1
    write_labels(plate, "A02", "0", "cells", np.where(labels == largest, 0, labels))  # one cell erased
    time.sleep(0.01)  # a new modification stamp even on coarse file systems
    again = embed_plate(plate_path, model, out=out, progress=False, **SMALL)
    changed = [p.name for p, t in shards.items() if p.stat().st_mtime_ns != t]
    assert changed == ["A02_0.npz"]
    lost = f"{plate.name}_A02_0_{largest}"
    assert lost in first.obs_names and lost not in again.obs_names and again.n_obs == first.n_obs - 1
    kept = first.obs_names[first.obs_names != lost]
    assert np.array_equal(np.asarray(again[kept].X), np.asarray(first[kept].X))


@pytest.mark.processes
@pytest.mark.parametrize("per_task", [3, 8])
def test_fields_embedded_together_give_the_same_cells(demo, reference, spec, client, per_task, tmp_path):
    """Small fields share a GPU task to fill its batches; the cells and their embeddings do not change,
    and shards are written by their own tasks, after the GPU is released."""
    from distributed import get_task_stream

    _, ref = reference
    with get_task_stream(client) as stream:
        grouped = embed_plate(demo["plates"], spec, client=client, out=tmp_path, platemap=demo["platemap"],
                              progress=False, fields_per_task=per_task, **SMALL)
    _same(ref, grouped)
    keys = [str(t["key"]) for t in stream.data]
    n_fields = sum(len(open_plate(p).wells) for p in demo["plates"])
    assert sum(k.startswith("embed-") for k in keys) == -(-n_fields // per_task)
    assert sum(k.startswith("write-") for k in keys) == -(-n_fields // per_task)
    in_process = embed_plate(demo["plates"], spec, platemap=demo["platemap"], progress=False,
                             fields_per_task=per_task, **SMALL)
    _same(ref, in_process)


def test_a_bad_field_fails_alone_within_its_group(demo, reference, model, tmp_path):
    _, ref = reference
    plates = [str(shutil.copytree(p, tmp_path / Path(p).name)) for p in demo["plates"]]
    field = Path(plates[0]) / open_plate(plates[0]).well_path("A02") / "0"
    chunk = sorted(p for p in field.glob("s0/c/**/*") if p.is_file())[0]
    chunk.write_bytes(b"not a zarr chunk")
    adata = embed_plate(plates, model, platemap=demo["platemap"], progress=False, retries=0, fields_per_task=4,
                        **SMALL)
    assert list(adata.uns[Keys.PROVENANCE]["failed_fields"]) == ["demo-plate-1/A02/0"]
    kept = [n for n in ref.obs_names if not n.startswith("demo-plate-1_A02_0_")]
    assert list(adata.obs_names) == kept
    assert np.array_equal(adata.X, np.asarray(ref[kept].X))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fields_sent_to_the_gpu_ahead_give_the_cells_of_host_crops(demo, tiny_spec):
    """On a GPU, a group's raw fields are copied on a side stream while earlier fields are embedded."""
    import dataclasses

    spec = dataclasses.replace(tiny_spec, options={"precision": "fp32"})
    on_host = embed_plate(demo["plates"], spec, crop_on="cpu", device="cuda", fields_per_task=3, progress=False,
                          **SMALL)
    on_device = embed_plate(demo["plates"], spec, crop_on="device", device="cuda", fields_per_task=3,
                            progress=False, **SMALL)
    assert list(on_device.obs_names) == list(on_host.obs_names)
    np.testing.assert_allclose(on_device.X, on_host.X, atol=1e-4)
