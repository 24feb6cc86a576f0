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
    specs = [(CropSpec(crop_um=60, model_pixel_size=0.5), 0.4),
             (CropSpec(crop_um=40, model_pixel_size=0.5, mask_resize="bilinear", dilation_pixel_size=0.25), 0.25),
             (CropSpec(crop_um=60, model_pixel_size=0.25, mask_mode="none", normalization="per_channel",
                       edge_window_um=90, **JUMP_LIKE), 0.5)]
    for spec, pixel_size in specs:
        kwargs = {"channels": [[0, 1], [2, 1]], "plate_upper": [3000, 3500, 3990]}
        dropped, dropped_t = {}, {}
        ref, table = extract_cells(image, labels, pixel_size, spec, dropped=dropped, **kwargs)
        out, table_t = extract_cells_torch(image, labels, pixel_size, spec, device="cuda", dropped=dropped_t, **kwargs)
        assert out.device.type == "cuda" and table_t.equals(table) and dropped_t == dropped
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


# --- the JUMP crop generator's intensity handling and edge rule, and training's mask ----------------------

JUMP_LIKE = {"plate_upper_percentile": 99.99, "field_lower_percentile": 0.05, "field_upper_percentile": 99.95,
             "quantization": "uint8", "edge_padding": 0.25, "center_rounding": "half_even"}


def generator_crops(raw: np.ndarray, illum: np.ndarray, labels: np.ndarray, plate_upper: np.ndarray,
                    crop: int, used: int, out: int) -> tuple[np.ndarray, list[int], list[int]]:
    """The generator's steps written out: float32 field / illumination function, field percentiles, scale by
    the upper bound, pad int(0.25 crop) zeros, np.round centroids on the padded mask, drop centres too close
    to the padded edge, cut crop x crop, uint8; then at inference centre-crop to `used`, /255, resize, min-max.
    Returns crops (n, c, out, out), kept labels, dropped labels."""
    img = raw.astype(np.float32)
    img[:] = img / illum  # float64 division, stored back as float32
    low, high = np.percentile(img, [0.05, 99.95], axis=(1, 2))
    upper = np.min(np.stack([plate_upper, high]), axis=0)
    img[:] = ((img - low[:, None, None]) / upper[:, None, None]).clip(0, 1)
    pad = int(crop * 0.25)
    img = np.pad(img, ((0, 0), (pad, pad), (pad, pad)))
    mask = np.pad(labels, pad)
    kept, dropped, crops = [], [], []
    for value in np.unique(labels[labels > 0]):
        cy, cx = np.round(ndi.center_of_mass(mask == value)).astype(np.int64)
        if min(cy, cx) < crop / 2 or mask.shape[0] - cy < crop / 2 or mask.shape[1] - cx < crop / 2:
            dropped.append(int(value))
            continue
        kept.append(int(value))
        window = (img[:, cy - crop // 2:cy + crop // 2, cx - crop // 2:cx + crop // 2] * 255).astype(np.uint8)
        offset = (crop - used) // 2
        used_window = window[:, offset:offset + used, offset:offset + used].astype(np.float32) / 255
        resized = F.interpolate(torch.from_numpy(used_window)[None], size=(out, out), mode="bilinear",
                                align_corners=False)[0]
        lo, hi = resized.amin(dim=(1, 2), keepdim=True), resized.amax(dim=(1, 2), keepdim=True)
        crops.append(((resized - lo) / (hi - lo + 1e-6)).numpy())
    return np.stack(crops), kept, dropped


def cell_painting_field(seed: int = 11, shape: tuple[int, int] = (96, 104)) -> tuple[np.ndarray, np.ndarray]:
    """Two-channel uint16 field with bright blobs (so percentiles bite) and ~15 cells, some near the edge."""
    rng = np.random.default_rng(seed)
    image = rng.gamma(2.0, 300.0, size=(2, *shape)).astype(np.uint16)
    image[:, 40:44, 50:53] = 60000  # saturated spots above the plate bound
    labels = np.zeros(shape, np.int32)
    for v, (y, x) in enumerate(rng.integers(0, [shape[0] - 6, shape[1] - 6], size=(15, 2)), start=1):
        labels[y:y + int(rng.integers(2, 7)), x:x + int(rng.integers(2, 7))] = v
    labels[1:4, 30:34] = 16  # centre 5 px from the top: dropped by a 24-px window padded by 6
    labels[60:62, shape[1] - 8:shape[1] - 4] = 17  # centre 5.5 px from the right edge: kept (6 - 0.5 rounds even)
    labels[70:72, 20:22] = 18  # centroid (70.5, 20.5): halves round to even
    return image, labels


def test_plate_histogram_and_its_percentile_follow_the_generator():
    from subcell_scale.intensity import field_histogram, histogram_percentile

    image, _ = cell_painting_field()
    fields = [image, image // 3, np.minimum(image, 900).astype(np.uint16)]
    hist = sum(field_histogram(f) for f in fields)
    expected = sum(np.stack([np.histogram(f[c], bins=65536, range=(0, 65536))[0] for c in range(2)]) for f in fields)
    np.testing.assert_array_equal(hist, expected)
    np.testing.assert_array_equal(field_histogram(image.astype(np.float32)), field_histogram(image))
    # the first value v with more than 99.99 % of the plate's pixels at or below v, from the sorted pixels
    pixels = np.concatenate([f.reshape(2, -1) for f in fields], axis=1)
    for q in (99.99, 50.0, 99.0):
        bound = histogram_percentile(hist, q)
        for c in range(2):
            values = np.sort(pixels[c])
            share = np.searchsorted(values, bound[c], side="right") / values.size
            below = np.searchsorted(values, bound[c] - 1, side="right") / values.size
            assert share > q / 100 >= below - 1e-12
    with pytest.raises(ConfigError, match="percentile"):
        histogram_percentile(hist, 100)


@pytest.mark.parametrize("use_sort", [False, True])
def test_field_percentiles_on_torch_equal_numpy_bit_for_bit(use_sort):
    from subcell_scale.intensity import _percentiles_torch

    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 999, 2000, 4097):
        flat = (rng.gamma(2.0, 500.0, size=(3, n))).astype(np.float32)
        flat[1] = np.round(flat[1])  # ties
        for q in ([0.05, 99.95], [0.0, 100.0], [50.0]):
            got = _percentiles_torch(torch.from_numpy(flat), q, use_sort=use_sort).numpy()
            np.testing.assert_array_equal(got, np.percentile(flat, q, axis=1))


def test_intensities_edge_rule_and_rounding_are_the_generators():
    image, labels = cell_painting_field()
    rng = np.random.default_rng(3)
    illum = rng.uniform(0.7, 1.4, size=image.shape)  # float64, as Broad illumination functions may be
    plate_upper = np.array([2500.0, 65535.0])  # channel 0 clipped by the plate, channel 1 by the field
    # the generator's 24-px crops (pad 6), of which the model uses the central 16 px, resized to 20 px
    spec = CropSpec(crop_um=16, model_pixel_size=0.8, out_size=20, mask_mode="none", normalization="per_channel",
                    edge_window_um=24, **JUMP_LIKE)
    from subcell_scale.illumination import apply_flatfield

    corrected = apply_flatfield(image, illum, rounded=False)
    dropped: dict[str, list[int]] = {}
    crops, table = extract_cells(corrected, labels, 1.0, spec, plate_upper=plate_upper, dropped=dropped)
    expected, kept, edge = generator_crops(image, illum, labels, plate_upper, crop=24, used=16, out=20)
    assert list(table["label"]) == kept and dropped == {"edge": edge} and edge
    np.testing.assert_allclose(crops, expected, atol=1e-5)
    # the device path computes the same scaling (bit for bit) and keeps the same cells
    dropped_t: dict[str, list[int]] = {}
    crops_t, table_t = extract_cells_torch(corrected, labels, 1.0, spec, plate_upper=plate_upper, dropped=dropped_t,
                                           chunk_size=4)
    np.testing.assert_allclose(crops_t.numpy(), crops, atol=1e-6)
    assert table_t.equals(table) and dropped_t == dropped
    # each key switches its step off: without quantisation the crops change, still in [0, 1]
    plain, _ = extract_cells(corrected, labels, 1.0, CropSpec(**{**spec.__dict__, "quantization": "none"}),
                             plate_upper=plate_upper)
    assert not np.allclose(plain, crops) and np.abs(plain - crops).max() < 0.2
    with pytest.raises(ConfigError, match="plate_upper"):
        extract_cells(corrected, labels, 1.0, spec)


def test_half_even_centres_round_as_np_round():
    labels = np.zeros((30, 30), np.int32)
    labels[10, 4:6] = 1  # centroid x 4.5 -> 4 (even); half up gives 5
    labels[20, 7:9] = 2  # centroid x 7.5 -> 8 either way
    labels[5:7, 20] = 3  # centroid y 5.5 -> 6 either way
    even = cell_table(labels, rounding="half_even")
    up = cell_table(labels)
    np.testing.assert_array_equal(even["crop_center_x"], np.round(even["centroid_x"]).astype(int))
    np.testing.assert_array_equal(even["crop_center_y"], np.round(even["centroid_y"]).astype(int))
    assert list(even["crop_center_x"]) == [4, 8, 20] and list(up["crop_center_x"]) == [5, 8, 20]


def test_edge_rule_keeps_cells_whose_window_stays_in_the_padded_field():
    labels = np.zeros((40, 40), np.int32)
    for v, x in enumerate((1, 2, 3, 20, 36, 37, 38), start=1):
        labels[20, x] = v  # one-pixel cells along a row
    spec = CropSpec(crop_um=8, model_pixel_size=1.0, mask_mode="none", normalization="none", edge_padding=0.25)
    dropped: dict[str, list[int]] = {}
    _, table = extract_cells(np.ones((1, 40, 40), np.uint16), labels, 1.0, spec, dropped=dropped)
    # window 8, padding 2: a centre c is kept when c + 2 >= 4 and 40 + 4 - (c + 2) >= 4, i.e. 2 <= c <= 38
    assert list(table["crop_center_x"]) == [2, 3, 20, 36, 37, 38] and dropped == {"edge": [1]}


def test_training_mask_is_dilated_at_the_source_scale_like_opencv():
    cv2 = pytest.importorskip("cv2")
    image, labels = cells_field(seed=8, shape=(90, 100), n=7)
    # training: 0.08 um/px source, 7 x 7 dilation there, 2x bilinear resize of image and mask (here a
    # 64-px window instead of 896 px; the same steps)
    spec = CropSpec(crop_um=5.12, model_pixel_size=0.16, dilation=7, dilation_pixel_size=0.08,
                    mask_resize="bilinear")
    assert spec.window(0.08) == (64, 64) and spec.size == 32 and spec.dilation_window(0.08) == (7, 7)
    crops, table = extract_cells(image, labels, 0.08, spec)
    for k, row in table.iterrows():
        cy, cx = int(row.crop_center_y), int(row.crop_center_x)
        window = reference_window(image, cy, cx, (64, 64)).astype(np.float32)
        own = reference_window(labels, cy, cx, (64, 64)) == row.label
        grown = ndi.grey_dilation((own * 255).astype(np.uint8), size=(7, 7)) / 255
        mask = cv2.resize(grown.astype(np.uint16), (32, 32), interpolation=cv2.INTER_LINEAR)
        resized = np.stack([cv2.resize(c, (32, 32), interpolation=cv2.INTER_LINEAR) for c in window])
        masked = resized * mask
        expected = (masked - masked.min()) / (masked.max() - masked.min() + 1e-6)
        np.testing.assert_allclose(crops[k], expected, atol=1e-5)
    # the former rule (7 output pixels = 1.12 um at 0.16 um/px) grows the mask about twice as far
    wide = CropSpec(crop_um=5.12, model_pixel_size=0.16, dilation=7)
    assert (wide.dilation_px, spec.dilation_um, wide.dilation_um) == (7, pytest.approx(0.56), pytest.approx(1.12))


@pytest.mark.parametrize(
    "spec",
    [CropSpec(crop_um=24, model_pixel_size=0.25, mask_resize="bilinear", dilation=3, dilation_pixel_size=0.5),
     CropSpec(crop_um=24, model_pixel_size=1.0, mask_resize="bilinear", dilation=7, dilation_pixel_size=0.25),
     CropSpec(crop_um=20, model_pixel_size=0.5, mask_mode="none", normalization="per_channel", edge_window_um=30,
              **JUMP_LIKE),
     CropSpec(crop_um=20, model_pixel_size=0.5, out_size=30, field_upper_percentile=99.0, edge_padding=0.25,
              eps=0.0)],
)
def test_torch_path_matches_numpy_with_reference_options(spec):
    image, labels = cells_field(seed=7, shape=(160, 170), n=14)
    for channels in (None, [[2, 1], [0, 1]]):
        kwargs = {"channels": channels, "plate_upper": [3000, 3500, 3990]}
        dropped, dropped_t = {}, {}
        ref, table = extract_cells(image, labels, (0.5, 0.4), spec, dropped=dropped, **kwargs)
        out, table_t = extract_cells_torch(image, labels, (0.5, 0.4), spec, dropped=dropped_t, chunk_size=3, **kwargs)
        np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)
        assert table.equals(table_t) and dropped == dropped_t and len(table) > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"quantization": "uint8"}, "needs intensities scaled"), ({"field_lower_percentile": 1.0}, "upper bound"),
     ({"edge_padding": 0.6}, "edge_padding"), ({"mask_resize": "area"}, "mask_resize"),
     ({"center_rounding": "down"}, "center_rounding"), ({"field_upper_percentile": 101}, "field_upper"),
     ({"dilation_pixel_size": 0}, "dilation_pixel_size")],
)
def test_bad_reference_options_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CropSpec(**kwargs)
