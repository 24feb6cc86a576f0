"""Flat-field correction: recovers a known vignetting, flattens fields, reads and applies files."""

from __future__ import annotations

import numpy as np
import pytest

from subcell_scale.errors import ChannelMismatchError, ConfigError, PlateFormatError
from subcell_scale.illumination import apply_flatfield, flatfield_from_fields, load_flatfield

SHAPE = (160, 200)
DARK = 100.0


def true_vignetting() -> np.ndarray:
    """Two channels with different radial fall-offs, mean 1 each: the pattern to recover."""
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    r2 = ((yy - 70) ** 2 + (xx - 110) ** 2) / (0.25 * (SHAPE[0] ** 2 + SHAPE[1] ** 2))
    planes = np.stack([1 - 0.35 * r2, 1 - 0.2 * r2])
    return planes / planes.mean(axis=(1, 2), keepdims=True)


def make_fields(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """uint16 fields of bright discs (cells) on a background, under the vignetting, with their masks."""
    rng = np.random.default_rng(seed)
    vignette = true_vignetting()
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    fields, masks = [], []
    for _ in range(n):
        mask = np.zeros(SHAPE, bool)
        # centres also beyond the edges, so that every pixel is equally likely to be in a cell
        for cy, cx in rng.uniform((-12, -12), (SHAPE[0] + 12, SHAPE[1] + 12), size=(14, 2)):
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < 12**2
        signal = np.stack([200 + 1500 * mask, 300 + 800 * mask]) * vignette
        noisy = signal + rng.normal(0, 10, signal.shape) + DARK
        fields.append(noisy.clip(0, 65535).astype(np.uint16))
        masks.append(mask)
    return fields, masks


def tile_cv(field: np.ndarray, mask: np.ndarray, tiles: int = 4) -> np.ndarray:
    """Per channel: coefficient of variation across tiles of the mean foreground intensity."""
    h, w = SHAPE
    means = []
    for i in range(tiles):
        for j in range(tiles):
            sl = (slice(i * h // tiles, (i + 1) * h // tiles), slice(j * w // tiles, (j + 1) * w // tiles))
            if mask[sl].sum() > 50:
                means.append(field[(slice(None), *sl)][:, mask[sl]].mean(axis=1) - DARK)
    means = np.array(means)
    return means.std(axis=0) / means.mean(axis=0)


@pytest.mark.parametrize(("method", "n_fields", "max_error", "median_error"),
                         [("percentile", 24, 0.05, 0.005), ("mean", 200, 0.2, 0.03)])
def test_flatfield_recovers_the_vignetting(method, n_fields, max_error, median_error):
    fields, _ = make_fields(n_fields)
    flat = flatfield_from_fields(fields, 0.5, method=method, dark=DARK)
    assert flat.shape == (2, *SHAPE) and flat.dtype == np.float32
    np.testing.assert_allclose(flat.mean(axis=(1, 2)), 1.0, rtol=1e-5)
    error = np.abs(flat - true_vignetting())
    assert error.max() < max_error and np.median(error) < median_error, (error.max(), np.median(error))


@pytest.mark.parametrize(("method", "n_fields", "ratio"), [("percentile", 24, 0.1), ("mean", 200, 0.6)])
def test_correction_makes_fields_flatter(method, n_fields, ratio):
    fields, _ = make_fields(n_fields, seed=1)
    flat = flatfield_from_fields(fields, 0.5, method=method, dark=DARK)
    test_fields, test_masks = make_fields(3, seed=99)  # fields the estimate did not see
    for field, mask in zip(test_fields, test_masks, strict=True):
        corrected = apply_flatfield(field, flat, dark=DARK)
        assert corrected.dtype == np.uint16
        before, after = tile_cv(field, mask), tile_cv(corrected, mask)
        assert np.all(after < ratio * before), (before, after)


def test_apply_keeps_dtype_and_range():
    image = np.full((2, 4, 5), 60000, np.uint16)
    flat = np.full((2, 4, 5), 0.5, np.float32)
    out = apply_flatfield(image, flat)
    assert out.dtype == np.uint16 and out.max() == 65535  # clipped, not wrapped
    out = apply_flatfield(image.astype(np.float64), flat)
    assert out.dtype == np.float32 and out.max() == 120000
    np.testing.assert_array_equal(apply_flatfield(image, flat[0], dark=100.0), np.full((2, 4, 5), 65535))
    with pytest.raises(ChannelMismatchError, match="3 channels, image has 2"):
        apply_flatfield(image, np.ones((3, 4, 5)))
    with pytest.raises(PlateFormatError, match="does not fit"):
        apply_flatfield(image, np.ones((2, 5, 4)))


def test_load_flatfield_single_file_and_per_channel_planes(tmp_path):
    flat = true_vignetting().astype(np.float32)
    np.save(tmp_path / "flat.npy", flat)
    np.testing.assert_array_equal(load_flatfield(tmp_path / "flat.npy"), flat)
    np.save(tmp_path / "IllumDNA.npy", flat[0])
    np.save(tmp_path / "IllumER.npy", flat[1])
    np.testing.assert_array_equal(load_flatfield([tmp_path / "IllumDNA.npy", str(tmp_path / "IllumER.npy")]), flat)
    np.save(tmp_path / "bad.npy", flat - 1.0)
    with pytest.raises(ConfigError, match="finite and positive"):
        load_flatfield(tmp_path / "bad.npy")
    with pytest.raises(ConfigError, match="cannot read"):
        load_flatfield(tmp_path / "missing.npy")


def test_bad_estimate_input():
    with pytest.raises(PlateFormatError, match="no fields"):
        flatfield_from_fields([], 0.5)
    with pytest.raises(ConfigError, match="method"):
        flatfield_from_fields([np.ones((1, 8, 8))], 0.5, method="median")
    with pytest.raises(PlateFormatError, match="one shape"):
        flatfield_from_fields([np.ones((1, 8, 8)), np.ones((1, 8, 9))], 0.5)


@pytest.mark.slow
def test_estimate_flatfield_on_a_demo_plate_with_known_vignetting(tmp_path):
    """The demo plate's per-plate illumination is known; DNA has the most background to see it in."""
    from subcell_scale.io import demo, make_demo_plate, open_plate
    from subcell_scale.illumination import estimate_flatfield

    path = make_demo_plate(tmp_path, n_plates=1, n_wells=4, n_fields=2, field_size=256, seed=5)[0]
    effects = demo.PlateEffects.draw(demo.HPA, 256, 5, 0)  # what the generator applied to plate 1
    plate = open_plate(path)
    dna = plate.channel_names.index("dna")
    flat = estimate_flatfield(plate, channels=["dna"])
    assert flat.shape == (4, 256, 256)
    others = [c for c in range(4) if c != dna]
    np.testing.assert_array_equal(flat[others], 1.0)
    truth = effects.illumination[dna] / effects.illumination[dna].mean()
    assert np.corrcoef(flat[dna].ravel(), truth.ravel())[0, 1] > 0.95
    befores, afters = [], []
    for well in plate.wells:
        for field in plate.fields(well):
            image = plate.read_field(well, field)
            background = plate.read_labels(well, field, "cells") == 0
            befores.append(tile_background_cv(image[dna], background, effects.offset))
            afters.append(tile_background_cv(apply_flatfield(image, flat)[dna], background, effects.offset))
    assert all(a < 0.5 * b for a, b in zip(afters, befores, strict=True)), (befores, afters)
    assert np.mean(afters) < 0.35 * np.mean(befores), (befores, afters)
    assert estimate_flatfield(plate, channels=[dna], max_fields=3).shape == flat.shape
    with pytest.raises(ChannelMismatchError, match="'GFP' is not in"):
        estimate_flatfield(plate, channels=["GFP"])


def tile_background_cv(plane: np.ndarray, background: np.ndarray, dark: float, tiles: int = 4) -> float:
    """Coefficient of variation across tiles of the mean background intensity above the dark level."""
    h, w = plane.shape
    means = []
    for i in range(tiles):
        for j in range(tiles):
            sl = (slice(i * h // tiles, (i + 1) * h // tiles), slice(j * w // tiles, (j + 1) * w // tiles))
            if background[sl].sum() > 100:
                means.append(plane[sl][background[sl]].mean() - dark)
    return float(np.std(means) / np.mean(means))
