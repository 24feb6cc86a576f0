"""Faults a plate run must survive: killed workers and clients, damaged fields, full disks, stale output.

The promise: a run either finishes or says exactly which fields did not, and running the same command
again completes it with every cell exactly once. Each test breaks a real component (a worker process
of a real LocalCluster, the client process of ``subcell-scale run``, chunk files of a real zarr plate,
the file-size limit of a worker process) and compares the final cells with an in-process run that
nothing disturbed. Already covered elsewhere and not repeated here: the killed ``embed`` command
(``test_pipeline.py``), a stale lock of a dead process (``test_pipeline_store.py``), malicious pickles
at the loader (``test_models_checkpoint.py``), crop geometry at field borders (``test_cells.py``) and
mAP invariances (``test_metrics_map.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from subcell_scale.store import read_field_records
from subcell_scale._constants import Files, Keys, Obs
from subcell_scale.errors import PlateFormatError, WellNameError
from subcell_scale.io import open_plate
from subcell_scale.io.wells import (
    normalize_well_name,
    parse_well_name,
    row_index,
    row_name,
)
from subcell_scale.models import ModelSpec
from subcell_scale import embed_plate

SMALL = {"out_size": 32}
N_FIELDS = 12  # one plate, six wells, two fields


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every test here runs with one torch thread."""


@pytest.fixture(scope="module")
def demo(demo_plates) -> dict:
    return demo_plates(n_plates=1, n_wells=6, n_fields=2, field_size=256, cells_per_field=8, seed=3)


@pytest.fixture(scope="module")
def spec(tiny_spec) -> ModelSpec:
    return tiny_spec


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model) -> dict[str, str]:
    """The spec's weights as files, for the command line (``--model``, ``--classifiers``)."""
    folder = tmp_path_factory.mktemp("weights")
    model = tiny_model
    torch.save(model.encoder_state_dict(), folder / "encoder.pth")
    torch.save(model.classifiers[0].state_dict(), folder / "classifier.pth")
    return {"encoder": str(folder / "encoder.pth"), "classifier": str(folder / "classifier.pth")}


@pytest.fixture(scope="module")
def reference(demo, spec) -> ad.AnnData:
    """An in-process run that nothing disturbed."""
    adata = embed_plate(demo["plate"], spec, platemap=demo["platemap"], progress=False, **SMALL)
    # every field has cells, so a field lost or embedded twice changes the cells
    assert adata.obs.groupby([Obs.WELL, Obs.FIELD], observed=True).ngroups == N_FIELDS
    return adata


@pytest.fixture(scope="module")
def client(local_client):
    return local_client


def _same_cells(expected: ad.AnnData, got: ad.AnnData) -> None:
    """Every cell exactly once, with the same embedding and localization."""
    assert got.obs_names.is_unique
    assert list(got.obs_names) == list(expected.obs_names)
    assert np.array_equal(np.asarray(got.X), np.asarray(expected.X)), "embeddings differ"
    assert np.array_equal(np.asarray(got.obsm[Keys.LOCALIZATION]), np.asarray(expected.obsm[Keys.LOCALIZATION]))


def _subset(adata: ad.AnnData, keep: set[str]) -> ad.AnnData:
    keys = adata.obs[Obs.PLATE].astype(str) + "/" + adata.obs[Obs.WELL].astype(str) + "/" + adata.obs[Obs.FIELD].astype(str)
    return adata[keys.isin(keep).to_numpy()]


def _shards(out: Path) -> list[Path]:
    return sorted((out / Files.SHARDS).rglob("*.npz"))


def _wait_for(condition, timeout: float = 180.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def _manifest(out: Path) -> dict:
    return json.loads((out / Files.MANIFEST).read_text())


def _field_dir(plate_path: str, well: str, field: str) -> Path:
    return Path(plate_path) / open_plate(plate_path).well_path(well) / field


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from subcell_scale.cli import main; sys.exit(main())", *args]


def _error_line(done: subprocess.CompletedProcess, command: str) -> str:
    """The one error line of a failed command (log lines may precede it; a traceback may not)."""
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.strip().splitlines() if line.startswith(f"subcell-scale {command}: error:")]
    assert len(errors) == 1 and done.stderr.strip().splitlines()[-1] == errors[0], done.stderr[-3000:]
    return errors[0]


def _run_cmd(demo: dict, out: Path, checkpoint: dict, client, *, plate: str | None = None,
             platemap: str | None = None, retries: int = 0) -> list[str]:
    """``subcell-scale run`` against the module's cluster (the killed client leaves no orphan workers)."""
    return _cli("run", plate or demo["plate"], "--platemap", platemap or demo["platemap"],
                "--model", checkpoint["encoder"], "--classifiers", checkpoint["classifier"],
                "--scheduler", client.scheduler.address, "--out", str(out), "--no-figures", "--no-progress",
                "--null-size", "50", "--retries", str(retries), "--batch-size", "4", "--set", "out_size=32")


# -- processes that die ------------------------------------------------------------------------------
@pytest.mark.processes
def test_a_worker_killed_mid_run_is_replaced_and_every_cell_is_embedded_once(demo, spec, reference, client, tmp_path):
    pids = client.run(os.getpid)
    assert len(pids) == 2
    out = tmp_path / "run"
    killed: dict[str, int] = {}

    def kill_one_worker() -> None:
        if _wait_for(lambda: len(_shards(out)) >= 1, timeout=120):
            _, pid = sorted(pids.items())[0]
            os.kill(pid, signal.SIGKILL)
            killed.update(pid=pid, shards=len(_shards(out)))

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    adata = embed_plate(demo["plate"], spec, client=client, out=out, platemap=demo["platemap"], progress=False,
                        **SMALL)
    killer.join()
    assert killed and killed["shards"] < N_FIELDS, "the worker was not killed while fields were left"
    _same_cells(reference, adata)
    manifest = _manifest(out)
    assert {f["status"] for f in read_field_records(out).values()} == {"done"}
    assert manifest["embed"]["summary"]["n_cells"] == reference.n_obs
    # the nanny started a new worker process in place of the killed one
    assert _wait_for(lambda: len(client.scheduler_info(n_workers=-1)["workers"]) == 2, timeout=60)
    assert killed["pid"] not in client.run(os.getpid).values()


@pytest.mark.processes
def test_a_killed_client_resumes_and_a_second_run_into_the_same_directory_is_refused(
        demo, checkpoint, reference, client, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(_run_cmd(demo, out, checkpoint, client), env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: bool(_shards(out)) or first.poll() is not None), "no shard appeared"
        assert first.poll() is None, first.stderr.read()
        first.send_signal(signal.SIGSTOP)  # held mid-run, with the directory locked
        lock = json.loads((out / Files.LOCK).read_text())
        assert lock["pid"] == first.pid
        second = subprocess.run(_run_cmd(demo, out, checkpoint, client), env=ENV, capture_output=True, text=True,
                                timeout=300)
        line = _error_line(second, "run")
        assert "in use by another run" in line and str(out) in line
    finally:
        first.kill()
        first.wait()
    n_before = len(_shards(out))
    assert 0 < n_before < N_FIELDS
    assert not (out / Files.CELLS_ZARR).exists()
    stamps = {p: p.stat().st_mtime_ns for p in _shards(out)}

    again = subprocess.run(_run_cmd(demo, out, checkpoint, client), env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"cells: {reference.n_obs} from {N_FIELDS} fields" in again.stdout
    _same_cells(reference, ad.read_zarr(out / Files.CELLS_ZARR))
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished fields were kept
    manifest = _manifest(out)
    assert manifest["run"]["status"] == "done"
    assert manifest["embed"]["summary"]["done"] == N_FIELDS
    assert not (out / Files.LOCK).exists()
    profiles = ad.read_h5ad(out / Files.PROFILES)
    assert int(profiles.obs[Keys.N_CELLS].sum()) == reference.n_obs


# -- damaged inputs ----------------------------------------------------------------------------------
@pytest.mark.processes
def test_damaged_and_empty_fields_are_recorded_and_a_rerun_after_repair_completes(
        demo, checkpoint, reference, client, tmp_path):
    plate = str(shutil.copytree(demo["plate"], tmp_path / Path(demo["plate"]).name))
    corrupt, unreadable, empty = ("A01", "0"), ("A02", "1"), ("A03", "0")
    # a corrupt chunk: bytes overwritten
    chunk = next(p for p in sorted((_field_dir(plate, *corrupt) / "s0").rglob("*")) if p.is_file()
                 and p.name != "zarr.json")
    chunk.write_bytes(b"\x00garbage" * 8)
    # an unreadable field: its full-resolution array is gone (tests run as root: chmod blocks nothing)
    shutil.rmtree(_field_dir(plate, *unreadable) / "s0")
    # a field without cells: its label image zeroed
    labels = zarr.open_array(str(_field_dir(plate, *empty) / "labels" / "cells" / "s0"), mode="r+")
    labels[...] = 0
    out = tmp_path / "run"

    done = subprocess.run(_run_cmd(demo, out, checkpoint, client, plate=plate), env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "run incomplete" in done.stderr and "manifest.json" in done.stderr
    manifest = _manifest(out)
    fields = read_field_records(out)
    name = open_plate(plate).name
    bad = {f"{name}/{w}/{f}" for w, f in (corrupt, unreadable)}
    assert {k for k, v in fields.items() if v["status"] == "failed"} == bad
    for key in bad:
        well, fld = key.split("/")[1:]
        assert f"{Path(plate).name} {well}/{fld}" in fields[key]["error"], fields[key]["error"]
        assert f"  failed {key}: " in done.stdout  # the summary names each failed field
    assert "2 field(s) FAILED" in done.stdout
    # the empty field is done, with no cells and every label accounted for (none)
    empty_key = f"{name}/{empty[0]}/{empty[1]}"
    assert fields[empty_key]["status"] == "done" and fields[empty_key]["n_cells"] == 0
    assert manifest["embed"]["summary"]["done"] == N_FIELDS - 2
    assert manifest["run"]["status"] == "incomplete"
    cells = ad.read_zarr(out / Files.CELLS_ZARR)
    good = set(fields) - bad - {empty_key}
    _same_cells(_subset(reference, good), cells)

    # repair the plate: the same command finishes the failed and the emptied fields only
    for well, fld in (corrupt, unreadable, empty):
        shutil.rmtree(_field_dir(plate, well, fld))
        shutil.copytree(_field_dir(demo["plate"], well, fld), _field_dir(plate, well, fld))
    (out / Files.SHARDS / name / f"{empty[0]}_{empty[1]}.npz").unlink()  # its labels changed: recompute it
    stamps = {p: p.stat().st_mtime_ns for p in _shards(out)}
    again = subprocess.run(_run_cmd(demo, out, checkpoint, client, plate=plate), env=ENV, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    back = ad.read_zarr(out / Files.CELLS_ZARR)
    assert list(back.obs_names) == list(reference.obs_names)  # plate paths differ, cells do not
    assert np.array_equal(np.asarray(back.X), np.asarray(reference.X))
    assert _manifest(out)["run"]["status"] == "done"


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["directory", "deleted"])
def test_a_chunk_that_cannot_be_read_fails_the_field(demo, spec, reference, tmp_path, damage):
    plate = str(shutil.copytree(demo["plate"], tmp_path / Path(demo["plate"]).name))
    chunk = next(p for p in sorted((_field_dir(plate, "A02", "1") / "s0").rglob("*")) if p.is_file()
                 and p.name != "zarr.json")
    chunk.unlink()
    if damage == "directory":
        chunk.mkdir()  # read() on it fails with IsADirectoryError, which zarr takes for a missing chunk
    key = chunk.relative_to(plate).as_posix()
    with pytest.raises(PlateFormatError, match=f"A02/1 level 0: 1 chunk.* missing from the store: {key}"):
        open_plate(plate).read_field("A02", "1")
    # opting in to fill values reads the hole as zeros, and the other fields as they are
    filled = open_plate(plate, missing_chunks="fill")
    assert (filled.read_field("A02", "1") == 0).any()
    np.testing.assert_array_equal(filled.read_field("A02", "0"), open_plate(demo["plate"]).read_field("A02", "0"))
    # the run fails that field only, naming the chunk, and embeds every other field as before
    out = tmp_path / "run"
    adata = embed_plate(plate, spec, out=out, platemap=demo["platemap"], progress=False, retries=0, **SMALL)
    name = open_plate(plate).name
    assert list(adata.uns[Keys.PROVENANCE]["failed_fields"]) == [f"{name}/A02/1"]
    error = read_field_records(out)[f"{name}/A02/1"]["error"]
    assert "A02/1" in error and key in error
    _same_cells(_subset(reference, {f"{name}/{w}/{f}" for w in ("A01", "A02", "A03", "A04", "A05", "A06")
                                    for f in ("0", "1")} - {f"{name}/A02/1"}), adata)


@pytest.mark.processes
def test_a_platemap_well_missing_from_the_plate_stops_the_run_before_any_work(demo, checkpoint, client, tmp_path):
    platemap = pd.read_csv(demo["platemap"])
    platemap = pd.concat([platemap, platemap.iloc[[0]].assign(well="H12")], ignore_index=True)
    platemap.to_csv(tmp_path / "platemap.csv", index=False)
    out = tmp_path / "run"
    done = subprocess.run(_run_cmd(demo, out, checkpoint, client, platemap=str(tmp_path / "platemap.csv")),
                          env=ENV, capture_output=True, text=True, timeout=300)
    line = _error_line(done, "run")
    assert "H12" in line and "not in the plate" in line
    assert not (out / Files.SHARDS).exists()


# -- output that cannot be written -------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "embed"])
def test_an_output_directory_inside_a_file_is_one_clear_error(demo, checkpoint, tmp_path, command):
    blocker = tmp_path / "results.txt"
    blocker.write_text("a file, not a directory")
    out = blocker / "run"
    args = [command, demo["plate"], "--model", checkpoint["encoder"], "--out", str(out), "--no-progress"]
    done = subprocess.run(_cli(*args), env=ENV, capture_output=True, text=True, timeout=300)
    line = _error_line(done, command)
    assert str(out) in line and "cannot be created" in line
    assert blocker.read_text() == "a file, not a directory"


def _ignore_file_size_signal() -> bool:
    """Make a worker see a full disk as a failing write (EFBIG) instead of being killed by SIGXFSZ."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return True


@pytest.mark.processes
def test_a_full_disk_on_the_workers_loses_nothing_and_a_rerun_completes(demo, spec, reference, client, tmp_path):
    pids = client.run(os.getpid)
    assert all(client.run(_ignore_file_size_signal).values())
    out = tmp_path / "run"

    def fill_disk() -> None:
        if _wait_for(lambda: len(_shards(out)) >= 1, timeout=120):
            for pid in pids.values():  # from now on no worker can write a byte
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))

    filler = threading.Thread(target=fill_disk)
    filler.start()
    try:
        first = embed_plate(demo["plate"], spec, client=client, out=out, platemap=demo["platemap"], progress=False,
                            retries=0, **SMALL)
    finally:
        filler.join()
        for pid in pids.values():
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    fields = read_field_records(out)
    failed = {k for k, v in fields.items() if v["status"] == "failed"}
    written = {p: p.stat().st_mtime_ns for p in _shards(out)}
    assert failed and len(written) == N_FIELDS - len(failed)
    for key in failed:  # the error says what and where
        well, fld = key.split("/")[1:]
        assert "file size limit reached writing the field's shard" in fields[key]["error"]
        assert f"{well}_{fld}.npz" in fields[key]["error"]
    assert list(first.uns[Keys.PROVENANCE]["failed_fields"]) == sorted(failed)
    _same_cells(_subset(reference, set(fields) - failed), first)
    assert not list((out / Files.SHARDS).rglob("*.tmp"))  # no half-written shard left behind

    again = embed_plate(demo["plate"], spec, client=client, out=out, platemap=demo["platemap"], progress=False,
                        **SMALL)
    _same_cells(reference, again)
    assert all(p.stat().st_mtime_ns == t for p, t in written.items())  # what was computed was kept


@pytest.mark.slow
def test_leftovers_of_a_crash_are_detected_and_recomputed(demo, spec, reference, tmp_path, caplog):
    out = tmp_path / "run"
    embed_plate(demo["plate"], spec, out=out, platemap=demo["platemap"], progress=False, **SMALL)
    shards = _shards(out)
    truncated, kept = shards[0], shards[1:]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    leftover = truncated.with_name(f".{truncated.name}.12345-deadbeef.tmp")
    leftover.write_bytes(b"half a shard")
    shutil.rmtree(out / Files.CELLS_ZARR)
    stamps = {p: p.stat().st_mtime_ns for p in kept}
    adata = embed_plate(demo["plate"], spec, out=out, platemap=demo["platemap"], progress=False, **SMALL)
    _same_cells(reference, adata)
    _same_cells(reference, ad.read_zarr(out / Files.CELLS_ZARR))
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # only the damaged field was recomputed
    assert _manifest(out)["embed"]["summary"]["done"] == N_FIELDS

    # a half-written manifest is kept aside, named, and rebuilt from the shards, which are reused
    manifest = out / Files.MANIFEST
    damaged = manifest.read_text()[:200]
    manifest.write_text(damaged)
    stamps = {p: p.stat().st_mtime_ns for p in _shards(out)}
    with caplog.at_level(logging.WARNING, logger="subcell_scale"):
        adata = embed_plate(demo["plate"], spec, out=out, platemap=demo["platemap"], progress=False, **SMALL)
    _same_cells(reference, adata)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert _manifest(out)["embed"]["summary"]["done"] == N_FIELDS
    (aside,) = out.glob(f"{Files.MANIFEST}.damaged-*")
    assert aside.read_text() == damaged and any("is damaged" in r.getMessage() for r in caplog.records)


# -- model -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("crop_on", ["cpu", "device"])
def test_out_of_memory_splits_the_batch_and_gives_the_same_embeddings(demo, crop_on, caplog, tiny_model, tiny_spec):
    budget = tiny_model.estimate_batch_bytes(3, 32, 32)  # room for 3 crops of 16 asked
    tight = dataclasses.replace(tiny_spec, options={"max_batch_bytes": budget})
    free = tiny_spec
    unconstrained = embed_plate(demo["plate"], free, progress=False, batch_size=16, crop_on=crop_on, **SMALL)
    with caplog.at_level(logging.WARNING):
        constrained = embed_plate(demo["plate"], tight, progress=False, batch_size=16, crop_on=crop_on, retries=0,
                                  **SMALL)
    assert list(constrained.uns[Keys.PROVENANCE]["failed_fields"]) == []
    assert any("out of memory with a batch of" in r.getMessage() for r in caplog.records)
    _same_cells(unconstrained, constrained)


class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.slow
def test_embed_refuses_a_checkpoint_that_would_run_code(demo, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"encoder.embeddings.cls_token": _Payload(str(marker))}, evil)
    done = subprocess.run(_cli("embed", demo["plate"], "--model", str(evil), "--out", str(tmp_path / "out"),
                               "--no-progress"), env=ENV, capture_output=True, text=True, timeout=300)
    line = _error_line(done, "embed")
    assert "evil.pth: not a loadable weights file" in line and "nothing in the file was executed" in line
    assert not marker.exists()
    assert not (tmp_path / "out" / Files.SHARDS).exists()


# -- well names (property-based) ---------------------------------------------------------------------
_ROWS = st.integers(0, 31)  # A .. AF: 1536-well plates
_COLUMNS = st.integers(1, 48)


@settings(max_examples=300, deadline=None)
@given(row=_ROWS, column=_COLUMNS, lower=st.booleans())
def test_every_spelling_of_a_well_names_the_same_well(row, column, lower):
    letters = row_name(row)
    assert row_index(letters) == row
    expected = letters + f"{column:02d}"
    for spelling in (f"{letters}{column}", f"{letters}{column:02d}", f"{letters}{column:03d}",
                     f"{letters}/{column}", f"{letters}_{column:02d}"):
        spelling = spelling.lower() if lower else spelling
        assert parse_well_name(spelling) == (letters, column)
        assert normalize_well_name(spelling) == expected
    assert normalize_well_name(expected) == expected  # idempotent


@settings(max_examples=300, deadline=None)
@given(row=_ROWS, column=_COLUMNS, junk=st.sampled_from(["", "x", "1", "!", "AB"]), kind=st.integers(0, 4))
def test_names_that_are_not_wells_are_refused(row, column, junk, kind):
    letters = row_name(row)
    bad = [
        f"{letters}0",                      # columns are numbered from 1
        f"{column}",                        # no row
        f"{letters}{letters}Q{column}",     # three or more row letters
        f"{column}{letters}",               # column first
        f"{letters}{column}{junk or '.'}",  # trailing characters
    ][kind]
    if kind == 4 and junk in ("1",):
        bad = f"{letters}{column}1234"  # a column of more than three digits
    with pytest.raises(WellNameError, match="well name"):
        parse_well_name(bad)
