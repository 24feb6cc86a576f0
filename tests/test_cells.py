"""Cell crops: geometry at every position, table vs scikit-image, mask, normalisation, passes, torch twin."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from skimage.measure import regionprops_table

from subcell_scale.cells import CELL_COLUMNS, CropSpec, cell_table, extract_cells, extract_cells_torch
from subcell_scale.errors import ConfigError, PlateFormatError


def cells_field(seed: int = 0, shape: tuple[int, int] = (120, 150), n: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """A 3-channel uint16 field of random intensities with n touching rectangular-ish cells."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 4000, size=(3, *shape), dtype=np.uint16)
    labels = np.zeros(shape, np.int32)
    values = rng.choice(np.arange(1, 500), size=n, replace=False)
    for v in values:
        y, x = rng.integers(0, shape[0] - 5), rng.integers(0, shape[1] - 5)
        h, w = rng.integers(4, 25, size=2)
        labels[y:y + h, x:x + w] = v
        labels[y + h // 2, max(x - 3, 0):x] = v  # a spur so centroid and bbox centre differ
    return image, labels


def reference_window(array: np.ndarray, cy: int, cx: int, side: tuple[int, int]) -> np.ndarray:
    """Zero-padded window by padding the whole array: an independent route to the same crop."""
    sy, sx = side
    padded = np.pad(array, [(0, 0)] * (array.ndim - 2) + [(sy, sy), (sx, sx)])
    y0, x0 = cy - sy // 2 + sy, cx - sx // 2 + sx
    return padded[..., y0:y0 + sy, x0:x0 + sx]


def test_default_spec_is_the_training_geometry():
    spec = CropSpec()
    assert spec.side_um == pytest.approx(71.68)
    assert spec.size == 448
    assert spec.window(0.08) == (896, 896)  # HPA confocal: 896 -> 448 as in training
    assert spec.dilation_px == 7
    jump = CropSpec(crop_um=76.544, out_size=478, mask_mode="none", normalization="per_channel")
    assert jump.window(0.598) == (128, 128)  # 128 px Cell Painting crop x3.74
    assert CropSpec(crop_px=640, model_pixel_size=0.08).size == 640
    assert CropSpec(crop_px=640, model_pixel_size=0.08).side_um == pytest.approx(51.2)
    small = CropSpec(out_size=64)  # 1.12 um per output pixel: 7 model px (1.12 um) -> 1 output px
    assert small.out_pixel_size == pytest.approx(1.12)
    assert small.dilation_px == 1
    assert CropSpec(out_size=224).dilation_px == 3
    assert CropSpec(out_size=448).as_dict()["dilation_out_px"] == 7


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"crop_um": 10, "crop_px": 10}, "not both"), ({"crop_um": -1}, "crop_um"), ({"out_size": 0}, "out_size"),
     ({"mask_mode": "others"}, "mask_mode"), ({"normalization": "zscore"}, "normalization"),
     ({"center": "middle"}, "center"), ({"dilation": 0}, "dilation")],
)
def test_bad_spec_is_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CropSpec(**kwargs)


def test_cell_table_matches_regionprops():
    _, labels = cells_field()
    table = cell_table(labels)
    ref = regionprops_table(labels, properties=("label", "area", "centroid", "bbox"))
    assert list(table.columns) == list(CELL_COLUMNS)
    np.testing.assert_array_equal(table["label"], ref["label"])
    np.testing.assert_array_equal(table["area"], ref["area"])
    np.testing.assert_allclose(table["centroid_y"], ref["centroid-0"])
    np.testing.assert_allclose(table["centroid_x"], ref["centroid-1"])
    for k, name in enumerate(["bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x"]):
        np.testing.assert_array_equal(table[name], ref[f"bbox-{k}"])
    np.testing.assert_array_equal(table["crop_center_y"], np.floor(ref["centroid-0"] + 0.5))
    bbox = cell_table(labels, center="bbox")
    np.testing.assert_array_equal(bbox["crop_center_x"], np.floor((ref["bbox-1"] + ref["bbox-3"] - 1) / 2 + 0.5))
    assert (bbox["crop_center_x"] != table["crop_center_x"]).any()
    # huge, sparse label values (e.g. plate-wide ids) give the same rows
    sparse = cell_table(labels.astype(np.int64) * 10**9 + (labels > 0))
    np.testing.assert_array_equal(sparse["label"], table["label"] * 10**9 + 1)
    assert sparse.drop(columns="label").equals(table.drop(columns="label"))


@settings(max_examples=60, deadline=None)
@given(height=st.integers(8, 40), width=st.integers(8, 40), side_y=st.integers(3, 30), side_x=st.integers(3, 30),
       data=st.data())
def test_crop_is_centred_and_padded_on_the_correct_side(height, width, side_y, side_x, data):
    cy = data.draw(st.integers(0, height - 1))
    cx = data.draw(st.integers(0, width - 1))
    image = (np.arange(height * width, dtype=np.uint16).reshape(1, height, width) + 1)
    labels = np.zeros((height, width), np.int32)
    labels[cy, cx] = 5
    # plate pixel = model pixel and out size = window: no resize, so crop pixels are field pixels
    spec = CropSpec(crop_um=side_y, model_pixel_size=1.0, out_size=side_y, mask_mode="none", normalization="none")
    pixel_size = (1.0, side_y / side_x)
    assert spec.window(pixel_size) == (side_y, side_x)
    crops, _ = extract_cells(image, labels, pixel_size, spec)
    crops_t, _ = extract_cells_torch(image, labels, pixel_size, spec)
    window = reference_window(image[0], cy, cx, (side_y, side_x))
    if side_x == side_y:
        crop = crops[0, 0]
        assert crop[side_y // 2, side_x // 2] == image[0, cy, cx]
        top, left = max(0, side_y // 2 - cy), max(0, side_x // 2 - cx)
        bottom = max(0, cy + side_y - side_y // 2 - height)
        right = max(0, cx + side_x - side_x // 2 - width)
        assert (crop[:top] == 0).all() and (crop[side_y - bottom:] == 0).all()
        assert (crop[:, :left] == 0).all() and (crop[:, side_x - right:] == 0).all()
        assert (crop[top:side_y - bottom, left:side_x - right] > 0).all()
        expected = window.astype(np.float32)
    else:  # anisotropic pixels: the window is resized to a square output
        expected = F.interpolate(torch.from_numpy(window.astype(np.float32))[None, None], size=(side_y, side_y),
                                 mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(crops[0, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(crops_t[0, 0].numpy(), expected, rtol=1e-6)


def test_crops_resize_to_the_model_scale_like_interpolate():
    image, labels = cells_field(seed=1)
    spec = CropSpec(crop_um=20.0, model_pixel_size=0.5, mask_mode="none", normalization="none")  # 40 px at 0.5
    crops, table = extract_cells(image, labels, 0.8, spec)  # window 25 plate px -> 40 px
    assert crops.shape == (len(table), 3, 40, 40)
    row = table.iloc[2]
    window = reference_window(image.astype(np.float32), int(row.crop_center_y), int(row.crop_center_x), (25, 25))
    expected = F.interpolate(torch.from_numpy(window)[None], size=(40, 40), mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(crops[2], expected.numpy(), rtol=1e-6)


def test_own_cell_mask_is_dilated_and_hides_neighbours():
    image, labels = cells_field(seed=2)
    spec = CropSpec(crop_um=31, model_pixel_size=1.0, dilation=5, normalization="none")  # no resize
    crops, table = extract_cells(image, labels, 1.0, spec)
    for k, row in table.iterrows():
        cy, cx = int(row.crop_center_y), int(row.crop_center_x)
        own = reference_window(labels, cy, cx, (31, 31)) == row.label
        keep = ndi.binary_dilation(own, structure=np.ones((5, 5), bool))
        window = reference_window(image, cy, cx, (31, 31)).astype(np.float32)
        np.testing.assert_array_equal(crops[k], window * keep)
        neighbours = (reference_window(labels, cy, cx, (31, 31)) > 0) & ~keep
        assert (crops[k][:, neighbours] == 0).all()


@pytest.mark.parametrize("normalization", ["global", "per_channel"])
def test_normalisation_is_min_max_with_eps(normalization):
    image, labels = cells_field(seed=3)
    raw, _ = extract_cells(image, labels, 0.5, CropSpec(crop_um=12, model_pixel_size=0.25, normalization="none"))
    normed, _ = extract_cells(image, labels, 0.5, CropSpec(crop_um=12, model_pixel_size=0.25,
                                                           normalization=normalization))
    axes = (1, 2, 3) if normalization == "global" else (2, 3)
    lo = raw.min(axis=axes, keepdims=True)
    hi = raw.max(axis=axes, keepdims=True)
    np.testing.assert_allclose(normed, (raw - lo) / (hi - lo + 1e-6), rtol=1e-6, atol=1e-7)
    assert normed.min() == 0.0 and normed.max() == pytest.approx(1.0)


def test_passes_stack_single_pass_crops_and_integer_input_is_kept():
    image, labels = cells_field(seed=4)
    spec = CropSpec(crop_um=24, model_pixel_size=0.5, out_size=32)
    passes = [[2, 0], [2, 1], [0, 0]]
    multi, table = extract_cells(image, labels, 0.5, spec, channels=passes)
    assert multi.shape == (len(table), 3, 2, 32, 32) and multi.dtype == np.float32
    for p, chans in enumerate(passes):
        single, _ = extract_cells(image, labels, 0.5, spec, channels=chans)
        np.testing.assert_array_equal(multi[:, p], single)
    as_float, _ = extract_cells(image.astype(np.float64), labels, 0.5, spec, channels=passes)
    np.testing.assert_allclose(as_float, multi, atol=1e-6)
    chunked, _ = extract_cells(image, labels, 0.5, spec, channels=passes, chunk_size=2)
    np.testing.assert_array_equal(chunked, multi)
    with pytest.raises(ConfigError, match="chunk_size"):
        extract_cells(image, labels, 0.5, spec, chunk_size=0)


@pytest.mark.parametrize(
    "spec",
    [CropSpec(crop_um=24, model_pixel_size=0.5, out_size=32),  # downscale 48 -> 32
     CropSpec(crop_um=24, model_pixel_size=0.25, normalization="per_channel"),  # upscale 48 -> 96
     CropSpec(crop_um=20, model_pixel_size=0.5, mask_mode="none", center="bbox", dilation=3)],
)
def test_torch_path_matches_numpy(spec):
    image, labels = cells_field(seed=5)
    labels = labels.astype(np.uint32)
    for channels in (None, [[2, 1], [0, 1]]):
        ref, table = extract_cells(image, labels, (0.5, 0.5), spec, channels=channels)
        out, table_t = extract_cells_torch(image, labels, (0.5, 0.5), spec, channels=channels, chunk_size=4)
        assert out.dtype == torch.float32 and tuple(out.shape) == ref.shape
        np.testing.assert_allclose(out.numpy(), ref, atol=1e-5)
        assert table.equals(table_t)
    out_tensor, _ = extract_cells_torch(torch.from_numpy(image.astype(np.int32)), labels, 0.5, spec)
    np.testing.assert_allclose(out_tensor.numpy(), extract_cells(image, labels, 0.5, spec)[0], atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_path_on_cuda_matches_numpy():
    image, labels = cells_field(seed=6, shape=(600, 700), n=40)
    spec = CropSpec(crop_um=60, model_pixel_size=0.5)
    ref, _ = extract_cells(image, labels, 0.4, spec, channels=[[0, 1], [2, 1]])
    out, _ = extract_cells_torch(image, labels, 0.4, spec, channels=[[0, 1], [2, 1]], device="cuda")
    assert out.device.type == "cuda"
    np.testing.assert_allclose(out.cpu().numpy(), ref, atol=1e-5)


def test_empty_field_and_bad_input():
    image = np.zeros((2, 30, 30), np.uint16)
    crops, table = extract_cells(image, np.zeros((30, 30), np.int32), 0.5, CropSpec(out_size=16))
    assert crops.shape == (0, 2, 16, 16) and list(table.columns) == list(CELL_COLUMNS) and table.empty
    crops_t, _ = extract_cells_torch(image, np.zeros((30, 30), np.int32), 0.5, CropSpec(out_size=16),
                                     channels=[[0], [1]])
    assert tuple(crops_t.shape) == (0, 2, 1, 16, 16)
    with pytest.raises(PlateFormatError, match=r"labels \(30, 31\) do not match"):
        extract_cells(image, np.zeros((30, 31), np.int32), 0.5)
    with pytest.raises(PlateFormatError, match="integers"):
        extract_cells(image, np.zeros((30, 30), np.float32), 0.5)
    with pytest.raises(ConfigError, match=r"out of range .* 2 channels"):
        extract_cells(image, np.zeros((30, 30), np.int32), 0.5, channels=[0, 2])
    with pytest.raises(ConfigError, match="same, non-zero number"):
        extract_cells(image, np.zeros((30, 30), np.int32), 0.5, channels=[[0, 1], [1]])
    with pytest.raises(ConfigError, match="pixel_size"):
        extract_cells(image, np.zeros((30, 30), np.int32), 0.0)
