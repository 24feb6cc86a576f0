"""A screen, not a plate: many plates from a list file, killed and resumed with every cell once; finished
plates recognised without reading their shards; each plate's wells made as it ends and equal to the
profiles of the cells store and of per-plate runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from subcell_scale import embed_plate, read_cells, run
from subcell_scale._constants import Files, Keys, Obs
from subcell_scale.io import open_plate
from subcell_scale.profiles import aggregate
from subcell_scale.store import read_field_records

SMALL = {"out_size": 32}
N_PLATES = 20


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every test here runs with one torch thread."""


@pytest.fixture(scope="module")
def screen(demo_plates) -> dict:
    return demo_plates(n_plates=N_PLATES, n_wells=4, n_fields=1, field_size=256, cells_per_field=6, seed=3)


@pytest.mark.slow
def test_a_screen_from_a_plates_file_killed_and_resumed_embeds_every_cell_once(screen, tiny_model, tmp_path):
    checkpoint = tmp_path / "tiny.pth"
    torch.save(tiny_model.encoder_state_dict(), checkpoint)
    listing = tmp_path / "plates.txt"
    listing.write_text("".join(f"{p}\n" for p in screen["plates"]))
    out = tmp_path / "run"
    command = [sys.executable, "-c", "import sys; from subcell_scale.cli import main; sys.exit(main())", "embed",
               "--plates-from", str(listing), "--model", str(checkpoint), "--out", str(out), "--set", "out_size=32",
               "--no-progress", "--cluster", "local", "--workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((out / Files.RECORDS).glob("*.json"))) >= 3:  # three plates ended
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the client and its cluster
    proc.wait()
    ended = len(list((out / Files.RECORDS).glob("*.json")))
    assert 3 <= ended < N_PLATES, "the screen was not stopped midway"
    assert not (out / Files.CELLS_ZARR).exists()

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    cells = read_cells(out, load=True)
    reference = embed_plate(screen["plates"], tiny_model, progress=False, **SMALL)  # in this process, in memory
    assert cells.obs_names.is_unique and list(cells.obs_names) == list(reference.obs_names)
    np.testing.assert_array_equal(np.asarray(cells.X), reference.X)
    records = read_field_records(out)
    assert len(records) == 4 * N_PLATES and {r["status"] for r in records.values()} == {"done"}
    manifest = json.loads((out / Files.MANIFEST).read_text())
    assert len(manifest["plates"]) == N_PLATES and all(p["complete"] for p in manifest["plates"].values())
    assert manifest["embed"]["summary"]["n_cells"] == cells.n_obs
    # one plate's rows, opened alone
    name = open_plate(screen["plates"][7]).name
    one = read_cells(out, plates=[name])
    assert set(one.obs[Obs.PLATE].astype(str)) == {name}
    np.testing.assert_array_equal(np.asarray(one.X), reference[reference.obs[Obs.PLATE] == name].X)


@pytest.mark.slow
def test_finished_plates_are_recognised_without_reading_their_shards(screen, tiny_spec, tmp_path, monkeypatch):
    import shutil

    from subcell_scale.pipeline import execute

    plates = [str(tmp_path / f"plate-{i}.zarr") for i in range(4)]
    for source, target in zip(screen["plates"][:4], plates, strict=True):
        shutil.copytree(source, target)
    names = [open_plate(p).name for p in plates]
    # a field of the third plate cannot be read: that plate ends incomplete
    field = tmp_path / "plate-2.zarr" / open_plate(plates[2]).well_path("A02") / "0"
    chunk = next(p for p in sorted(field.rglob("*")) if p.is_file() and not p.name.startswith((".z", "zarr.json"))
                 and "labels" not in p.relative_to(field).parts)
    original = chunk.read_bytes()
    chunk.write_bytes(b"not a chunk")
    out = tmp_path / "run"
    first = embed_plate(plates[:3], tiny_spec, out=out, progress=False, retries=0, **SMALL)
    assert list(first.uns[Keys.PROVENANCE]["failed_fields"]) == [f"{names[2]}/A02/0"]
    chunk.write_bytes(original)

    reads: Counter = Counter()
    verify = execute.verify_shard

    def counted(path, *args, **kwargs):
        reads[path.url.split("/shards/")[1].split("/")[0]] += 1
        return verify(path, *args, **kwargs)

    monkeypatch.setattr(execute, "verify_shard", counted)
    second = embed_plate(plates, tiny_spec, out=out, progress=False, **SMALL)
    assert reads[names[0]] == reads[names[1]] == 0  # complete: its record and two listings, no shard read
    assert reads[names[2]] == 3  # not complete: its three finished fields' shards are checked whole
    assert reads[names[3]] == 0  # new: nothing to check
    assert second.n_obs > first.n_obs
    assert {r["status"] for r in read_field_records(out).values()} == {"done"}


@pytest.mark.slow
def test_each_plates_wells_equal_the_cells_stores_and_per_plate_runs(screen, tiny_spec, tmp_path):
    plates = screen["plates"][:3]
    result = run(plates, out=tmp_path / "screen", platemap=screen["platemap"], model=tiny_spec, client=None,
                 figures=False, progress=False, null_size=50, **SMALL)
    assert result.fields_failed == 0
    wells = sorted(p.name for p in (tmp_path / "screen" / Files.WELLS).glob("*.h5ad"))
    assert wells == sorted(f"{open_plate(p).name}.h5ad" for p in plates)  # made as each plate ended
    profiles = ad.read_h5ad(tmp_path / "screen" / Files.PROFILES)
    # the wells put together are the wells of the cells store
    from_store = aggregate(read_cells(tmp_path / "screen"), by=["plate", "well"])
    first = ad.read_h5ad(tmp_path / "screen" / Files.WELLS / wells[0])
    np.testing.assert_array_equal(first.X, from_store[from_store.obs[Obs.PLATE] == first.obs[Obs.PLATE].iloc[0]].X)
    # the profiles (standardised per plate on its controls) equal those of one run per plate
    for plate in plates:
        name = open_plate(plate).name
        alone = run(plate, out=tmp_path / name, platemap=screen["platemap"], model=tiny_spec, client=None,
                    figures=False, progress=False, null_size=50, **SMALL)
        assert alone.fields_failed == 0
        # the same cells and wells, though a batch of the screen holds other plates' cells
        np.testing.assert_array_equal(np.asarray(read_cells(tmp_path / "screen", plates=[name]).X),
                                      np.asarray(read_cells(tmp_path / name).X))
        np.testing.assert_array_equal(ad.read_h5ad(tmp_path / "screen" / Files.WELLS / f"{name}.h5ad").X,
                                      ad.read_h5ad(tmp_path / name / Files.WELLS / f"{name}.h5ad").X)
        mine = profiles[profiles.obs[Obs.PLATE] == name]
        theirs = ad.read_h5ad(tmp_path / name / Files.PROFILES)
        np.testing.assert_allclose(mine.X, theirs.X, rtol=1e-6, atol=1e-6)
        assert list(mine.obs[Obs.WELL].astype(str)) == list(theirs.obs[Obs.WELL].astype(str))
    partitioned = pd.read_parquet(tmp_path / "screen" / Files.PROFILES_PARQUET)
    assert len(partitioned) == profiles.n_obs
    assert sorted(p.name for p in (tmp_path / "screen" / Files.PROFILES_PARQUET).iterdir()) == sorted(
        f"Metadata_plate={open_plate(p).name}" for p in plates)
