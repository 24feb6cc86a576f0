"""Presets: effective parameters per plate, channel checks, and the crops each preset feeds the model."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from subcell_scale.store import read_field_records
from subcell_scale._constants import VAR_PREFIX, Keys, Obs
from subcell_scale.errors import ChannelMismatchError, ConfigError
from subcell_scale.io import PlateWriter, open_plate
from subcell_scale.io.demo import make_demo_plate
from subcell_scale.models import SubCell
from subcell_scale.models.config import ModelConfig
from subcell_scale._constants import Files
from subcell_scale.params import RunParams
from subcell_scale import embed_plate, field_crops
from subcell_scale.presets import get_preset

JUMP = "jump-cellpainting"
YBG = ("er", "nucleus", "protein")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every test here runs with one torch thread."""


@pytest.fixture(scope="module")
def cp_plate(tmp_path_factory) -> str:
    (path,) = make_demo_plate(tmp_path_factory.mktemp("cp"), n_plates=1, n_wells=4, n_fields=1, field_size=192,
                              seed=1, cellpainting=True)
    return str(path)


@pytest.fixture(scope="module")
def hpa_plate(tmp_path_factory) -> str:
    (path,) = make_demo_plate(tmp_path_factory.mktemp("hpa"), n_plates=1, n_wells=4, n_fields=1, field_size=384,
                              cells_per_field=16, seed=2)
    return str(path)


def _direct_crop(image: np.ndarray, cy: int, cx: int, window: int, size: int) -> np.ndarray:
    """Zero-padded window centred on (cy, cx), resized bilinearly (align_corners=False): float64 (C, S, S)."""
    c, h, w = image.shape
    out = np.zeros((c, window, window), np.float64)
    y0, x0 = cy - window // 2, cx - window // 2
    ys, xs = slice(max(y0, 0), min(y0 + window, h)), slice(max(x0, 0), min(x0 + window, w))
    out[:, ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = image[:, ys, xs]
    t = torch.from_numpy(out)[None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0].numpy()


def _generator_field(raw: np.ndarray, plate_upper: np.ndarray, illum: np.ndarray | None = None) -> np.ndarray:
    """The JUMP crop generator's field, by its formula: float32 / illumination, field percentiles 0.05 and
    99.95, ((x - lower) / min(plate upper, field upper)).clip(0, 1), uint8 truncation, read back / 255."""
    img = raw.astype(np.float32)
    if illum is not None:
        img[:] = img / illum
    low, high = np.percentile(img, [0.05, 99.95], axis=(1, 2))
    upper = np.minimum(plate_upper, high)
    img[:] = ((img - low[:, None, None]) / upper[:, None, None]).clip(0, 1)
    return (img * 255).astype(np.uint8).astype(np.float32) / 255


def _plate_upper(plate) -> np.ndarray:
    """The plate's 99.99 % bound per channel from its sorted raw pixels: the smallest value v with more
    than 99.99 % of the pixels at or below it."""
    pixels = np.concatenate([plate.read_field(w, f).reshape(len(plate.channel_names), -1)
                             for w in plate.wells for f in plate.fields(w)], axis=1)
    k = int(np.floor(0.9999 * pixels.shape[1]))
    return np.sort(pixels, axis=1)[:, k].astype(np.float64)


def test_hpa_preset_is_the_training_geometry():
    p = RunParams.resolve("hpa")
    assert p.crop.size == 448 and p.crop.side_um == pytest.approx(71.68)
    assert p.crop.out_pixel_size == pytest.approx(0.16)
    assert (p.crop.mask_mode, p.crop.normalization, p.crop.center, p.crop.dilation) == ("own_cell", "global", "bbox", 7)
    # training's mask: 7 x 7 at the source 0.08 um/px (0.56 um), resized bilinearly with the image
    assert p.crop.mask_resize == "bilinear" and p.crop.dilation_um == pytest.approx(0.56)
    assert p.crop.window(0.08) == (896, 896) and p.crop.dilation_window(0.08) == (7, 7)
    assert p.crop.dilation_window(0.0800885) == (7, 7) and not p.crop.scales_intensity
    assert p.variant == "all_channels_MAE-CellS-ProtS-Pool" and p.overridden == ()
    alt = get_preset("hpa")["alternatives"]["reference-640"]
    masked640 = RunParams.resolve("hpa", crop_um=alt["crop_um"], model_pixel_size=alt["model_pixel_size"])
    assert masked640.crop.size == 640 and masked640.overridden == ("crop_um", "model_pixel_size")
    assert RunParams.resolve(None).preset == "hpa"


def test_parameters_are_resolved_once_and_changed_by_copy():
    p = RunParams.resolve(JUMP, out_size=224, min_area_um2=30)
    assert RunParams.resolve(p) is p  # resolved parameters pass through untouched
    q = p.replace(mask_mode="own_cell")
    assert (q.crop.size, q.cells.min_area_um2, q.crop.mask_mode) == (224, 30, "own_cell")
    assert q.overridden == ("mask_mode", "min_area_um2", "out_size") and p.crop.mask_mode == "none"
    assert RunParams.resolve(JUMP, crop={"out_size": 96}).crop.size == 96
    assert pickle.loads(pickle.dumps(q)) == q  # travels to workers as it is
    # the digest a resumed run compares sees embedding parameters only
    assert p.embedding_parameters() == p.replace(postprocess="jump-recipe").embedding_parameters()
    assert p.embedding_parameters() != p.replace(out_size=225).embedding_parameters()


def test_unknown_preset_and_parameter_are_named():
    with pytest.raises(ConfigError, match="unknown preset 'jump'.*jump-cellpainting"):
        RunParams.resolve("jump")
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['crop_size'\]"):
        RunParams.resolve("hpa", crop_size=3)
    with pytest.raises(ConfigError, match="normalization"):
        RunParams.resolve("hpa", normalization="zscore")
    with pytest.raises(ConfigError, match=r"segmentation: unknown parameter\(s\) \[.sigma.\]"):
        RunParams.resolve("hpa", segmentation={"sigma": 2})


def test_jump_preset_on_a_cell_painting_plate(cp_plate):
    plate = open_plate(cp_plate)
    assert plate.channel_names == ["DNA", "ER", "RNA", "AGP", "Mito"] and plate.pixel_size == (0.598, 0.598)
    params = RunParams.resolve(JUMP)
    plan = params.plan(plate)
    idx = {n: i for i, n in enumerate(plate.channel_names)}
    assert plan.passes == tuple((idx["ER"], idx["DNA"], idx[x]) for x in ("Mito", "AGP", "RNA"))
    assert plan.pass_names == ("Mito", "AGP", "RNA")
    assert plan.channel_mapping[0] == {"ER": "er", "DNA": "nucleus", "Mito": "protein"}
    assert plan.window_px == (128, 128)  # 76.5 um at 0.598 um/px
    assert params.crop.size == 478 and plan.rescale == pytest.approx(478 / 128)
    assert (params.crop.mask_mode, params.crop.normalization) == ("none", "per_channel")
    crop = params.crop  # the JUMP crop generator's intensity handling and edge rule
    assert (crop.plate_upper_percentile, crop.field_lower_percentile, crop.field_upper_percentile) == (99.99, 0.05, 99.95)
    assert (crop.quantization, crop.center_rounding, crop.edge_padding) == ("uint8", "half_even", 0.25)
    assert crop.edge_geometry(plate.pixel_size) == ((192, 192), (48, 48))  # its 192-px crops, padded by 48
    assert params.profiling.aggregation.kwargs() == {"by": ["plate", "well"], "operation": "median",
                                                      "per_field": True}
    chain = [step.to_dict() for step in params.profiling.postprocess]
    assert [s["method"] for s in chain] == ["spherize", "standardize"]
    assert (chain[0]["spherize_method"], chain[0]["spherize_variant"], chain[0]["reference"]) == (
        "PCA-cor", "legacy", "control_type == 'negcon'")
    assert (chain[1]["reference"], chain[1]["by"]) == ("all", "plate")
    # the SubCell JUMP benchmark's evaluation: DMSO removed, seed 42, k-NN to 50, identical MoA lists
    design = params.design
    assert design.rules("replicate") == {"pos_sameby": ["compound"], "pos_diffby": ["plate"],
                                         "neg_sameby": ["plate"], "neg_diffby": ["compound"]}
    assert (design.seed, design.null_size, design.nn_k, design.nn_match, design.negcon_in_pool) == (
        42, 10000, 50, "identical", False)
    lines = params.report_lines(plan)
    assert any("3 pass(es)" in line and "Mito->protein" in line for line in lines)
    crops, cells = field_crops(plate, plate.wells[0], "0", preset=JUMP)
    assert crops.shape[1:] == (3, 3, 478, 478) and len(cells) == crops.shape[0] > 0


def test_a_40x_plate_gets_the_same_physical_crop(tmp_path, cp_plate):
    plate = open_plate(cp_plate)
    image = plate.read_field(plate.wells[0], "0")
    fine = tmp_path / "fine.zarr"
    with PlateWriter(fine, name="fine", channel_names=plate.channel_names, pixel_size=0.299) as writer:
        writer.write_field("A01", "0", np.repeat(np.repeat(image, 2, axis=1), 2, axis=2))
    params = RunParams.resolve(JUMP)
    coarse, fine_p = params.plan(plate), params.plan(open_plate(fine))
    assert fine_p.window_px == (256, 256)
    assert fine_p.window_px[0] * 0.299 == pytest.approx(coarse.window_px[0] * 0.598)
    assert params.crop.size == 478


def test_missing_channel_names_the_channel_and_the_preset(hpa_plate):
    with pytest.raises(ChannelMismatchError, match=r"preset 'jump-cellpainting' needs channel\(s\) \['Mito', 'AGP', 'RNA'\]"):
        RunParams.resolve(JUMP).plan(open_plate(hpa_plate))


@pytest.mark.slow
def test_jump_embedding_three_passes_per_cell(cp_plate, tmp_path):
    config = ModelConfig(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=64, num_channels=3, pool_int_dim=16)
    model = SubCell.random(config, seed=3, n_classifiers=1, channels=YBG)
    adata = embed_plate(cp_plate, model, out=tmp_path / "run", preset=JUMP, out_size=48, progress=False)
    d = model.embedding_dim
    assert adata.n_obs > 0 and adata.X.shape == (adata.n_obs, 3 * d)
    assert list(adata.var_names[[0, d, 2 * d, 3 * d - 1]]) == [
        f"{VAR_PREFIX}Mito_0000", f"{VAR_PREFIX}AGP_0000", f"{VAR_PREFIX}RNA_0000", f"{VAR_PREFIX}RNA_{d - 1:04d}"]
    assert adata.obsm[Keys.LOCALIZATION].shape == (adata.n_obs, 3 * 31)
    assert list(adata.uns[Keys.PROVENANCE]["passes"]) == ["Mito", "AGP", "RNA"]
    report = json.loads((tmp_path / "run" / Files.RUN).read_text())
    assert report["parameters"]["preset"] == JUMP and report["parameters"]["overridden"] == ["out_size"]
    assert [p["pass_names"] for p in report["plates"]] == [["Mito", "AGP", "RNA"]]

    # one cell, computed directly: the field scaled and quantised as the JUMP generator did, a 128-px
    # window at the centroid rounded half to even, bilinear to 48, per-channel min-max
    plate = open_plate(cp_plate)
    well = str(adata.obs[Obs.WELL].iloc[0])
    image = _generator_field(plate.read_field(well, "0"), _plate_upper(plate)).astype(np.float64)
    row = adata.obs.iloc[0]
    cy, cx = int(np.round(row[Obs.CENTROID_Y])), int(np.round(row[Obs.CENTROID_X]))
    assert 48 <= min(cy, cx) and max(cy, cx) <= 192 - 48  # the edge rule: a 192-px crop fits the padded field
    idx = {n: i for i, n in enumerate(plate.channel_names)}
    passes = []
    for protein in ("Mito", "AGP", "RNA"):
        crop = _direct_crop(image[[idx["ER"], idx["DNA"], idx[protein]]], cy, cx, 128, 48)
        low, high = crop.min(axis=(1, 2), keepdims=True), crop.max(axis=(1, 2), keepdims=True)
        passes.append((crop - low) / (high - low + 1e-6))
    direct = np.stack(passes).astype(np.float32)
    crops, cells = field_crops(plate, well, "0", preset=JUMP, model_channels=YBG, out_size=48)
    assert int(cells[Obs.LABEL].iloc[0]) == int(row[Obs.LABEL])
    np.testing.assert_allclose(crops[0], direct, atol=1e-5)  # float32 resize vs float64 here
    manifest = json.loads((tmp_path / "run" / Files.MANIFEST).read_text())
    edge = sum(f["dropped"].get("edge", 0) for f in read_field_records(tmp_path / "run").values())
    assert edge > 0 and (tmp_path / "run" / Files.INTENSITY / f"{plate.name}.npy").is_file()
    # crops cut on the model's device (torch) give the same cells, drops and embeddings
    on_device = embed_plate(cp_plate, model, preset=JUMP, out_size=48, progress=False, crop_on="device")
    assert list(on_device.obs_names) == list(adata.obs_names)
    np.testing.assert_allclose(on_device.X, np.asarray(adata.X), atol=1e-4)
    per_channel = crops[0].reshape(9, -1)
    np.testing.assert_allclose(per_channel.min(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(per_channel.max(axis=1), 1, atol=1e-5)
    # the cell's 4608-style vector is the three passes' embeddings, concatenated in order
    expected = model.embed(direct[None], batch_size=3)["embedding"][0]
    np.testing.assert_allclose(adata.X[0], expected, atol=1e-4)


def test_hpa_crop_is_masked_and_globally_normalised(hpa_plate):
    from scipy import ndimage as ndi

    plate = open_plate(hpa_plate)
    well = plate.wells[0]
    crops, cells = field_crops(plate, well, "0", preset="hpa", out_size=64)
    assert crops.shape[1:] == (1, 4, 64, 64)
    image = plate.read_field(well, "0").astype(np.float64)
    labels = plate.read_labels(well, "0", "cells")
    label = int(cells[Obs.LABEL].iloc[0])
    ys, xs = np.nonzero(labels == label)
    # the hpa preset centres on the bounding box (as training did); window 71.68 um / 0.32 = 224 px
    cy, cx = int(np.floor((ys.min() + ys.max()) / 2 + 0.5)), int(np.floor((xs.min() + xs.max()) / 2 + 0.5))
    crop = _direct_crop(image, cy, cx, 224, 64)
    own = np.zeros((224, 224), bool)
    inside = (ys - (cy - 112), xs - (cx - 112))
    own[inside] = True
    # training's mask: dilated at the window's scale (0.56 um is under 2 px at 0.32 um/px: no growth), resized
    # bilinearly with the image, kept above 0.5
    dilation = RunParams.resolve("hpa", out_size=64).crop.dilation_window(plate.pixel_size)
    assert dilation == (1, 1)
    grown = ndi.maximum_filter(own.astype(np.float64), size=dilation)
    mask = _direct_crop(grown[None], 112, 112, 224, 64)[0] > 0.5
    masked = crop * mask
    direct = (masked - masked.min()) / (masked.max() - masked.min() + 1e-6)
    np.testing.assert_allclose(crops[0, 0], direct, atol=1e-5)
    assert crops[0, 0].max() == pytest.approx(1, abs=1e-5) and crops[0, 0].min() == 0
    assert crops[0, 0].reshape(4, -1).max(axis=1).min() < 0.99  # one min-max over all channels, not per channel
    assert not crops[0, 0][:, ~mask].any()  # other cells and background are masked out


def test_illumination_correction_divides_fields_before_cropping(cp_plate, tmp_path):
    from subcell_scale.cells import extract_cells
    from subcell_scale.illumination import apply_flatfield, estimate_flatfield
    from subcell_scale.segment import filter_cells

    plate = open_plate(cp_plate)
    well, fld = plate.wells[0], plate.fields(plate.wells[0])[0]
    small = {"out_size": 64}
    plain, _ = field_crops(cp_plate, well, fld, preset=JUMP, model_channels=YBG, **small)
    corrected, cells = field_crops(cp_plate, well, fld, preset=JUMP, model_channels=YBG, illumination="estimate",
                                   **small)
    assert corrected.shape == plain.shape and not np.allclose(corrected, plain)
    # the same crops computed by hand from the flat-field-corrected field
    p = RunParams.resolve(JUMP, **small)
    image = apply_flatfield(plate.read_field(well, fld), estimate_flatfield(plate), rounded=False)
    kept, _ = filter_cells(plate.read_labels(well, fld, "cells"), plate.pixel_size, **p.cells.kwargs())
    expected, table = extract_cells(image, kept, plate.pixel_size, p.crop, channels=p.plan(plate, YBG).passes,
                                    plate_upper=_plate_upper(plate))
    assert list(table["label"]) == list(cells["label"])
    np.testing.assert_allclose(corrected, expected, atol=1e-6)
    # a flat field of the wrong size is refused before any work, naming the file
    np.save(tmp_path / "flat.npy", np.ones((5, 10, 10), np.float32))
    with pytest.raises(ConfigError, match="flat.npy"):
        embed_plate(cp_plate, SubCell.random(ModelConfig(hidden_size=32, num_layers=1, num_heads=1,
                                                         intermediate_size=64, num_channels=3, pool_int_dim=16),
                                   channels=YBG),
                    preset=JUMP, illumination=str(tmp_path / "flat.npy"), progress=False, **small)


def test_broad_illumination_functions_per_channel_through_the_preset(cp_plate, tmp_path):
    """The Broad's ``{plate}_Illum{channel}.npy`` files (float64), given as a template, a list or a mapping,
    divide the field before the generator's scaling; checked against the generator's formula by hand."""
    plate = open_plate(cp_plate)
    well, fld = plate.wells[1], "0"
    rng = np.random.default_rng(5)
    names = plate.channel_names
    shape = plate.read_field(well, fld).shape[1:]
    illum = {n: rng.uniform(0.6, 1.6, size=shape) for n in names}
    for n in names:
        np.save(tmp_path / f"{plate.name}_Illum{n}.npy", illum[n])
    template = str(tmp_path / "{plate}_Illum{channel}.npy")
    small = {"out_size": 40, "model_channels": YBG}
    by_template, cells = field_crops(cp_plate, well, fld, preset=JUMP, illumination=template, **small)
    by_list, _ = field_crops(cp_plate, well, fld, preset=JUMP, illumination=[template.format(plate=plate.name,
                                                                                              channel=n) for n in names],
                             **small)
    np.testing.assert_array_equal(by_list, by_template)
    # by hand: the generator's field, the preset's window at np.round(centroid), per-channel min-max
    field = _generator_field(plate.read_field(well, fld), _plate_upper(plate), np.stack([illum[n] for n in names]))
    idx = {n: i for i, n in enumerate(names)}
    row = cells.iloc[0]
    cy, cx = int(np.round(row[Obs.CENTROID_Y])), int(np.round(row[Obs.CENTROID_X]))
    direct = []
    for protein in ("Mito", "AGP", "RNA"):
        crop = _direct_crop(field[[idx["ER"], idx["DNA"], idx[protein]]].astype(np.float64), cy, cx, 128, 40)
        low, high = crop.min(axis=(1, 2), keepdims=True), crop.max(axis=(1, 2), keepdims=True)
        direct.append((crop - low) / (high - low + 1e-6))
    np.testing.assert_allclose(by_template[0], np.stack(direct), atol=1e-5)
    # a mapping corrects only the channels it names; switching the scaling off changes the crops
    only_dna, _ = field_crops(cp_plate, well, fld, preset=JUMP, illumination={"DNA": template.format(
        plate=plate.name, channel="DNA")}, **small)
    assert not np.allclose(only_dna, by_template)
    np.testing.assert_allclose(only_dna[:, :, 2], field_crops(cp_plate, well, fld, preset=JUMP, **small)[0][:, :, 2])
    with pytest.raises(ChannelMismatchError, match="lists 2 flat field files"):
        field_crops(cp_plate, well, fld, preset=JUMP, illumination=[template] * 2, **small)
    with pytest.raises(ChannelMismatchError, match=r"\['GFP'\]"):
        field_crops(cp_plate, well, fld, preset=JUMP, illumination={"GFP": template}, **small)


def test_plate_histogram_is_kept_and_reused(cp_plate, tmp_path):
    from subcell_scale.intensity import HISTOGRAM_BINS
    from subcell_scale.pipeline.jobs import plate_upper_bounds

    plate = open_plate(cp_plate)
    spec = RunParams.resolve(JUMP).crop
    bounds = plate_upper_bounds(plate, spec, tmp_path)
    np.testing.assert_array_equal(bounds, _plate_upper(plate))
    stored = np.load(tmp_path / f"{plate.name}.npy")
    assert stored.shape == (5, HISTOGRAM_BINS) and stored.sum() == 5 * 4 * 192 * 192
    # a resumed run reads the kept histogram instead of passing over the plate again
    fake = np.zeros_like(stored)
    fake[:, 1234] = 1
    np.save(tmp_path / f"{plate.name}.npy", fake)
    assert plate_upper_bounds(plate, spec, tmp_path) == (1234.0,) * 5
    # each step of the generator's handling is a key switched off by False (None is "not given" in overrides)
    off = RunParams.resolve(JUMP, plate_upper_percentile=False, edge_padding=False, illumination=False)
    assert (off.crop.plate_upper_percentile, off.crop.edge_padding, off.illumination) == (None, None, None)
    assert off.replace(out_size=64).crop.plate_upper_percentile is None
    assert plate_upper_bounds(plate, off.crop, tmp_path) is None
    none = RunParams.resolve(JUMP, plate_upper_percentile=False, field_lower_percentile=False,
                             field_upper_percentile=False, quantization="none")
    assert not none.crop.scales_intensity


@pytest.mark.parametrize(("overrides", "message"), [
    ({"design": {"no_such_field": 1}}, r"evaluation design: unknown parameter\(s\) \['no_such_field'\]"),
    ({"postprocess": [{"step": "no_such_step"}]}, r"step 0 names 'no_such_step'; steps are"),
    ({"postprocess": [{"step": "normalize", "method": "zscore"}]},
     r"postprocess step 0 \(normalize\): method must be one of 'standardize'"),
    ({"postprocess": "no_such_chain"}, r"unknown post-processing chain 'no_such_chain'"),
    ({"aggregation": {"operation": "max"}}, r"aggregation: operation must be one of 'median', 'mean', got 'max'"),
    ({"segmentation": {"cell_threshold": "triangle"}}, r"segmentation: cell_threshold must be one of 'otsu', 'li'"),
    ({"out_size": "big"}, r"out_size must be an integer or None, got 'big'"),
    ({"min_area_um2": "abc"}, r"min_area_um2 must be a number or None, got 'abc'"),
    ({"drop_border": "yes"}, r"drop_border must be true or false, got 'yes'"),
    ({"variant": "no_such_variant"}, r"unknown SubCell variant 'no_such_variant'"),
    ({"channel_map": {"nucleus": 3}}, r"channel_map must map model slots"),
    ({"design.null_size": "many"}, r"null_size must be an integer, got 'many'"),
    ({"design": {"nn_match": "some"}}, r"nn_match must be one of 'identical', 'any'"),
])
def test_every_part_of_a_run_is_checked_when_it_is_resolved(overrides, message):
    """A mistake in any part of a run (evaluation and post-processing included) is named at once, not
    after the embedding."""
    with pytest.raises(ConfigError, match=message):
        RunParams.resolve("hpa", **overrides)


def test_mapping_overrides_merge_into_the_presets_and_dotted_keys_set_one_entry():
    params = RunParams.resolve("hpa", design={"null_size": 100}, **{"segmentation.nucleus_sigma_um": 2.0})
    preset = RunParams.resolve("hpa")
    assert params.design.null_size == 100 and params.design.seed == preset.design.seed == 0
    assert params.design.replicate_rules == preset.design.replicate_rules
    assert params.segmentation.nucleus_sigma_um == 2.0
    assert params.overridden == ("design", "segmentation")
    again = params.replace(out_size=64)  # typed pieces survive a replace
    assert (again.design, again.segmentation, again.crop.size) == (params.design, params.segmentation, 64)
    assert RunParams.resolve("hpa", **params._overrides()) == params
