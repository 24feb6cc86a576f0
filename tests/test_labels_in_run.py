"""Plates that cannot take labels (published over HTTP, read-only storage) keep their segmentation in the run
directory: found again on resume, named in the manifest and the report, the same cells as a writable plate."""

from __future__ import annotations

import functools
import json
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from subcell_scale import embed_plate, segment_plate
from subcell_scale._constants import Files
from subcell_scale.errors import RunDirectoryError
from subcell_scale.io import labels_writable, open_plate
from subcell_scale.io.demo import make_demo_plate
from subcell_scale.store import read_field_records


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the test's output stays readable
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """An unlabelled demo plate, a writable copy of it, and the same plate served read-only over HTTP."""
    root = tmp_path_factory.mktemp("served")
    (plate,) = make_demo_plate(root / "www", n_plates=1, n_wells=4, n_fields=1, field_size=256, cells_per_field=8,
                               seed=3, labels=False)
    writable = root / "copy.zarr"
    shutil.copytree(plate, writable)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root / "www")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"http://127.0.0.1:{server.server_address[1]}/{plate.name}", "local": plate,
               "writable": writable}
    finally:
        server.shutdown()


def test_a_plate_over_http_cannot_take_labels(served):
    assert not labels_writable(open_plate(served["url"]))
    assert labels_writable(open_plate(served["writable"]))


@pytest.mark.slow
def test_its_segmentation_goes_into_the_run_directory_and_is_found_again(served, tiny_spec, tmp_path):
    out = tmp_path / "run"
    cells = embed_plate(served["url"], tiny_spec, out=out, out_size=32, progress=False)
    labels = sorted((out / Files.LABELS / "demo-plate-1").glob("*.npz"))
    assert len(labels) == 4 and cells.n_obs > 0
    assert not any("labels" in p.parts for p in served["local"].rglob("*"))  # nothing written into the plate
    manifest = json.loads((out / Files.MANIFEST).read_text())
    assert manifest["run"]["labels"] == {"demo-plate-1": "labels/demo-plate-1"}
    # the same cells as a writable plate segmented in place
    local = embed_plate(served["writable"], tiny_spec, out=tmp_path / "local", out_size=32, progress=False)
    np.testing.assert_array_equal(np.asarray(cells.X), np.asarray(local.X))
    assert list(cells.obs["label"]) == list(local.obs["label"])
    # resume: finished fields are not recomputed; a field recomputed reads its labels, it does not segment again
    stamps = {p: p.stat().st_mtime_ns for p in labels}
    shards = sorted((out / Files.SHARDS).rglob("*.npz"))
    shards[0].unlink()
    again = embed_plate(served["url"], tiny_spec, out=out, out_size=32, progress=False)
    assert {p: p.stat().st_mtime_ns for p in labels} == stamps
    np.testing.assert_array_equal(np.asarray(again.X), np.asarray(cells.X))


def test_without_an_output_folder_the_plate_is_named(served, tiny_spec):
    with pytest.raises(RunDirectoryError, match=r"plate demo-plate-1 \(http://.*\) has fields without 'cells' labels "
                                                r"and cannot be written; give the run an output folder"):
        embed_plate(served["url"], tiny_spec, out_size=32, progress=False)


def test_the_segment_command_keeps_them_in_its_out(served, tmp_path, capsys):
    from subcell_scale.cli import main

    assert main(["segment", served["url"], "--out", str(tmp_path / "seg"), "--no-progress"]) == 0
    assert "4 fields segmented, 0 kept, 0 failed" in capsys.readouterr().out
    records = read_field_records(tmp_path / "seg", stage="segment")
    assert len(records) == 4 and {r["labels"] for r in records.values()} == {"run"}
    summary = segment_plate(served["url"], out=tmp_path / "seg", progress=False)  # a rerun keeps them
    assert summary["skipped"] == 4 and summary["done"] == 0
