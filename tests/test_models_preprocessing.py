"""Reference preprocessing: normalisation fixtures, masking, cropping, resizing and channel resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.transform import resize

from subcell_scale.errors import ChannelMismatchError, ConfigError
from subcell_scale.models.preprocessing import (crop_centered, dilate_mask, mask_cell, min_max_normalize,
                                                resize_bilinear, resolve_channels)

PRE = Path(__file__).parent / "data" / "subcell" / "preprocessing"


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    return np.load(PRE / "raw_uint16_CHW.npy")


# ---------------------------------------------------------------- normalisation
def test_global_min_max_matches_portable_2024(raw):
    expected = np.load(PRE / "norm_portable2024_minmax_global.npy")
    out = min_max_normalize(raw)  # eps 1e-6, computed in float64
    assert out.dtype == np.float32 and out.shape == raw.shape
    np.testing.assert_allclose(out, expected, atol=1e-7, rtol=0)
    # the 2024 tool computed in float32: the same input gives the fixture bit for bit
    assert np.array_equal(min_max_normalize(raw.astype(np.float32)), expected)


def test_global_min_max_eps_1e8_matches_latest_portable_exactly(raw):
    expected = np.load(PRE / "norm_portable_latest_minmax_global_eps1e-8.npy")
    assert np.array_equal(min_max_normalize(raw, eps=1e-8), expected)


def test_per_channel_mode_matches_portable_2025_exactly(raw):
    expected = np.load(PRE / "norm_portable2025_per_channel.npy")
    assert np.array_equal(min_max_normalize(raw, per_channel=True, eps=0), expected)


def test_torch_and_numpy_agree_and_batches_are_per_item(raw):
    batch = np.stack([raw, raw // 2 + 7])
    np_out = min_max_normalize(batch)
    t_out = min_max_normalize(torch.from_numpy(batch.astype(np.int32)))
    assert isinstance(t_out, torch.Tensor) and t_out.dtype == torch.float32
    np.testing.assert_array_equal(t_out.numpy(), np_out)
    # item 1 is an affine copy of item 0, so per-item normalisation makes them (almost) equal
    np.testing.assert_allclose(np_out[1], np_out[0], atol=2e-4)
    lo, hi = raw.min(), raw.max()
    np.testing.assert_allclose(np_out[0], (raw - float(lo)) / (float(hi - lo) + 1e-6), atol=1e-7)


def test_constant_item_gives_zeros_not_nan():
    flat = np.full((2, 8, 8), 5, np.uint8)
    assert np.array_equal(min_max_normalize(flat, per_channel=True, eps=0), np.zeros((2, 8, 8), np.float32))
    assert np.array_equal(min_max_normalize(flat), np.zeros((2, 8, 8), np.float32))


def test_min_max_needs_channels_and_space():
    with pytest.raises(ValueError, match=r"\(\.\.\., C, H, W\)"):
        min_max_normalize(np.zeros((4, 4)))


# ---------------------------------------------------------------- masks, crops, resize
def test_dilate_mask_is_a_7x7_square_dilation():
    rng = np.random.default_rng(0)
    mask = rng.random((2, 40, 33)) > 0.97
    expected = np.stack([ndimage.binary_dilation(m, structure=np.ones((7, 7), bool)) for m in mask])
    assert np.array_equal(dilate_mask(mask), expected)
    single = np.zeros((15, 15), bool)
    single[7, 7] = True
    grown = dilate_mask(single)
    assert grown.sum() == 49 and grown[4:11, 4:11].all()


def test_mask_cell_keeps_the_dilated_cell_and_zeros_neighbours():
    labels = np.zeros((30, 30), np.int32)
    labels[5:10, 5:10] = 1
    labels[20:25, 20:25] = 2
    image = np.ones((2, 30, 30), np.uint16) * 9
    out = mask_cell(image, labels, 1)
    keep = ndimage.binary_dilation(labels == 1, structure=np.ones((7, 7), bool))
    assert np.array_equal(out[0] > 0, keep) and out.dtype == np.uint16
    assert out[:, 20:25, 20:25].sum() == 0


def test_crop_centered_pads_with_zeros_at_borders():
    image = np.arange(2 * 10 * 12).reshape(2, 10, 12)
    crop = crop_centered(image, (1, 11), 6)
    assert crop.shape == (2, 6, 6)
    # window rows -2..3, cols 8..13 of the image
    assert np.array_equal(crop[:, 2:, :4], image[:, 0:4, 8:12])
    assert crop[:, :2].sum() == 0 and crop[:, :, 4:].sum() == 0
    inner = crop_centered(image, (5, 6), (4, 4))
    assert np.array_equal(inner, image[:, 3:7, 4:8])


def test_resize_bilinear_matches_skimage_linear_without_antialiasing():
    x = np.random.default_rng(1).random((3, 37, 29)).astype(np.float32)
    for size in [(64, 50), (16, 13)]:
        expected = resize(x, (3, *size), order=1, mode="edge", anti_aliasing=False, preserve_range=True)
        np.testing.assert_allclose(resize_bilinear(x, size), expected, atol=1e-5, rtol=0)


def test_resize_by_half_averages_2x2_blocks():
    x = np.random.default_rng(2).integers(0, 4096, (2, 4, 16, 12)).astype(np.uint16)
    out = resize_bilinear(x, (8, 6))
    expected = x.astype(np.float64).reshape(2, 4, 8, 2, 6, 2).mean(axis=(3, 5))
    assert out.dtype == np.float32 and out.shape == (2, 4, 8, 6)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


# ---------------------------------------------------------------- channels
ALL = ("microtubules", "er", "nucleus", "protein")


def test_automatic_matching_of_common_names():
    assert resolve_channels(["GFP", "DAPI", "Tubulin", "Calreticulin"], ALL) == [2, 3, 1, 0]
    assert resolve_channels(["dna", "ER", "RNA", "AGP", "Mito"], ("er", "nucleus")) == [1, 0]
    assert resolve_channels(["Hoechst 33342", "anti-GFP"], "DNA-Protein_ViT-ProtS-Pool") == [0, 1]
    assert resolve_channels(["MT", "ConA", "nucleus", "protein"], "all_channels_MAE-CellS-ProtS-Pool") == [0, 1, 2, 3]


def test_explicit_map_wins_and_accepts_aliases_and_case():
    plate = ["DAPI", "488", "561", "640"]
    got = resolve_channels(plate, ALL, {"protein": "488", "DNA": "dapi", "MT": "640", "er": "561"})
    assert got == [3, 2, 0, 1]
    assert resolve_channels(plate, ("nucleus", "protein"), {"protein": 2}) == [0, 2]


def test_missing_channel_names_slot_variant_and_plate_channels():
    with pytest.raises(ChannelMismatchError) as info:
        resolve_channels(["DNA", "ER", "RNA", "AGP", "Mito"], "all_channels_MAE-CellS-ProtS-Pool")
    text = str(info.value)
    assert "'microtubules'" in text and "all_channels_MAE-CellS-ProtS-Pool" in text
    assert "['DNA', 'ER', 'RNA', 'AGP', 'Mito']" in text and "channel_map" in text


def test_unknown_plate_channel_in_the_map_is_named():
    with pytest.raises(ChannelMismatchError, match=r"plate channel 'GFP' \(for 'protein'\) is not on the plate"):
        resolve_channels(["DAPI", "mCherry"], ("nucleus", "protein"), {"protein": "GFP"})


def test_ambiguous_automatic_match_asks_for_a_map():
    with pytest.raises(ChannelMismatchError, match=r"several plate channels could be 'nucleus' \(\['DAPI', 'Hoechst'\]\)"):
        resolve_channels(["DAPI", "Hoechst", "GFP"], ("nucleus", "protein"))


def test_a_list_means_one_pass_per_plate_channel():
    plate = ["DNA", "ER", "RNA", "AGP", "Mito"]
    passes = resolve_channels(plate, "DNA-Protein_MAE-CellS-ProtS-Pool", {"protein": ["ER", "RNA", "AGP", "Mito"]})
    assert passes == [[0, 1], [0, 2], [0, 3], [0, 4]]


def test_map_keys_must_be_model_channels():
    with pytest.raises(ChannelMismatchError, match=r"'er' is not a channel of variant DNA-Protein"):
        resolve_channels(["DNA", "GFP", "ER"], "DNA-Protein_ViT-ProtS-Pool", {"er": "ER"})
    with pytest.raises(ConfigError, match=r"only one model channel may list several"):
        resolve_channels(["a", "b", "c", "d"], ("nucleus", "protein"), {"nucleus": ["a", "b"], "protein": ["c", "d"]})
