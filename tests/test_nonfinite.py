"""NaN and infinite pixels never become embeddings silently: a field holding them fails (counted) or they are read
as 0 and the cells flagged; a cell whose embedding is not finite never reaches ``X``.

Every place a non-finite value could enter is covered: the stored pixels, the flat-field correction and the
intensity bounds (percentiles of a field would be NaN).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from subcell_scale import embed_plate
from subcell_scale._constants import Keys, Obs
from subcell_scale.errors import ConfigError
from subcell_scale.illumination import load_flatfield
from subcell_scale.io import open_plate
from subcell_scale.io.writer import PlateWriter
from subcell_scale.store import read_field_records

SMALL = {"out_size": 32}
SCALED = {"plate_upper_percentile": 99.99, "field_lower_percentile": 0.05, "field_upper_percentile": 99.95}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every test here runs with one torch thread."""


@pytest.fixture(scope="module")
def source(demo_plates) -> str:
    return demo_plates(n_plates=1, n_wells=4, n_fields=1, field_size=256, cells_per_field=8, seed=3)["plate"]


def _float_plate(source: str, path, poison: dict[tuple[int, int, int], float] | None = None) -> tuple[str, int]:
    """The source plate as float32 pixels, with ``poison`` (channel, y, x) -> value written into A01/0.

    Returns the plate and the label of the cell whose centre is poisoned (the first key's pixel).
    """
    plate = open_plate(source)
    hit = 0
    with PlateWriter(path, name="nf", channel_names=plate.channel_names, pixel_size=plate.pixel_size[0]) as writer:
        for well in plate.wells:
            image = plate.read_field(well, "0").astype(np.float32)
            labels = np.asarray(plate.read_labels(well, "0", "cells"))
            if well == plate.wells[0] and poison:
                for (c, y, x), value in poison.items():
                    image[c, y, x] = value
                c, y, x = next(iter(poison))
                hit = int(labels[y, x])
            writer.write_field(well, "0", image, labels={"cells": labels})
    return str(path), hit


def _cell_centre(source: str) -> tuple[int, int, int]:
    """A pixel of a cell that does not touch the field's border (a kept cell), channel 0."""
    plate = open_plate(source)
    labels = np.asarray(plate.read_labels(plate.wells[0], "0", "cells"))
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])).tolist())
    inner = [v for v in np.unique(labels).tolist() if v and v not in border]
    ys, xs = np.nonzero(labels == inner[0])
    return 0, int(ys[len(ys) // 2]), int(xs[len(xs) // 2])


def test_nan_pixels_fail_their_field_by_default_naming_how_many(source, tiny_spec, tmp_path):
    c, y, x = _cell_centre(source)
    plate, _ = _float_plate(source, tmp_path / "nf.zarr", {(c, y, x): np.nan, (1, 0, 0): np.inf, (1, 0, 1): -np.inf})
    clean, _ = _float_plate(source, tmp_path / "clean.zarr")
    adata = embed_plate(plate, tiny_spec, out=tmp_path / "run", progress=False, retries=0, **SMALL)
    records = read_field_records(tmp_path / "run")
    assert records["nf/A01/0"]["status"] == "failed"
    error = records["nf/A01/0"]["error"]
    assert error.startswith("NonFinitePixelsError: ") and "A01 field 0" in error
    assert "3 pixel(s) are NaN or infinite" in error and "nonfinite=zero" in error
    assert all(r["status"] == "done" for k, r in records.items() if k != "nf/A01/0") and len(records) == 4
    expected = embed_plate(clean, tiny_spec, progress=False, **SMALL)
    keep = (expected.obs[Obs.WELL] != "A01").to_numpy()
    assert keep.sum() > 0 and list(adata.obs_names) == list(expected.obs_names[keep])
    np.testing.assert_allclose(np.asarray(adata.X), np.asarray(expected.X)[keep], rtol=1e-5, atol=1e-6)
    assert Obs.NONFINITE not in adata.obs


def test_zero_reads_them_as_zero_and_flags_the_cells_that_held_them(source, tiny_spec, tmp_path):
    c, y, x = _cell_centre(source)
    plate, hit = _float_plate(source, tmp_path / "nf.zarr", {(c, y, x): np.nan, (1, 0, 0): np.inf})
    zeroed, _ = _float_plate(source, tmp_path / "zero.zarr", {(c, y, x): 0.0, (1, 0, 0): 0.0})
    adata = embed_plate(plate, tiny_spec, out=tmp_path / "run", progress=False, nonfinite="zero", **SMALL, **SCALED)
    expected = embed_plate(zeroed, tiny_spec, progress=False, **SMALL, **SCALED)
    assert np.isfinite(np.asarray(adata.X)).all() and np.isfinite(adata.obsm[Keys.LOCALIZATION]).all()
    np.testing.assert_allclose(np.asarray(adata.X), np.asarray(expected.X), rtol=1e-5, atol=1e-6)  # as 0 there
    flags = adata.obs[Obs.NONFINITE]
    assert hit > 0 and flags[f"nf_A01_0_{hit}"] == 1
    assert int(flags.sum()) == 1  # the infinite pixel at the corner is in no kept cell
    assert len(adata.uns[Keys.PROVENANCE]["failed_fields"]) == 0


def test_a_flat_field_that_makes_pixels_infinite_fails_the_field(source, tiny_spec, tmp_path):
    plate, _ = _float_plate(source, tmp_path / "nf.zarr")
    n_channels = len(open_plate(plate).channel_names)
    flat = np.ones((n_channels, 256, 256), np.float32)
    flat[0, 5, 5] = 1e-38  # positive and finite, but a pixel of 1 divided by it is past float32
    np.save(tmp_path / "flat.npy", flat)
    adata = embed_plate(plate, tiny_spec, out=tmp_path / "run", progress=False, retries=0,
                        illumination=str(tmp_path / "flat.npy"), **SMALL)
    records = read_field_records(tmp_path / "run")
    assert len(records) == 4
    for key in records:
        assert records[key]["status"] == "failed"
        assert "after flat-field correction" in records[key]["error"], records[key]["error"]
    assert adata.n_obs == 0
    flat[1, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", flat)
    with pytest.raises(ConfigError, match="nan.npy.*must be finite and positive"):
        load_flatfield(tmp_path / "nan.npy")


def test_cells_whose_embedding_is_not_finite_never_reach_x(source, tiny_model, tmp_path):
    plate, _ = _float_plate(source, tmp_path / "nf.zarr")
    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    adata = embed_plate(plate, broken, out=tmp_path / "run", progress=False, **SMALL)
    records = read_field_records(tmp_path / "run")
    assert adata.n_obs == 0
    for record in records.values():
        assert record["status"] == "done" and record["n_cells"] == 0
        assert record["dropped"]["nonfinite_embedding"] > 0


def test_nonfinite_takes_fail_or_zero_and_names_the_key():
    from subcell_scale.params import RunParams

    assert RunParams.resolve().nonfinite == "fail"
    assert RunParams.resolve(nonfinite="zero").embedding_parameters()["nonfinite"] == "zero"
    assert "nonfinite" not in RunParams.resolve().embedding_parameters()  # earlier shards still count
    with pytest.raises(ConfigError, match="nonfinite must be one of fail, zero, got 'skip'"):
        RunParams.resolve(nonfinite="skip")
