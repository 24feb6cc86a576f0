"""The cells store: streamed from the shards, opened backed, equal to the in-memory AnnData."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import dask.array as da
import numpy as np
import pytest
from _shared import TINY

import subcell_scale as ss
from subcell_scale import cellstore, cellwriter
from subcell_scale._constants import Files, Keys
from subcell_scale.cellstore import read_cells
from subcell_scale import embed_plate
from subcell_scale.profiles import aggregate

SMALL = {"out_size": 32}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every test here runs with one torch thread."""


@pytest.fixture(scope="module")
def demo(demo_plates) -> dict:
    return demo_plates(n_plates=2, n_wells=4, n_fields=1, field_size=384, cells_per_field=16, seed=0)


@pytest.fixture(scope="module")
def in_memory(demo, tiny_model):
    return embed_plate(demo["plates"], tiny_model, platemap=demo["platemap"], progress=False, **SMALL)


def _same(expected: ad.AnnData, got: ad.AnnData) -> None:
    assert list(got.obs_names) == list(expected.obs_names)
    assert np.array_equal(np.asarray(got.X), expected.X)
    assert np.array_equal(np.asarray(got.obsm[Keys.LOCALIZATION]), expected.obsm[Keys.LOCALIZATION])
    np.testing.assert_array_equal(got.obsm[Keys.SPATIAL], expected.obsm[Keys.SPATIAL])
    assert got.obs.drop(columns=[]).equals(expected.obs)


@pytest.mark.slow
@pytest.mark.parametrize("rows", [7, 10_000])  # chunks spanning several shards; one chunk for everything
def test_the_streamed_store_equals_the_in_memory_anndata(demo, tiny_model, in_memory, tmp_path, monkeypatch, rows):
    monkeypatch.setattr(cellwriter, "CHUNK_BYTES", rows * 4 * in_memory.n_vars)
    cells = embed_plate(demo["plates"], tiny_model, out=tmp_path, platemap=demo["platemap"], progress=False, **SMALL)
    assert isinstance(cells.X, da.Array) and isinstance(cells.obsm[Keys.LOCALIZATION], da.Array)
    assert cells.X.chunks[0][0] == min(rows, cells.n_obs)
    _same(in_memory, cells)
    _same(in_memory, read_cells(tmp_path))
    loaded = read_cells(tmp_path, load=True)
    assert isinstance(loaded.X, np.ndarray)
    _same(in_memory, loaded)
    _same(in_memory, ad.read_zarr(tmp_path / Files.CELLS_ZARR))  # any anndata reader opens it


def test_a_screen_store_opens_with_obs_left_in_it(demo, tiny_model, in_memory, tmp_path, monkeypatch):
    """Above settings.lazy_obs cells, obs stays in the store (only the names are read); the cells read
    from it, and loaded and written, are those of the in-memory AnnData."""
    monkeypatch.setattr(ss.settings, "lazy_obs", 0)
    cells = embed_plate(demo["plates"], tiny_model, out=tmp_path, platemap=demo["platemap"], progress=False, **SMALL)
    assert type(cells.obs).__name__ == "Dataset2D"
    assert list(cells.obs_names) == list(in_memory.obs_names)
    assert np.array_equal(np.asarray(cells.obs["area"]), in_memory.obs["area"].to_numpy())
    some = in_memory.obs_names[[3, 0, 17]]
    assert np.array_equal(np.asarray(cells[some].X), in_memory[some].X)
    loaded = cells[:20].to_memory()
    loaded.write_h5ad(tmp_path / "some.h5ad")
    back = ad.read_h5ad(tmp_path / "some.h5ad")
    assert list(back.obs_names) == list(in_memory.obs_names[:20])
    np.testing.assert_array_equal(back.X, in_memory.X[:20])


@pytest.mark.slow
def test_a_screen_store_round_trips_through_memory_and_files(demo, tiny_model, in_memory, tmp_path, monkeypatch):
    """obs left in the store holds its names as Arrow strings; loaded, they are Python strings again, so the
    whole object writes to h5ad and zarr and reads back equal; a plate's rows and the profiles are the same."""
    monkeypatch.setattr(ss.settings, "lazy_obs", 0)
    cells = embed_plate(demo["plates"], tiny_model, out=tmp_path, platemap=demo["platemap"], progress=False, **SMALL)
    assert cells.obs_names.dtype == "str" and type(cells.obs_names.array).__name__.startswith("ArrowString")
    loaded = cells.to_memory()
    assert loaded.obs_names.dtype == object
    loaded.write_h5ad(tmp_path / "all.h5ad")
    loaded.write_zarr(tmp_path / "all.zarr")
    _same(in_memory, ad.read_h5ad(tmp_path / "all.h5ad"))
    _same(in_memory, ad.read_zarr(tmp_path / "all.zarr"))
    plate = in_memory.obs["plate"].cat.categories[1]
    one = cells[np.asarray(cells.obs["plate"]) == plate].to_memory()
    expected = in_memory[in_memory.obs["plate"] == plate]
    assert list(one.obs_names) == list(expected.obs_names)
    np.testing.assert_array_equal(one.X, expected.X)
    by_store = aggregate(cells, by=["plate", "well"])
    np.testing.assert_array_equal(by_store.X, aggregate(in_memory, by=["plate", "well"]).X)


HELD = r"""
import gc, json, sys
import anndata, dask, numpy, pandas, psutil, pyarrow, xarray, zarr  # imports before the baseline RSS
from subcell_scale._allocator import trim_heap
from subcell_scale.cellstore import read_cells

read_cells(sys.argv[2], lazy=True)  # a first opening pays the one-off costs (imports on first use, caches)
gc.collect()
trim_heap()
before = psutil.Process().memory_info().rss
cells = read_cells(sys.argv[1], lazy=True)
gc.collect()
held = psutil.Process().memory_info().rss - before
print(json.dumps({"cells": cells.n_obs, "held": held, "names": int(cells.obs_names.memory_usage(deep=True))}))
"""


def _screen_store(path: Path, n: int) -> None:
    """A cells store of ``n`` cells with a screen's obs (names as the pipeline makes them, its row chunks)."""
    import pandas as pd
    import zarr
    from anndata.io import write_elem

    i = np.arange(n)
    plates = [f"plate{p:03d}" for p in range(n // 98_304 + 1)]
    wells = [f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]
    plate, well, field, label = i // 98_304, i // 256 % 384, i // 64 % 4, i % 64 + 1
    names = [f"{plates[p]}_{wells[w]}_{f}_{v}" for p, w, f, v in zip(plate, well, field, label, strict=True)]
    obs = pd.DataFrame({"plate": pd.Categorical.from_codes(plate, plates),
                        "well": pd.Categorical.from_codes(well, wells),
                        "field": pd.Categorical.from_codes(field, ["0", "1", "2", "3"]), "label": label,
                        "area": np.full(n, 300), "centroid_y": np.zeros(n), "centroid_x": np.zeros(n)},
                       index=pd.Index(names, dtype=object))
    with ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=False):
        write_elem(zarr.open_group(path, mode="w"), "/", ad.AnnData(obs=obs),
                   dataset_kwargs={"chunks": (cellwriter.OBS_CHUNK,)})


@pytest.mark.slow
def test_a_screen_store_opens_holding_under_50_bytes_a_cell(tmp_path):
    """Opened with obs left in the store, a screen's cells cost the client under 50 bytes each (RSS growth in a
    fresh process), most of it the names themselves (held as Arrow strings: Python strings alone cost ~75)."""
    _screen_store(tmp_path / "small.zarr", 1000)
    _screen_store(tmp_path / "screen.zarr", 400_000)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", HELD, str(tmp_path / "screen.zarr"), str(tmp_path / "small.zarr")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["cells"] == 400_000
    per_cell, names = figures["held"] / figures["cells"], figures["names"] / figures["cells"]
    assert names < 30, figures  # Arrow strings: the characters and an 8-byte offset
    assert 0.8 * names < per_cell < 50, figures  # the names are what is held (the measure sees them), little else


def test_the_h5ad_store_opens_backed(demo, tiny_model, in_memory, tmp_path):
    cells = embed_plate(demo["plates"], tiny_model, out=tmp_path, platemap=demo["platemap"], progress=False,
                        format="h5ad", **SMALL)
    assert cells.isbacked
    _same(in_memory, cells.to_memory())
    _same(in_memory, ad.read_h5ad(tmp_path / Files.CELLS_H5AD))


@pytest.mark.slow
def test_the_backed_anndata_goes_through_the_readme_quickstart(demo, tiny_model, in_memory, tmp_path):
    import scanpy as sc

    cells = embed_plate(demo["plates"], tiny_model, out=tmp_path, platemap=demo["platemap"], progress=False, **SMALL)
    sc.pp.neighbors(cells, n_neighbors=5, n_pcs=20, method="gauss")  # PCA of the dask matrix, chunk by chunk
    sc.tl.umap(cells)
    sc.tl.leiden(cells, flavor="igraph", n_iterations=2)
    assert cells.obsm["X_umap"].shape == (cells.n_obs, 2) and cells.obs["leiden"].nunique() >= 1
    by_store = aggregate(cells, by=["plate", "well"])
    by_path = aggregate(tmp_path / Files.CELLS_ZARR, by=["plate", "well"])
    expected = aggregate(in_memory, by=["plate", "well"])
    np.testing.assert_array_equal(by_store.X, expected.X)
    np.testing.assert_array_equal(by_path.X, expected.X)


README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_quickstart() -> str:
    """The README's Python quickstart, as written (the first ``python`` block under its heading)."""
    text = README.read_text()
    section = text[text.index("## Python quickstart"):]
    return section[section.index("```python\n") + len("```python\n"):section.index("\n```\n")]


@pytest.mark.slow
def test_the_readme_quickstart_runs_as_a_script(tmp_path):
    """The quickstart saved as a file and run with ``python``, on a local cluster of worker processes.

    Only sizes change (fewer, smaller wells; the tiny random model at 32 px; the neighbour graph
    without a numba compile): the code, its imports and its ``__main__`` guard are the README's.
    """
    code = _readme_quickstart()
    assert 'if __name__ == "__main__":' in code
    smaller = {
        'n_wells=24)': "n_wells=10, field_size=384, cells_per_field=16)",
        '"all_channels_MAE-CellS-ProtS-Pool"': f"ss.ModelSpec('random', config={TINY!r}, seed=0, n_classifiers=1)",
        "platemap=demo.platemap)": "platemap=demo.platemap, out_size=32, progress=False)",
        "sc.pp.neighbors(cells)": "sc.pp.neighbors(cells, n_neighbors=5, method='gauss')",
        "ss.get_client()": "ss.get_client(n_workers=1, threads_per_worker=1)",
    }
    for old, new in smaller.items():
        assert code.count(old) == 1, f"the README quickstart no longer has {old!r}"
        code = code.replace(old, new)
    (tmp_path / "quickstart.py").write_text(code)
    root = str(README.parent)
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "quickstart.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mean_average_precision" in done.stdout and "compound" in done.stdout
    cells = read_cells(tmp_path / "run")
    assert cells.n_obs > 0 and cells.uns["subcell_scale"]["plates"].keys() == {"demo-plate-1", "demo-plate-2"}
    assert (tmp_path / "umap.png").stat().st_size > 0


def test_a_directory_without_cells_is_named(tmp_path):
    from subcell_scale.errors import RunDirectoryError

    with pytest.raises(RunDirectoryError, match="no cells.zarr or cells.h5ad"):
        read_cells(tmp_path)


@pytest.mark.parametrize("fmt", ["zarr", "h5ad"])
def test_cells_are_written_into_a_folder_that_does_not_exist_yet(in_memory, tmp_path, fmt):
    """A user's own AnnData goes into a new run folder (parents made), and reads back the same."""
    path = cellwriter.write_cells(in_memory, tmp_path / "new" / "run", fmt)
    assert path.local == tmp_path / "new" / "run" / cellstore.cells_name(fmt)
    _same(in_memory, read_cells(tmp_path / "new" / "run", load=True))


ALLOCATOR = r"""
import ctypes, ctypes.util, json, sys

libc = ctypes.CDLL(ctypes.util.find_library("c"))


class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]


def mmapped(size, n=16):  # how many of n blocks held together glibc mmapped (size over its threshold)
    before = libc.mallinfo2().hblks
    blocks = [libc.malloc(size) for _ in range(n)]
    taken = libc.mallinfo2().hblks - before
    for block in blocks:
        libc.free(block)
    return taken


import subcell_scale as ss
from subcell_scale import embed_plate
from subcell_scale.models import ModelSpec

plate, out, config, tune = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] == "1"
ss.settings.tune_allocator = tune
model = ModelSpec("random", config=config, seed=0, n_classifiers=1).load("cpu")
libc.free(libc.malloc(4 << 20))  # a large block freed: glibc's adaptive threshold rises over 4 MiB
before = {"600K": mmapped(600 << 10), "2M": mmapped(2 << 20)}
cells = embed_plate(plate, model, out=out, progress=False, out_size=32)  # the cells store is streamed
print(json.dumps({"cells": cells.n_obs, "600K": mmapped(600 << 10), "2M": mmapped(2 << 20),
                  "16M": mmapped(16 << 20), "before": before}))
"""


def _allocator_after_a_run(demo, tmp_path, *, tune: bool = True, env: dict | None = None) -> dict:
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {}),
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", ALLOCATOR, demo["plate"], str(tmp_path / "run"), json.dumps(TINY),
                           "1" if tune else "0"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["cells"] > 0
    return figures


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_the_allocator_tuning_ends_with_the_streaming_writer(demo, tmp_path):
    """The writer's 1 MiB mmap threshold is not left behind: after a run the process has glibc's initial
    threshold (128 KiB); with tune_allocator=False, or a threshold chosen for the process, nothing changes."""
    from subcell_scale._allocator import _glibc

    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("not glibc 2.33 or later (no mallinfo2 to observe the allocator with)")
    tuned = _allocator_after_a_run(demo, tmp_path / "tuned")
    # 128 KiB: blocks over it are mmapped, once the heap's free blocks are used up (1 MiB left: none at 600K)
    assert tuned["600K"] >= 8 and tuned["2M"] >= 8, tuned
    untouched = _allocator_after_a_run(demo, tmp_path / "off", tune=False)
    # glibc's adaptive threshold (risen over 4 MiB) as it was before the run
    assert {k: untouched[k] for k in ("600K", "2M")} == untouched["before"], untouched
    chosen = _allocator_after_a_run(demo, tmp_path / "chosen", env={"MALLOC_MMAP_THRESHOLD_": str(8 << 20)})
    assert chosen["2M"] == 0 and chosen["16M"] >= 8, chosen  # the process's own 8 MiB, kept
