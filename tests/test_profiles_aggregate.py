"""aggregate: pycytominer's per-well median/mean, per-field-then-well, and streaming from zarr/h5ad."""

from __future__ import annotations

import importlib
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pycytominer
import pytest
import scipy.sparse as sp

from subcell_scale._constants import Keys
from subcell_scale.errors import ProfilingError
from subcell_scale.profiles import _source, aggregate, profiling_steps

from _profiles_sim import pycytominer_frame, simulated_cells

STRATA = ["Metadata_plate", "Metadata_well"]
aggregate_module = importlib.import_module("subcell_scale.profiles.aggregate")


@pytest.fixture(scope="module")
def cells() -> ad.AnnData:
    return simulated_cells()


@pytest.fixture(scope="module")
def cells_zarr(cells, tmp_path_factory):
    path = tmp_path_factory.mktemp("cells") / "cells.zarr"
    with ad.settings.override(zarr_write_format=3), warnings.catch_warnings(action="ignore"):
        cells.write_zarr(path, chunks=(64, cells.n_vars))
    return path


@pytest.fixture
def small_batches(monkeypatch):
    """Force many read windows, batches of groups and tasks of the pool, so their edges are exercised."""
    monkeypatch.setattr(_source, "WINDOW_BYTES", 1)
    monkeypatch.setattr(aggregate_module, "BATCH_BYTES", 40 * 24 * 4)
    monkeypatch.setattr(aggregate_module, "BATCH_ROWS_BYTES", 30 * 24 * 4)


def _oracle(cells: ad.AnnData, strata: list[str], operation: str) -> pd.DataFrame:
    frame = pycytominer_frame(cells, [s.removeprefix("Metadata_") for s in strata])
    out = pycytominer.aggregate(frame, strata=strata, features=list(cells.var_names), operation=operation)
    return out.sort_values(strata).reset_index(drop=True)


@pytest.mark.parametrize("operation", ["median", "mean"])
def test_matches_pycytominer_per_well(cells, operation):
    profiles = aggregate(cells, operation=operation)
    expected = _oracle(cells, STRATA, operation)
    assert list(profiles.obs["plate"].astype(str)) == list(expected["Metadata_plate"])
    assert list(profiles.obs["well"].astype(str)) == list(expected["Metadata_well"])
    np.testing.assert_allclose(profiles.X, expected[list(cells.var_names)].to_numpy(), rtol=1e-6, atol=1e-6)
    assert profiles.X.dtype == np.float32
    counts = cells.obs.groupby(["plate", "well"], observed=True).size().to_numpy()
    np.testing.assert_array_equal(profiles.obs[Keys.N_CELLS].to_numpy(), counts)


def test_obs_keeps_well_constant_columns_only(cells):
    profiles = aggregate(cells)
    assert list(profiles.obs.columns) == ["plate", "well", "row", "column", "compound", "moa", "control_type",
                                          Keys.N_CELLS]
    assert profiles.obs_names[0] == "P1_B02"
    first = cells.obs[(cells.obs["plate"] == "P1") & (cells.obs["well"] == "B02")].iloc[0]
    assert profiles.obs.loc["P1_B02", "compound"] == first["compound"]
    assert list(profiles.var_names) == list(cells.var_names)


def test_per_field_is_mean_of_field_aggregates(cells):
    profiles = aggregate(cells, operation="median", per_field=True)
    per_field = _oracle(cells, [*STRATA, "Metadata_field"], "median")
    expected = pycytominer.aggregate(per_field, strata=STRATA, features=list(cells.var_names), operation="mean")
    expected = expected.sort_values(STRATA)
    np.testing.assert_allclose(profiles.X, expected[list(cells.var_names)].to_numpy(), rtol=1e-6, atol=1e-6)
    # unequal field sizes make the per-field mean differ from the pooled mean
    assert not np.allclose(profiles.X, aggregate(cells, operation="mean").X, atol=1e-4)
    assert profiles.obs[Keys.N_CELLS].sum() == cells.n_obs
    assert profiling_steps(profiles)[0]["per_field"] is True


@pytest.mark.parametrize("operation", ["median", "mean"])
@pytest.mark.usefixtures("small_batches")
def test_streamed_zarr_equals_in_memory_exactly(cells, cells_zarr, operation):
    in_memory = aggregate(ad.read_zarr(cells_zarr), operation=operation, per_field=operation == "mean")
    streamed = aggregate(cells_zarr, operation=operation, per_field=operation == "mean")
    np.testing.assert_array_equal(streamed.X, in_memory.X)
    pd.testing.assert_frame_equal(streamed.obs, in_memory.obs)
    assert streamed.uns[Keys.PROVENANCE] == cells.uns[Keys.PROVENANCE]


@pytest.mark.usefixtures("small_batches")
def test_thread_count_does_not_change_results(cells, cells_zarr):
    one = aggregate(cells, n_jobs=1, per_field=True)
    np.testing.assert_array_equal(aggregate(cells_zarr, n_jobs=3, per_field=True).X, one.X)
    with pytest.raises(ProfilingError, match="n_jobs must be >= 1"):
        aggregate(cells, n_jobs=0)


@pytest.mark.usefixtures("small_batches")
def test_streaming_does_not_need_sorted_rows(cells, tmp_path):
    shuffled = cells[np.random.default_rng(1).permutation(cells.n_obs)].copy()
    path = tmp_path / "shuffled.h5ad"
    shuffled.write_h5ad(path)
    streamed = aggregate(path)
    np.testing.assert_array_equal(streamed.X, aggregate(cells).X)
    assert list(streamed.obs_names) == list(aggregate(cells).obs_names)


def test_backed_and_sparse_inputs(cells, tmp_path):
    expected = aggregate(cells).X
    cells.write_h5ad(tmp_path / "cells.h5ad")
    np.testing.assert_array_equal(aggregate(ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")).X, expected)
    sparse = cells.copy()
    sparse.X = sp.csr_matrix(sparse.X)
    sparse.write_h5ad(tmp_path / "sparse.h5ad")
    np.testing.assert_array_equal(aggregate(sparse).X, expected)
    np.testing.assert_array_equal(aggregate(tmp_path / "sparse.h5ad").X, expected)


def test_missing_values_are_skipped_like_pycytominer(cells):
    holes = cells.copy()
    holes.X[np.random.default_rng(2).random(holes.shape) < 0.05] = np.nan
    for operation in ("median", "mean"):
        expected = _oracle(holes, STRATA, operation)[list(holes.var_names)].to_numpy()
        np.testing.assert_allclose(aggregate(holes, operation=operation).X, expected, rtol=1e-6, atol=1e-6)


def test_obsm_localization_uses_class_names(cells):
    with_probs = cells.copy()
    classes = [f"class{i}" for i in range(5)]
    with_probs.obsm[Keys.LOCALIZATION] = np.random.default_rng(3).random((cells.n_obs, 5)).astype(np.float32)
    with_probs.uns[Keys.LOCALIZATION_CLASSES] = np.array(classes)
    profiles = aggregate(with_probs, obsm=Keys.LOCALIZATION, operation="mean")
    assert list(profiles.var_names) == classes
    frame = pycytominer_frame(ad.AnnData(with_probs.obsm[Keys.LOCALIZATION], obs=cells.obs,
                                         var=pd.DataFrame(index=classes)), ["plate", "well"])
    expected = pycytominer.aggregate(frame, strata=STRATA, features=classes, operation="mean").sort_values(STRATA)
    np.testing.assert_allclose(profiles.X, expected[classes].to_numpy(), rtol=1e-6, atol=1e-7)
    assert profiling_steps(profiles)[0]["source"] == "obsm['localization']"


def test_writes_and_reads_back_with_its_step(cells, tmp_path):
    profiles = aggregate(cells)
    profiles.write_h5ad(tmp_path / "profiles.h5ad")
    steps = profiling_steps(ad.read_h5ad(tmp_path / "profiles.h5ad"))
    assert steps == [{"step": "aggregate", "by": ["plate", "well"], "operation": "median", "per_field": False,
                      "source": "X", "n_cells": cells.n_obs, "dropped_features": []}]


def test_bad_input_is_named(cells, tmp_path):
    with pytest.raises(ProfilingError, match=r"no obs column\(s\) \['site'\]"):
        aggregate(cells, by=("plate", "site"))
    with pytest.raises(ProfilingError, match="operation must be 'median' or 'mean'"):
        aggregate(cells, operation="sum")
    with pytest.raises(ProfilingError, match="not found: .*missing.zarr"):
        aggregate(tmp_path / "missing.zarr")
    with pytest.raises(ProfilingError, match=r"no layers\['raw'\]"):
        aggregate(cells, layer="raw")


def test_groups_are_numbered_in_groupby_order():
    """Key columns factorised one by one give pandas' groupby(sort=True, dropna=False, observed=True)
    numbering for strings, categoricals (unused and missing categories), numbers and missing keys."""
    rng = np.random.default_rng(0)
    n = 400
    missing = rng.random(n) < 0.1
    columns = {
        "object": pd.Series(rng.choice(["b", "a", "c"], n), dtype=object).where(~missing, None),
        "category": pd.Categorical(pd.Series(rng.choice(["z", "y", "x"], n)).where(~missing),
                                   categories=["z", "x", "y", "w"]),
        "integer": rng.integers(-3, 3, n),
        "float": np.where(rng.random(n) < 0.1, np.nan, rng.integers(0, 3, n).astype(float)),
        "string": pd.Series(rng.choice(["b", "a", "c"], n), dtype="string").where(rng.random(n) > 0.1),
    }
    obs = pd.DataFrame(columns)
    for keys in (["object"], ["category", "float"], ["integer", "string", "object"], ["float", "category"]):
        codes, first_rows = aggregate_module._group_codes(obs, keys)
        expected = obs.groupby(keys, sort=True, dropna=False, observed=True).ngroup().to_numpy()
        np.testing.assert_array_equal(codes, expected)
        np.testing.assert_array_equal(first_rows, np.unique(expected, return_index=True)[1])
