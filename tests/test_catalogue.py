"""A catalogue of bad inputs and faults, each tried the way a demanding user would meet it.

Bad inputs: one case each, run through the command line in this process; each asserts the exit status
(1 input error, 2 usage, 3 fields failed) and that the one error line names the thing at fault (the key,
file, well or channel), with no traceback. Faults: damaged and truncated shards, two processes writing the
same plate's labels, a label image left half written, a file-size limit while the cells store is written;
each asserts every cell once and results equal to a run nothing disturbed.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from subcell_scale import embed_plate
from subcell_scale._constants import Files, Keys
from subcell_scale.cli import main
from subcell_scale.io import open_plate
from subcell_scale.store import read_field_records

SMALL = {"out_size": 32}
PLATE = {"n_plates": 1, "n_wells": 4, "n_fields": 1, "field_size": 256, "cells_per_field": 8, "seed": 3}
TRIALS = 3
"""Rounds of two processes segmenting one plate at once."""


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every test here runs with one torch thread."""


@pytest.fixture(scope="module")
def demo(demo_plates) -> dict:
    return demo_plates(**PLATE)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("weights")
    torch.save(tiny_model.encoder_state_dict(), folder / "encoder.pth")
    torch.save(tiny_model.classifiers[0].state_dict(), folder / "classifier.pth")
    return {"encoder": str(folder / "encoder.pth"), "classifier": str(folder / "classifier.pth")}


@pytest.fixture(scope="module")
def clean(demo, tiny_spec) -> ad.AnnData:
    """A run nothing disturbed (one cell a batch: the same numbers whichever cells a batch holds)."""
    return embed_plate(demo["plate"], tiny_spec, platemap=demo["platemap"], progress=False, batch_size=1, **SMALL)


def _copy(demo: dict, tmp_path: Path) -> str:
    return str(shutil.copytree(demo["plate"], tmp_path / Path(demo["plate"]).name))


def _field_dir(plate: str, well: str, field: str = "0") -> Path:
    return Path(plate) / open_plate(plate).well_path(well) / field


# -- bad inputs ---------------------------------------------------------------------------------------
def _embed(demo: dict, checkpoint: dict, out: Path, *extra: str, plate: str | None = None) -> list[str]:
    return ["embed", plate or demo["plate"], "--model", checkpoint["encoder"], "--classifiers",
            checkpoint["classifier"], "--out", str(out), "--no-progress", "--set", "out_size=32", *extra]


def _run(demo: dict, checkpoint: dict, out: Path, *extra: str, platemap: str | None = None) -> list[str]:
    return ["run", demo["plate"], "--platemap", platemap or demo["platemap"], "--model", checkpoint["encoder"],
            "--classifiers", checkpoint["classifier"], "--out", str(out), "--no-progress", "--no-figures",
            "--set", "out_size=32", *extra]


def _platemap(demo: dict, tmp_path: Path, change) -> str:
    frame = change(pd.read_csv(demo["platemap"]))
    path = tmp_path / "platemap.csv"
    frame.to_csv(path, index=False)
    return str(path)


def _broken_yaml(tmp_path: Path) -> str:
    path = tmp_path / "run.yaml"
    path.write_text("preset: hpa\nset:\n  out_size: [32\nworkers: 1\n")
    return str(path)


def _broken_plate_json(demo: dict, tmp_path: Path) -> str:
    plate = _copy(demo, tmp_path)
    (Path(plate) / "zarr.json").write_text('{"attributes": {"ome": ')
    return plate


def _missing_chunks(demo: dict, tmp_path: Path) -> str:
    plate = _copy(demo, tmp_path)
    chunks = sorted(p for p in (_field_dir(plate, open_plate(plate).wells[0]) / "s0").rglob("*")
                    if p.is_file() and p.name != "zarr.json")
    for chunk in chunks[:2]:
        chunk.unlink()
    return plate


def _plate_without(demo: dict, tmp_path: Path, what: str) -> str:
    """A copy of the plate with its second well's folder, or that well's field's level 0, removed."""
    plate = _copy(demo, tmp_path)
    field = _field_dir(plate, open_plate(plate).wells[1])
    shutil.rmtree(field.parent if what == "well" else field / "s0")
    return plate


def _plate_with_damaged(demo: dict, tmp_path: Path, what: str) -> str:
    """A copy of the plate whose first field has a chunk of garbage, or level metadata that is not JSON."""
    plate = _copy(demo, tmp_path)
    level = _field_dir(plate, open_plate(plate).wells[0]) / "s0"
    if what == "chunk":
        chunk = min(p for p in level.rglob("*") if p.is_file() and p.name != "zarr.json")
        chunk.write_bytes(b"garbage" * 10)
    else:
        (level / "zarr.json").write_text("{")
    return plate


def _a_field(demo: dict, tmp_path: Path) -> str:
    plate = _copy(demo, tmp_path)
    return str(_field_dir(plate, open_plate(plate).wells[0]))


def _weights(tmp_path: Path, name: str) -> str:
    """A loadable weights file that is not a SubCell encoder."""
    path = tmp_path / name
    torch.save({"weight": torch.zeros(3, 3)}, path)
    return str(path)


def _folder(path: Path) -> str:
    path.mkdir()
    return str(path)


def _junk(tmp_path: Path, name: str, data: bytes = b"not a checkpoint") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# id -> (arguments from (demo, checkpoint, out, tmp_path), exit status, words the error line must hold)
BAD_INPUTS = {
    "set-not-an-integer": (lambda d, c, o, t: _embed(d, c, o, "--set", "out_size=abc"), 1, ["out_size", "abc"]),
    "set-word-for-integer": (lambda d, c, o, t: _embed(d, c, o, "--set", 'out_size="big"'), 1, ["out_size", "big"]),
    "set-unknown-key": (lambda d, c, o, t: _embed(d, c, o, "--set", "outsize=32"), 1, ["outsize"]),
    "set-nonfinite-value": (lambda d, c, o, t: _embed(d, c, o, "--set", "nonfinite=skip"), 1, ["nonfinite", "skip"]),
    "device-tpu": (lambda d, c, o, t: _embed(d, c, o, "--device", "tpu"), 2, ["device", "tpu", "cuda:N"]),
    "config-bad-yaml": (lambda d, c, o, t: _embed(d, c, o, "--config", _broken_yaml(t)), 1, ["run.yaml", "line"]),
    "config-unknown-key": (lambda d, c, o, t: _embed(d, c, o, "--config", _junk(t, "c.yaml", b"colour: red\n")), 1,
                           ["c.yaml", "colour"]),
    "plate-json-invalid": (lambda d, c, o, t: _embed(d, c, o, plate=_broken_plate_json(d, t)), 1, ["zarr.json"]),
    "plate-missing": (lambda d, c, o, t: _embed(d, c, o, plate=str(t / "nowhere.zarr")), 1, ["nowhere.zarr"]),
    "plate-not-a-plate": (lambda d, c, o, t: _embed(d, c, o, plate=_folder(t / "empty.zarr")), 1, ["empty.zarr"]),
    "workers-0": (lambda d, c, o, t: _run(d, c, o, "--workers", "0"), 2, ["--workers"]),
    "batch-size-0": (lambda d, c, o, t: _embed(d, c, o, "--batch-size", "0"), 2, ["--batch-size"]),
    "retries-negative": (lambda d, c, o, t: _embed(d, c, o, "--retries", "-1"), 2, ["--retries"]),
    "channel-map-unknown-slot": (lambda d, c, o, t: _embed(d, c, o, "--channel-map", "nucleos=dna"), 1,
                                 ["nucleos", "is not a channel of variant"]),
    "channel-map-unknown-channel": (lambda d, c, o, t: _embed(d, c, o, "--channel-map", "nucleus=DAPI9"), 1,
                                    ["DAPI9"]),
    "channel-map-not-a-pair": (lambda d, c, o, t: _embed(d, c, o, "--channel-map", "nucleus="), 1,
                               ["--channel-map"]),
    "checkpoint-missing": (lambda d, c, o, t: ["embed", d["plate"], "--model", str(t / "nope.pth"), "--out", str(o)],
                           1, ["nope.pth"]),
    "checkpoint-junk": (lambda d, c, o, t: ["embed", d["plate"], "--model", _junk(t, "junk.pth"), "--out", str(o)],
                        1, ["junk.pth"]),
    "out-is-a-file": (lambda d, c, o, t: _embed(d, c, Path(_junk(t, "out.txt", b"x"))), 1, ["out.txt"]),
    "preset-unknown": (lambda d, c, o, t: _embed(d, c, o, "--preset", "hpb"), 1, ["hpb"]),
    "platemap-missing": (lambda d, c, o, t: _run(d, c, o, platemap=str(t / "map.csv")), 1, ["map.csv"]),
    "platemap-no-well-column": (lambda d, c, o, t: _run(d, c, o, platemap=_platemap(
        d, t, lambda f: f.rename(columns={"well": "position"}))), 1, ["platemap.csv", "well"]),
    "platemap-duplicate-wells": (lambda d, c, o, t: _run(d, c, o, platemap=_platemap(
        d, t, lambda f: pd.concat([f, f.iloc[:1]]))), 1, ["platemap.csv", "A01"]),
    "platemap-unknown-well": (lambda d, c, o, t: _run(d, c, o, platemap=_platemap(
        d, t, lambda f: pd.concat([f, f.iloc[:1].assign(well="H12")]))), 1, ["H12"]),
    "label-name-absent-without-segmenting": (lambda d, c, o, t: _embed(d, c, o, "--label-name", "nuclei2",
                                                                       "--no-segment"), 1, ["nuclei2", "A01"]),
    "chunks-missing": (lambda d, c, o, t: _embed(d, c, o, "--retries", "0", plate=_missing_chunks(d, t)), 3,
                       ["2 chunk"]),
    "plate-url-unreachable": (lambda d, c, o, t: _embed(d, c, o, plate="http://127.0.0.1:9/plate.zarr"), 1,
                              ["http://127.0.0.1:9/plate.zarr", "cannot be reached"]),
    "plate-is-a-file": (lambda d, c, o, t: _embed(d, c, o, plate=_junk(t, "plate.txt")), 1,
                        ["plate.txt", "subcell-scale convert"]),
    "plate-is-one-image": (lambda d, c, o, t: _embed(d, c, o, plate=_a_field(d, t)), 1, ["single NGFF image"]),
    "plate-well-missing": (lambda d, c, o, t: _embed(d, c, o, plate=_plate_without(d, t, "well")), 1,
                           ["A02", "missing"]),
    "plate-level-missing": (lambda d, c, o, t: _embed(d, c, o, "--retries", "0", plate=_plate_without(d, t, "level")),
                            3, ["A02/0", "'s0'", "missing"]),
    "plate-chunk-garbage": (lambda d, c, o, t: _embed(d, c, o, "--retries", "0",
                                                      plate=_plate_with_damaged(d, t, "chunk")), 3,
                            ["A01/0", "cannot read a chunk"]),
    "plate-level-json-invalid": (lambda d, c, o, t: _embed(d, c, o, "--retries", "0",
                                                           plate=_plate_with_damaged(d, t, "metadata")), 3,
                                 ["A01/0", "A/1/0/s0", "not valid JSON"]),
    "label-name-not-a-name": (lambda d, c, o, t: _embed(d, c, o, "--label-name", "a b"), 1, ["'a b'", "letters"]),
    "set-negative-size": (lambda d, c, o, t: _embed(d, c, o, "--set", "out_size=-5"), 1, ["out_size", "-5"]),
    "set-without-value": (lambda d, c, o, t: _embed(d, c, o, "--set", "out_size"), 1, ["out_size", "KEY=VALUE"]),
    "classifiers-missing": (lambda d, c, o, t: ["embed", d["plate"], "--model", c["encoder"], "--classifiers",
                                                str(t / "nope.pth"), "--out", str(o)], 1, ["nope.pth"]),
    "classifiers-junk": (lambda d, c, o, t: ["embed", d["plate"], "--model", c["encoder"], "--classifiers",
                                             _junk(t, "cls.pth"), "--out", str(o)], 1, ["cls.pth"]),
    "checkpoint-not-an-encoder": (lambda d, c, o, t: ["embed", d["plate"], "--model", _weights(t, "other.pth"),
                                                      "--out", str(o)], 1, ["other.pth", "is missing"]),
    "model-unknown-variant": (lambda d, c, o, t: ["embed", d["plate"], "--model", "no-such-variant", "--out", str(o)],
                              1, ["no-such-variant", "known variants"]),
    "out-under-a-file": (lambda d, c, o, t: _embed(d, c, Path(_junk(t, "f.txt", b"x")) / "run"), 1,
                         ["f.txt is a file"]),
    "platemap-empty": (lambda d, c, o, t: _run(d, c, o, platemap=_junk(t, "empty.csv", b"")), 1, ["empty.csv"]),
    "platemap-binary": (lambda d, c, o, t: _run(d, c, o, platemap=_junk(t, "bin.csv", bytes(range(256)) * 4)), 1,
                        ["bin.csv"]),
    "config-missing": (lambda d, c, o, t: _embed(d, c, o, "--config", str(t / "none.yaml")), 1, ["none.yaml"]),
    "config-not-a-table": (lambda d, c, o, t: _embed(d, c, o, "--config", _junk(t, "list.yaml", b"- a\n- b\n")), 1,
                           ["list.yaml", "table"]),
    "workers-a-word": (lambda d, c, o, t: _run(d, c, o, "--workers", "two"), 2, ["--workers", "two"]),
    "plates-from-missing": (lambda d, c, o, t: ["embed", "--plates-from", str(t / "list.txt"), "--model",
                                                c["encoder"], "--out", str(o)], 1, ["list.txt"]),
    "plates-from-names-a-missing-plate": (lambda d, c, o, t: ["embed", "--plates-from", _junk(
        t, "list.txt", b"/nowhere/p.zarr\n"), "--model", c["encoder"], "--out", str(o)], 1, ["/nowhere/p.zarr"]),
    "parameter-unknown": (lambda d, c, o, t: _embed(d, c, o, "--set", "segment_channel=DAPI9"), 1,
                          ["segment_channel"]),
    "evaluate-not-a-run": (lambda d, c, o, t: ["evaluate", str(t), "--out", str(o)], 1,
                           ["profile table not found", "test_a_bad_input"]),
    "profile-not-a-run": (lambda d, c, o, t: ["profile", str(t), "--out", str(o)], 1,
                          ["neither a cells AnnData nor a run directory", "test_a_bad_input"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_a_bad_input_gets_one_clear_line_naming_what_is_wrong(case, demo, checkpoint, tmp_path, capsys):
    build, status, words = BAD_INPUTS[case]
    out = tmp_path / "run"
    argv = build(demo, checkpoint, out, tmp_path)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == status, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    if status == 3:  # fields failed: the failed field's record names the fault
        message = " ".join(r["error"] for r in read_field_records(out).values() if r.get("error"))
    else:
        heads = (f"subcell-scale {argv[0]}:", "usage:")
        lines = [line for line in err.strip().splitlines() if line.startswith(heads) or ": error:" in line]
        assert lines, err[-3000:]
        message = lines[-1]
        assert not list((out / Files.SHARDS).rglob("*.npz")), "a field was embedded before the input was checked"
    for word in words:
        assert word in message, message


# -- faults ---------------------------------------------------------------------------------------------
def _same_cells(expected: ad.AnnData, got: ad.AnnData) -> None:
    """Every cell exactly once, with the same embedding and localization."""
    assert got.obs_names.is_unique
    assert list(got.obs_names) == list(expected.obs_names)
    assert np.array_equal(np.asarray(got.X), np.asarray(expected.X)), "embeddings differ"
    assert np.array_equal(np.asarray(got.obsm[Keys.LOCALIZATION]), np.asarray(expected.obsm[Keys.LOCALIZATION]))


def _damage(out: Path, how: str) -> None:
    shards = sorted((out / Files.SHARDS).rglob("*.npz"))
    data = bytearray(shards[0].read_bytes())
    if how == "bytes-in-the-middle":  # same size: only reading the whole file finds it
        middle = len(data) // 2
        data[middle:middle + 16] = bytes(16)
        shards[0].write_bytes(bytes(data))
    elif how == "truncated":
        shards[0].write_bytes(bytes(data[: len(data) // 2]))
    elif how == "swapped":  # and the records' sizes made to match, as when both shards have one size
        other = shards[1].read_bytes()
        shards[1].write_bytes(bytes(data))
        shards[0].write_bytes(other)
        records = next((out / Files.RECORDS).glob("*.json"))
        record = json.loads(records.read_text())
        for shard in shards[:2]:
            key = next(k for k, v in record["fields"].items() if v["shard"].endswith(f"/{shard.name}"))
            record["fields"][key]["size"] = shard.stat().st_size
        records.write_text(json.dumps(record))
    elif how == "deleted":
        shards[0].unlink()
    elif how == "cells-store-deleted":
        shutil.rmtree(out / Files.CELLS_ZARR)
    elif how == "cells-store-metadata-deleted":
        (out / Files.CELLS_ZARR / "zarr.json").unlink()


@pytest.mark.parametrize("how", ["bytes-in-the-middle", "truncated", "swapped", "deleted", "cells-store-deleted",
                                 "cells-store-metadata-deleted"])
def test_a_damaged_run_directory_is_completed_by_a_rerun_with_every_cell_once(how, demo, tiny_spec, clean,
                                                                               tmp_path):
    out = tmp_path / "run"
    run = {"platemap": demo["platemap"], "progress": False, "batch_size": 1, **SMALL}
    _same_cells(clean, embed_plate(demo["plate"], tiny_spec, out=out, **run))
    _damage(out, how)
    _same_cells(clean, embed_plate(demo["plate"], tiny_spec, out=out, **run))
    _same_cells(clean, ad.read_zarr(out / Files.CELLS_ZARR))
    assert {r["status"] for r in read_field_records(out).values()} == {"done"}


@pytest.fixture
def file_size_limit():
    """``limit(n)``: no file of this process grows past n bytes (a full disk without root); undone after."""
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead

    def limit(n: int | None) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous if n is None else (n, previous[1]))

    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, previous)
    signal.signal(signal.SIGXFSZ, handler)


def test_a_cells_store_that_cannot_be_written_leaves_the_earlier_one_whole_and_says_where(
        demo, checkpoint, clean, tmp_path, capsys, file_size_limit):
    out = tmp_path / "run"
    argv = _embed(demo, checkpoint, out, "--platemap", demo["platemap"], "--batch-size", "1")
    assert main(argv) == 0
    before = ad.read_zarr(out / Files.CELLS_ZARR)
    _same_cells(clean, before)
    _damage(out, "bytes-in-the-middle")  # the rerun computes that field again and rewrites the store
    capsys.readouterr()
    file_size_limit(20_000)  # a shard (a few kB) fits, the store's metadata (tens of kB) does not
    try:
        code = main(argv)
    finally:
        file_size_limit(None)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and "file size limit reached writing the cells store" in err, err
    assert str(out / Files.CELLS_ZARR) in err and "Traceback" not in err
    _same_cells(clean, ad.read_zarr(out / Files.CELLS_ZARR))  # the earlier store, whole
    assert main(argv) == 0
    _same_cells(clean, ad.read_zarr(out / Files.CELLS_ZARR))


@pytest.fixture
def full_shards_disk(tmp_path):
    """``out/shards`` on a small file system filled to the brim (mounted where this process may mount one)."""
    folder = tmp_path / "run" / Files.SHARDS
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode:
        pytest.skip(f"a small file system cannot be mounted here: {mounted.stderr.strip()}")
    filler = folder / "filler"
    try:
        with open(filler, "wb") as f:
            while True:
                f.write(bytes(4096))
                f.flush()
    except OSError:
        pass
    yield filler
    subprocess.run(["umount", str(folder)], check=True)


def test_shards_that_find_the_disk_full_fail_their_fields_by_name_and_a_rerun_completes(
        demo, checkpoint, clean, full_shards_disk, capsys):
    out = full_shards_disk.parent.parent
    argv = _embed(demo, checkpoint, out, "--platemap", demo["platemap"], "--batch-size", "1", "--retries", "0")
    assert main(argv) == 3
    records = read_field_records(out)
    assert {r["status"] for r in records.values()} == {"failed"}, records
    for key, record in records.items():
        assert "no space left on the device" in record["error"] and str(out / Files.SHARDS) in record["error"], \
            (key, record["error"])
    assert "Traceback" not in capsys.readouterr().err
    full_shards_disk.unlink()  # space again: the same command completes the run
    assert main(argv) == 0
    _same_cells(clean, ad.read_zarr(out / Files.CELLS_ZARR))


def _labels(plate: str) -> dict[tuple[str, int], np.ndarray]:
    """Every level of every field's cell labels (an incomplete image raises)."""
    opened = open_plate(plate)
    return {(well, level): opened.read_labels(well, "0", "cells", level=level) for well in opened.wells
            for level in range(opened.n_levels(well, "0"))}


@pytest.fixture(scope="module")
def unlabelled(demo_plates) -> str:
    return demo_plates(**PLATE, labels=False)["plate"]


@pytest.fixture(scope="module")
def segmented(unlabelled, tmp_path_factory) -> dict[tuple[str, int], np.ndarray]:
    """The labels one `segment` command writes into the plate, nothing else running."""
    plate = str(shutil.copytree(unlabelled, tmp_path_factory.mktemp("segmented") / "plate.zarr"))
    assert main(["segment", plate, "--no-progress"]) == 0
    return _labels(plate)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from subcell_scale.cli import main; sys.exit(main())", *args]


@pytest.mark.processes
@pytest.mark.parametrize("overwrite", [False, True], ids=["unlabelled", "overwrite"])
def test_two_processes_segmenting_one_plate_leave_whole_identical_labels(overwrite, unlabelled, segmented,
                                                                         tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for trial in range(TRIALS):
        plate = str(shutil.copytree(unlabelled, tmp_path / f"trial-{trial}.zarr"))
        if overwrite:  # both replace labels that are there
            assert main(["segment", plate, "--no-progress"]) == 0
        argv = _cli("segment", plate, "--no-progress", *(["--overwrite"] if overwrite else []))
        procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        results = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
        labels = _labels(plate)
        assert labels.keys() == segmented.keys()
        for key, expected in segmented.items():
            assert np.array_equal(labels[key], expected), f"trial {trial}: {key} differs"
        leftovers = [p for p in Path(plate).rglob("labels/.writing-*")]
        assert not leftovers, leftovers


_WRITER = """
import sys, numpy as np
from subcell_scale.io import open_plate, write_labels
plate, labels = open_plate(sys.argv[1]), np.load(sys.argv[2])
for _ in range(int(sys.argv[3])):
    for well in plate.wells:
        write_labels(plate, well, "0", "cells", labels[well])
"""


@pytest.mark.processes
def test_two_processes_writing_one_plates_labels_again_and_again_leave_whole_images(unlabelled, segmented,
                                                                                    tmp_path):
    """The narrow race of segmenting runs made wide: each process rewrites every field's labels, three times."""
    level0 = {well: image for (well, level), image in segmented.items() if level == 0}
    np.savez(tmp_path / "labels.npz", **level0)
    for trial in range(TRIALS):
        plate = str(shutil.copytree(unlabelled, tmp_path / f"trial-{trial}.zarr"))
        procs = [subprocess.Popen([sys.executable, "-c", _WRITER, plate, str(tmp_path / "labels.npz"), "3"],
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        errors = [p.communicate(timeout=300)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errors]
        labels = _labels(plate)
        for key, expected in segmented.items():
            assert np.array_equal(labels[key], expected), f"trial {trial}: {key} differs"


_S3_WRITER = """
import json, sys, numpy as np
from subcell_scale.io import open_plate, write_labels
plate = open_plate(sys.argv[1], storage_options=json.loads(sys.argv[4]))
labels = np.load(sys.argv[2])
for _ in range(int(sys.argv[3])):
    for well in plate.wells:
        write_labels(plate, well, "0", "cells", labels[well])
"""


@pytest.mark.processes
def test_two_processes_writing_one_plates_labels_on_object_storage_leave_whole_images(unlabelled, segmented,
                                                                                     s3_server, tmp_path):
    """No rename on object storage: each writer reads its image back and writes it again if it is not whole."""
    level0 = {well: image for (well, level), image in segmented.items() if level == 0}
    np.savez(tmp_path / "labels.npz", **level0)
    options = json.dumps(s3_server.options)
    for trial in range(1):  # each request a round trip: one trial of three rounds each
        url = f"s3://{s3_server.bucket('labels')}/trial-{trial}.zarr"
        s3_server.fs.put(unlabelled, url.removeprefix("s3://"), recursive=True)
        procs = [subprocess.Popen([sys.executable, "-c", _S3_WRITER, url, str(tmp_path / "labels.npz"), "3",
                                   options], stderr=subprocess.PIPE, text=True) for _ in range(2)]
        errors = [p.communicate(timeout=300)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errors]
        opened = open_plate(url, storage_options=s3_server.options)
        for (well, level), expected in segmented.items():
            got = opened.read_labels(well, "0", "cells", level=level)
            assert np.array_equal(got, expected), f"trial {trial}: {well} level {level} differs"


@pytest.mark.processes
@pytest.mark.skipif(sys.platform != "linux", reason="an image is swapped in one step on Linux only")
def test_a_reader_finds_a_whole_image_while_another_process_rewrites_it(unlabelled, segmented, tmp_path):
    """Labels replaced again and again are swapped in one step: a reader never finds none or half of one."""
    from subcell_scale.io import write_labels

    plate = str(shutil.copytree(unlabelled, tmp_path / "plate.zarr"))
    level0 = {well: image for (well, level), image in segmented.items() if level == 0}
    for well, image in level0.items():
        write_labels(plate, well, "0", "cells", image)
    np.savez(tmp_path / "labels.npz", **level0)
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, plate, str(tmp_path / "labels.npz"), "20"],
                              stderr=subprocess.PIPE, text=True)
    images = [_field_dir(plate, well) / "labels" / "cells" / "zarr.json" for well in level0]
    looks, missing = 0, 0
    while writer.poll() is None:  # a look at the metadata is fast enough to fall into a two-rename gap
        missing += sum(not path.is_file() for path in images)
        looks += 1
    assert writer.returncode == 0, writer.stderr.read()[-2000:]
    assert looks >= 1000 and missing == 0, (looks, missing)
    for key, image in _labels(plate).items():
        assert np.array_equal(image, segmented[key]), key


def test_a_killed_writers_leftover_is_cleared_by_the_next_write_and_a_live_ones_is_not(segmented, unlabelled,
                                                                                       tmp_path):
    from subcell_scale.io import write_labels
    from subcell_scale.io.labels import STALE_SECONDS

    plate = str(shutil.copytree(unlabelled, tmp_path / "plate.zarr"))
    well = open_plate(plate).wells[0]
    folder = _field_dir(plate, well) / "labels"
    dead, live = folder / ".writing-dead", folder / ".writing-live"
    for path in (dead, live):
        (path / "cells" / "s0").mkdir(parents=True)
    old = os.stat(dead).st_mtime - STALE_SECONDS - 60
    os.utime(dead, (old, old))
    write_labels(plate, well, "0", "cells", segmented[(well, 0)])
    assert not dead.exists() and live.exists()
    assert np.array_equal(open_plate(plate).read_labels(well, "0", "cells"), segmented[(well, 0)])


def test_a_half_written_label_image_is_segmented_again_without_overwrite(unlabelled, segmented, demo, checkpoint,
                                                                         tmp_path, capsys):
    plate = str(shutil.copytree(unlabelled, tmp_path / "plate.zarr"))
    assert main(["segment", plate, "--no-progress"]) == 0
    well = open_plate(plate).wells[0]
    shutil.rmtree(_field_dir(plate, well) / "labels" / "cells" / "s1")  # listed, not on disk
    with pytest.raises(Exception, match="missing"):
        _labels(plate)
    # a run that may not segment says what is wrong and what repairs it
    out = tmp_path / "run"
    assert main(_embed(demo, checkpoint, out, "--no-segment", "--retries", "0", plate=plate)) == 3
    error = read_field_records(out)[f"{open_plate(plate).name}/{well}/0"]["error"]
    assert "label image 'cells' is damaged" in error and "subcell-scale segment" in error, error
    # the next segmenting run rewrites it, without --overwrite
    assert main(["segment", plate, "--no-progress"]) == 0
    labels = _labels(plate)
    for key, expected in segmented.items():
        assert np.array_equal(labels[key], expected), key


@pytest.mark.processes
def test_a_design_without_moa_tasks_runs_to_the_report(demo, checkpoint, local_client, tmp_path, capsys):
    """Every compound its own MoA: no MoA retrieval task, so those tables and figures are left out, not a crash."""
    platemap = _platemap(demo, tmp_path, lambda f: f.assign(moa=[f"moa-{i}" for i in range(len(f))]))
    out = tmp_path / "run"
    argv = _run(demo, checkpoint, out, "--null-size", "20", "--scheduler", local_client.scheduler.address,
                platemap=platemap)
    code = main([a for a in argv if a != "--no-figures"])
    err = capsys.readouterr().err
    assert code in (0, 4) and "Traceback" not in err, err[-3000:]
    assert (out / Files.REPORT).is_file() and (out / Files.FIGURES).is_dir()
    manifest = json.loads((out / Files.MANIFEST).read_text())
    assert code == (4 if manifest["run"]["skipped"] else 0)
    assert "moa_map" not in {p.stem for p in (out / Files.METRICS).glob("*.csv")} or \
        pd.read_csv(out / Files.METRICS / "moa_map.csv").empty


@pytest.mark.processes
def test_a_later_step_the_file_system_stops_is_named_and_the_exit_status_is_4(demo, checkpoint, local_client,
                                                                             tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / Files.FIGURES).write_text("a file where the figures folder goes")
    argv = _run(demo, checkpoint, out, "--null-size", "20", "--scheduler", local_client.scheduler.address)
    code = main([a for a in argv if a != "--no-figures"])
    captured = capsys.readouterr()
    assert code == 4, captured.err[-3000:]
    assert "step(s) skipped: report: " in captured.out + captured.err and "Traceback" not in captured.err
    manifest = json.loads((out / Files.MANIFEST).read_text())
    assert list(manifest["run"]["skipped"]) == ["report"] and (out / Files.PROFILES).is_file()
