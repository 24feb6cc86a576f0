"""Results store: shards, manifest, lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from subcell_scale._constants import Files
from subcell_scale.errors import RunDirectoryError
from subcell_scale.store import (
    DONE,
    FAILED,
    PENDING,
    FieldId,
    ResultsStore,
    Shard,
    parameters_digest,
    read_field_records,
    read_shard,
    shard_meta,
    write_shard,
)


def _shard(n: int = 3, probs: bool = True) -> Shard:
    rng = np.random.default_rng(0)
    cells = pd.DataFrame({"label": np.arange(1, n + 1) * 2, "area": rng.integers(10, 99, n),
                          "centroid_y": rng.random(n) * 50, "centroid_x": rng.random(n) * 50})
    return Shard(rng.random((n, 8), dtype=np.float32), rng.random((n, 31), dtype=np.float32) if probs else None,
                 cells, {"border": [1, 5], "too_small": []}, {"plate": "p", "well": "B03", "field": "0", "digest": "x"})


def test_shard_round_trip_is_exact(tmp_path):
    shard = _shard()
    path = write_shard(tmp_path / "s" / "B03_0.npz", shard)
    back = read_shard(path)
    np.testing.assert_array_equal(back.embedding, shard.embedding)
    np.testing.assert_array_equal(back.probabilities, shard.probabilities)
    pd.testing.assert_frame_equal(back.cells, shard.cells)
    assert back.dropped == {"border": [1, 5], "too_small": []}
    assert back.meta["n_cells"] == 3 and back.meta["well"] == "B03"
    assert shard_meta(path)["digest"] == "x"
    assert [p.name for p in path.parent.iterdir()] == ["B03_0.npz"]  # no temporary left behind


def test_shard_without_probabilities_and_mismatch(tmp_path):
    back = read_shard(write_shard(tmp_path / "a.npz", _shard(probs=False)))
    assert back.probabilities is None
    bad = _shard()
    bad.embedding = bad.embedding[:2]
    with pytest.raises(ValueError, match="2 embeddings but 3 cells"):
        write_shard(tmp_path / "b.npz", bad)


def test_damaged_shard_is_ignored_for_resume_and_named_when_read(tmp_path):
    path = write_shard(tmp_path / "a.npz", _shard())
    path.write_bytes(path.read_bytes()[:100])
    assert shard_meta(path) is None
    assert shard_meta(tmp_path / "missing.npz") is None
    with pytest.raises(RunDirectoryError, match="a.npz is damaged"):
        read_shard(path)


def test_fields_are_recorded_per_plate_and_other_parameters_refused(tmp_path):
    store = ResultsStore(tmp_path, flush_interval=3600)
    store.begin(inputs={"plates": ["a"]}, parameters={"out_size": 64}, model={"source": "random"},
                versions={"numpy": np.__version__}, digest="d1")
    fids = [FieldId("a", "B03", "0"), FieldId("a", "B03", "1"), FieldId("b", "B03", "0")]
    keys = [f.key for f in fids]
    store.set_pending(fids)
    store.record_done(fids[0], n_cells=4, dropped={"border": 2}, seconds=1.23456, size=100, sha256="abc")
    store.record_failed(fids[1], error="PlateFormatError: chunk missing", seconds=0.5, attempts=2)
    store.summarize()
    store.flush(force=True)
    manifest = json.loads((tmp_path / Files.MANIFEST).read_text())
    assert "fields" not in manifest  # the manifest has one line per plate, never one per field
    assert manifest["plates"]["a"] == {"fields": 2, DONE: 1, FAILED: 1, PENDING: 0, "n_cells": 4, "complete": False,
                                       "record": "records/a.json"}
    assert manifest["plates"]["b"][PENDING] == 1
    # while a plate's fields end, their records are appended to its log: the bytes written per field do
    # not grow with the plate
    log_lines = (tmp_path / Files.RECORDS / "a.log").read_text().splitlines()
    assert [json.loads(line)["field"] for line in log_lines] == [keys[0], keys[1], keys[0], keys[1]]
    records = read_field_records(tmp_path)
    assert records[keys[0]] == {"status": DONE, "n_cells": 4, "dropped": {"border": 2}, "seconds": 1.235,
                                "shard": "shards/a/B03_0.npz", "error": None, "size": 100, "sha256": "abc"}
    assert records[keys[1]]["error"] == "PlateFormatError: chunk missing"
    assert manifest["embed"]["summary"] == {"fields": 3, DONE: 1, FAILED: 1, PENDING: 1, "n_cells": 4, "plates": 2,
                                            "complete_plates": 0}
    assert manifest["embed"]["parameters"] == {"out_size": 64}
    # a plate whose fields are all done is complete, with the digest of its shards
    assert not store.close_plate("a", fids[:2])
    store.record_done(fids[1], n_cells=1, dropped={}, seconds=0.1, size=50, sha256="def")
    assert store.close_plate("a", fids[:2])
    store.flush(force=True)
    assert json.loads((tmp_path / Files.RECORDS / "a.json").read_text())["complete"]  # written whole as it ends
    assert not (tmp_path / Files.RECORDS / "a.log").exists()
    with open(tmp_path / Files.RECORDS / "b.log", "a") as log:  # a write cut short by a kill
        log.write('{"field": "b/B03/0", "record": {"status": "do')

    again = ResultsStore(tmp_path)
    assert again.field(fids[2]) == {"status": PENDING}  # the log up to its last whole line
    again.set_pending([*fids, FieldId("a", "C01", "0")])
    assert again.field(fids[1])["status"] == DONE and again.field(FieldId("a", "C01", "0"))["status"] == PENDING
    assert not again.records.plate("a").complete  # a field was added: the plate is open again
    with pytest.raises(RunDirectoryError, match="other parameters .*out_size"):
        again.begin(inputs={}, parameters={"out_size": 32}, model={}, versions={}, digest="d2")
    again.update("profiles", {"file": "profiles.h5ad"})
    assert json.loads((tmp_path / Files.MANIFEST).read_text())["profiles"] == {"file": "profiles.h5ad"}


def test_a_manifest_that_held_every_field_is_read_into_records(tmp_path):
    (tmp_path / Files.MANIFEST).write_text(json.dumps({"format": 1, "embed": {"digest": "d"}, "fields": {
        "p/A01/0": {"status": DONE, "n_cells": 3}, "q/A01/0": {"status": FAILED, "error": "x"}}}))
    store = ResultsStore(tmp_path)
    store.flush(force=True)
    assert read_field_records(tmp_path) == {"p/A01/0": {"status": DONE, "n_cells": 3},
                                            "q/A01/0": {"status": FAILED, "error": "x"}}
    assert "fields" not in json.loads((tmp_path / Files.MANIFEST).read_text())


def test_digest_depends_on_values_not_order():
    assert parameters_digest({"a": 1, "b": [1, 2]}) == parameters_digest({"b": [1, 2], "a": 1})
    assert parameters_digest({"a": 1}) != parameters_digest({"a": 2})


def test_an_unreadable_manifest_is_kept_aside_and_started_again(tmp_path):
    (tmp_path / Files.MANIFEST).write_text("{not json")
    assert ResultsStore(tmp_path).manifest == {}
    (aside,) = tmp_path.glob("manifest.json.damaged-*")
    assert aside.read_text() == "{not json" and not (tmp_path / Files.MANIFEST).exists()


def test_bad_names_cannot_escape_the_store(tmp_path):
    store = ResultsStore(tmp_path)
    assert store.shard_path(FieldId("p", "B03", "0")) == tmp_path / "shards" / "p" / "B03_0.npz"
    with pytest.raises(RunDirectoryError, match="path separator"):
        FieldId("../x", "B03", "0")


def test_one_field_identity_from_job_to_manifest_to_obs():
    fid = FieldId("plate-1", "B03", "0")
    assert fid.key == "plate-1/B03/0" and FieldId.from_key(fid.key) == fid
    assert fid.obs_prefix == "plate-1_B03_0" and fid.shard == "shards/plate-1/B03_0.npz"
    assert sorted([FieldId("p", "B03", "1"), FieldId("p", "A01", "0")])[0].well == "A01"
    with pytest.raises(RunDirectoryError, match="not a field key"):
        FieldId.from_key("plate-1_B03_0")


def test_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path):
    store = ResultsStore(tmp_path)
    with store.lock():
        assert (tmp_path / Files.LOCK).exists()
        with pytest.raises(RunDirectoryError, match="in use by another run"):
            with ResultsStore(tmp_path).lock():
                pass
    assert not (tmp_path / Files.LOCK).exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (tmp_path / Files.LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with store.lock():
        assert json.loads((tmp_path / Files.LOCK).read_text())["pid"] == os.getpid()


TINY_ENCODER = os.path.join(os.path.dirname(__file__), "data", "subcell", "tiny_rybg", "encoder.pth")


@pytest.mark.parametrize("command", ["embed", "run", "demo", "make-demo-plate"])
def test_an_out_that_is_a_file_is_named_as_one(demo_plates, tmp_path, capsys, command):
    """`--out somefile`: exit 1 with one line naming the path, not the system's "File exists"."""
    from subcell_scale.cli import main

    demo = demo_plates(n_plates=2, n_wells=4, n_fields=1, field_size=384, cells_per_field=16, seed=0)
    model = ["--model", TINY_ENCODER, "--num-heads", "4", "--no-progress"]

    def argv(out) -> list[str]:
        return {"embed": ["embed", demo["plate"], "--out", str(out), *model],
                "run": ["run", demo["plate"], "--platemap", demo["platemap"], "--out", str(out), *model],
                "demo": ["demo", "--out", str(out)],
                "make-demo-plate": ["make-demo-plate", str(out)]}[command]

    somefile = tmp_path / "somefile"
    somefile.write_text("notes")
    for out in (somefile, somefile / "run"):  # the folder itself, or one above it
        assert main(argv(out)) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"subcell-scale {command}: error: "), err
        assert str(out) in err and f"{somefile} is a file" in err, err
        assert "File exists" not in err and "Not a directory" not in err
    assert somefile.read_text() == "notes"


def test_cells_and_report_refuse_a_file_for_a_folder(tmp_path):
    import anndata as ad

    from subcell_scale.cellwriter import write_cells
    from subcell_scale.report import build_report

    out = tmp_path / "somefile"
    out.write_text("notes")
    with pytest.raises(RunDirectoryError, match=f"^output directory {out} is a file, not a folder$"):
        ResultsStore(out)
    with pytest.raises(RunDirectoryError, match=f"^output directory {out} is a file, not a folder$"):
        write_cells(ad.AnnData(np.zeros((2, 3), np.float32)), out)
    with pytest.raises(RunDirectoryError, match=f"^run directory {out} is a file, not a folder$"):
        build_report(out)
    assert out.read_text() == "notes"


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_the_files_of_a_run_follow_the_umask(demo_plates, tiny_model, tmp_path, umask):
    """manifest, run description, shards, cells store, the model saved for workers and the report:
    0644 under umask 022 and 0640 under 027, as any file the user makes, so collaborators can read a run."""
    import stat

    from subcell_scale import embed_plate
    from subcell_scale.models import resolve_model
    from subcell_scale.report import build_report
    from subcell_scale.rundir import RunPath

    demo = demo_plates(n_plates=2, n_wells=4, n_fields=1, field_size=384, cells_per_field=16, seed=0)
    runs = tmp_path / "runs"
    previous = os.umask(umask)
    try:
        embed_plate(demo["plates"], tiny_model, out=runs / "zarr", platemap=demo["platemap"], progress=False,
                    out_size=32)
        embed_plate(demo["plate"], tiny_model, out=runs / "h5ad", format="h5ad", progress=False, out_size=32)
        resolve_model(tiny_model).for_workers(RunPath(runs / "zarr") / Files.MODEL)  # what a cluster run saves
        build_report(runs / "zarr")
    finally:
        os.umask(previous)
    files = {p.relative_to(runs).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in runs.rglob("*") if p.is_file()}
    folders = {p.relative_to(runs).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in runs.rglob("*") if p.is_dir()}
    for name in (Files.MANIFEST, Files.RUN, "shards/demo-plate-1/A01_0.npz", "cells.zarr/zarr.json",
                 "cells.zarr/X/c/0/0", f"{Files.MODEL}/encoder.pth", Files.REPORT):
        assert f"zarr/{name}" in files, name
    assert "h5ad/cells.h5ad" in files and "h5ad/manifest.json" in files
    assert not [n for n in files if n.endswith(".tmp") or n.endswith(Files.LOCK)]
    wrong = {n: oct(m) for n, m in files.items() if m != 0o666 & ~umask}
    assert not wrong, f"files not {oct(0o666 & ~umask)}: {wrong}"
    assert all(m == 0o777 & ~umask for m in folders.values()), {n: oct(m) for n, m in folders.items()}
