"""Synthetic demo plates: layout, ground truth, determinism, phenotypes, platemap design and the CLI."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import label as cc_label
from skimage.measure import regionprops

from subcell_scale.cli import main
from subcell_scale.errors import ConfigError
from subcell_scale.io import open_plate, read_platemap, validate_plate
from subcell_scale.io import synthetic
from subcell_scale.io.demo import (
    CELLPAINTING,
    HPA,
    HPA_CONFOCAL,
    JUMP,
    PlateEffects,
    design_platemap,
    layout_for,
    make_demo_plate,
    phenotypes,
    plate_wells,
    synthesize_field,
)


@pytest.fixture(scope="session")
def hpa_plate(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """The size the demo promises to write in seconds: one 24-well x 2-field HPA-like plate."""
    out = tmp_path_factory.mktemp("demo")
    start = time.perf_counter()
    paths = make_demo_plate(out, n_plates=1, n_wells=24, n_fields=2, seed=3)
    print(f"\n24-well x 2-field HPA demo plate (512 px fields) written in {time.perf_counter() - start:.1f} s")
    return paths[0], pd.read_csv(out / "platemap.csv")


@pytest.fixture(scope="session")
def hpa_labels(hpa_plate) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """(well, field) -> (cells, nuclei) label images of the plate, read back once."""
    plate = open_plate(hpa_plate[0])
    return {(well, field): (plate.read_labels(well, field, "cells"), plate.read_labels(well, field, "nuclei"))
            for well in plate.wells for field in plate.fields(well)}


# ---------------------------------------------------------------------------------------------------
# the written plate


@pytest.mark.slow
def test_plate_structure_matches_the_contract(hpa_plate):
    path, platemap = hpa_plate
    assert path.name == "demo-plate-1.zarr"
    plate = open_plate(path)
    assert plate.name == "demo-plate-1"
    assert plate.version == "0.5"
    assert plate.channel_names == ["microtubules", "er", "dna", "protein"]
    assert plate.pixel_size == pytest.approx((0.32, 0.32))
    assert plate.wells == [f"{r}{c:02d}" for r in "AB" for c in range(1, 13)]
    assert sorted(platemap["well"]) == sorted(plate.wells)
    assert list(platemap.columns) == ["plate", "well", "compound", "moa", "control_type"]
    for well in plate.wells:
        assert plate.fields(well) == ["0", "1"]
    image = plate.image("A01", "0")
    assert image.dims == ("c", "y", "x") and image.shape == (4, 512, 512) and image.dtype == np.uint16
    assert plate.n_levels("A01", "0") == 2
    assert set(plate.label_names("A01", "0")) == {"cells", "nuclei"}


@pytest.mark.slow
def test_every_cell_holds_exactly_its_own_nucleus(hpa_labels):
    n_cells = []
    for (well, field), (cells, nuclei) in hpa_labels.items():
        values = np.unique(cells[cells > 0])
        n_cells.append(values.size)
        # labels are 1..n, nuclei carry their cell's value and sit inside it
        np.testing.assert_array_equal(values, np.arange(1, values.size + 1))
        assert np.all(cells[nuclei > 0] == nuclei[nuclei > 0])
        np.testing.assert_array_equal(np.unique(nuclei[nuclei > 0]), values)
        # one connected cell and one connected nucleus per label: skimage labels connected runs of
        # equal values, so a label split in two pieces would add a component
        assert cc_label(cells, connectivity=1).max() == values.size, (well, field)
        assert cc_label(nuclei, connectivity=1).max() == values.size, (well, field)
    assert len(n_cells) == 48
    assert 8 <= np.median(n_cells) <= 15


@pytest.mark.slow
def test_touching_cells_and_cells_cut_by_the_border_exist(hpa_labels):
    touching_pairs = 0
    border_cells = 0
    for cells, _ in hpa_labels.values():
        a, b = cells[:, :-1], cells[:, 1:]
        shared = (a > 0) & (b > 0) & (a != b)
        touching_pairs += len({(int(x), int(y)) for x, y in zip(a[shared], b[shared])})
        edge = np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]])
        border_cells += np.unique(edge[edge > 0]).size
    n_fields = len(hpa_labels)
    assert touching_pairs >= n_fields  # on average at least one touching pair per field
    assert border_cells >= n_fields


@pytest.mark.slow
def test_cell_sizes_are_hpa_like(hpa_plate):
    path, _ = hpa_plate
    plate = open_plate(path)
    cells = plate.read_labels("A01", "0", "cells")
    nuclei = plate.read_labels("A01", "0", "nuclei")
    inner = np.setdiff1d(np.unique(cells), np.concatenate([[0], cells[0], cells[-1], cells[:, 0], cells[:, -1]]))
    area_um2 = ndi.sum(np.ones_like(cells), cells, inner) * 0.32**2
    diameter = 2.0 * np.sqrt(area_um2 / np.pi)
    # competition with neighbours trims outlines, so diameters sit at or a little below 25-45 um
    assert np.all((diameter > 15.0) & (diameter < 50.0)), diameter
    nucleus_fraction = ndi.sum(nuclei > 0, cells, inner) / ndi.sum(cells > 0, cells, inner)
    assert np.all((nucleus_fraction > 0.05) & (nucleus_fraction < 0.45)), nucleus_fraction


@pytest.mark.slow
def test_protein_image_is_uint16_with_dark_level_and_noise(hpa_plate):
    path, _ = hpa_plate
    plate = open_plate(path)
    image = plate.read_field("A01", "0")
    cells = plate.read_labels("A01", "0", "cells")
    background = image[:, cells == 0].astype(float)
    # camera dark level ~90-130 counts plus a little background light, with noise
    assert np.all((np.median(background, axis=1) > 90) & (np.median(background, axis=1) < 250))
    assert np.all(background.std(axis=1) > 3.0)
    assert image.max() > 1000


@pytest.mark.slow
def test_platemap_file_is_read_back_by_the_io_reader(hpa_plate):
    path, _ = hpa_plate
    platemap = read_platemap(path.parent / "platemap.csv")
    assert set(platemap["control_type"]) == {"negcon", "trt"}
    assert (platemap.loc[platemap["compound"] == "DMSO", "control_type"] == "negcon").all()


# ---------------------------------------------------------------------------------------------------
# determinism


def _arrays(path: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(array[...]) for name, array in root.arrays()} | {
        f"{group_name}/{name}": np.asarray(array[...])
        for group_name, group in root.groups()
        for name, array in _walk(group)
    }


def _walk(group: zarr.Group, prefix: str = ""):
    for name, array in group.arrays():
        yield prefix + name, array
    for name, sub in group.groups():
        yield from _walk(sub, f"{prefix}{name}/")


@pytest.mark.slow
@pytest.mark.parametrize("cellpainting", [False, True])
def test_same_seed_gives_byte_identical_plates(tmp_path, cellpainting):
    kwargs = {"n_plates": 1, "n_wells": 4, "n_fields": 1, "field_size": 128, "cellpainting": cellpainting}
    first = make_demo_plate(tmp_path / "a", seed=7, **kwargs)[0]
    second = make_demo_plate(tmp_path / "b", seed=7, **kwargs)[0]
    validate_plate(first)
    a, b = _arrays(first), _arrays(second)
    assert len(a) == 4 * (2 + 2 * 2)  # wells x (image levels + 2 label images x levels)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
    assert (tmp_path / "a" / "platemap.csv").read_bytes() == (tmp_path / "b" / "platemap.csv").read_bytes()


@pytest.mark.parametrize("layout", [HPA, CELLPAINTING], ids=["hpa", "cellpainting"])
def test_fields_depend_on_their_random_stream(layout):
    effects = PlateEffects.draw(layout, 128, seed=0, plate_index=0)
    phenotype = phenotypes(layout)["DMSO"]

    def field(key):
        return synthesize_field(layout, phenotype, effects, np.random.default_rng(key), field_size=128,
                                cells_per_field=layout.cells_per_field)

    same = [field([7, 2, 0, 1, 0]), field([7, 2, 0, 1, 0])]
    other = field([8, 2, 0, 1, 0])
    for x, y in zip(*same):
        assert x.tobytes() == y.tobytes()
    assert same[0][0].tobytes() != other[0].tobytes()


def test_version_04_writes_a_zarr_v2_plate(tmp_path):
    path = make_demo_plate(tmp_path, n_plates=1, n_wells=4, n_fields=1, field_size=128, version="0.4")[0]
    assert (path / ".zattrs").exists()
    plate = open_plate(path)
    assert plate.version == "0.4"
    assert set(plate.label_names("A01", "0")) == {"cells", "nuclei"}


# ---------------------------------------------------------------------------------------------------
# phenotypes: measured on ground-truth masks, directly on synthesized fields


def _field(layout, compound: str, seed: int, size: int = 384, cells: int | None = None):
    effects = PlateEffects.draw(layout, size, seed=0, plate_index=0)
    rng = np.random.default_rng([seed, 99])
    return synthesize_field(layout, phenotypes(layout)[compound], effects, rng, field_size=size,
                            cells_per_field=cells or layout.cells_per_field)


def _protein_features(compound: str, seeds=(1,)) -> dict[str, float]:
    """Per-cell medians of simple localisation measures of the protein channel (dark level removed)."""
    ratios, rims, cvs = [], [], []
    for seed in seeds:
        image, cells, nuclei = _field(HPA, compound, seed)
        protein = image[3].astype(float) - np.median(image[3][cells == 0])
        boundary = (cells != ndi.grey_erosion(cells, size=3)) & (cells > 0)
        ring = ndi.binary_dilation(boundary, iterations=2) & (cells > 0)
        for value in np.unique(cells[cells > 0]):
            cell = cells == value
            nucleus = nuclei == value
            cytoplasm = cell & ~nucleus & ~ring
            ratios.append(protein[nucleus].mean() / protein[cytoplasm].mean())
            rims.append(protein[ring & cell].mean() / protein[cytoplasm].mean())
            cvs.append(protein[cytoplasm].std() / protein[cytoplasm].mean())
    return {"nuc_cyto": float(np.median(ratios)), "rim": float(np.median(rims)), "cv": float(np.median(cvs))}


@pytest.fixture(scope="module")
def protein_features() -> dict[str, dict[str, float]]:
    compounds = ["DMSO", "NUC-1", "NUC-2", "CYT-1", "CYT-2", "MEM-1", "MEM-2", "VES-1", "VES-2"]
    return {c: _protein_features(c) for c in compounds}


def test_nuclear_and_cytosolic_compounds_differ_and_replicate_their_moa(protein_features):
    f = {c: np.log(v["nuc_cyto"]) for c, v in protein_features.items()}
    assert f["NUC-1"] > np.log(3.0) and f["NUC-2"] > np.log(3.0)
    assert f["CYT-1"] < np.log(0.5) and f["CYT-2"] < np.log(0.5)
    assert f["CYT-1"] < f["DMSO"] < f["NUC-1"]  # the DMSO baseline is diffuse cytosolic + nuclear
    between = f["NUC-1"] - f["CYT-1"]
    assert abs(f["NUC-1"] - f["NUC-2"]) < between / 3
    assert abs(f["CYT-1"] - f["CYT-2"]) < between / 3


def test_membrane_and_punctate_compounds_are_recognisable(protein_features):
    rim = {c: v["rim"] for c, v in protein_features.items()}
    cv = {c: v["cv"] for c, v in protein_features.items()}
    assert min(rim["MEM-1"], rim["MEM-2"]) > 2.0 * max(rim["CYT-1"], rim["NUC-1"], rim["VES-1"])
    assert min(cv["VES-1"], cv["VES-2"]) > 2.0 * max(cv["CYT-1"], cv["CYT-2"], cv["DMSO"])


def test_every_hpa_pattern_renders_and_compounds_of_a_moa_share_it():
    table = phenotypes(HPA)
    for moa in HPA.moas:
        names = [moa.compound(j)[0] for j in range(3)]
        assert {table[n].pattern for n in names} == {moa.pattern}
        assert len({(table[n].strength, table[n].intensity, table[n].size) for n in names}) == 3
    assert {m.pattern for m in HPA.moas} | {"baseline"} == set(synthetic.HPA_PATTERNS)
    geometry = synthetic.layout_cells((160, 160), 3, np.random.default_rng(0), radius_px=(40, 60))
    for pattern in synthetic.HPA_PATTERNS:
        signal = synthetic.hpa_field(geometry, synthetic.Phenotype(pattern), 0.32, np.random.default_rng(1))
        assert signal.shape == (4, 160, 160) and np.isfinite(signal).all()
        assert signal[3][geometry.labels > 0].mean() > 5 * signal[3][geometry.labels == 0].mean()


@pytest.mark.slow
def test_cellpainting_layout_and_phenotypes():
    assert CELLPAINTING.channels == ("DNA", "ER", "RNA", "AGP", "Mito")
    assert CELLPAINTING.pixel_size == 0.598
    dmso, cells, nuclei = _field(CELLPAINTING, "DMSO", 1)
    assert dmso.shape == (5, 384, 384) and dmso.dtype == np.uint16
    inner = np.setdiff1d(np.unique(cells), np.concatenate([[0], cells[0], cells[-1], cells[:, 0], cells[:, -1]]))
    diameter = 2.0 * np.sqrt(ndi.sum(cells > 0, cells, inner) * 0.598**2 / np.pi)
    assert 13.0 < np.median(diameter) < 30.0
    assert 25 <= np.unique(cells[cells > 0]).size <= 40

    def nucleus_area(compound):
        _, c, n = _field(CELLPAINTING, compound, 2)
        return ndi.sum(n > 0, n, np.unique(n[n > 0])).mean()

    assert nucleus_area("CDK-1") > 1.5 * nucleus_area("DMSO")

    def cytoplasm_mean(compound, channel):
        image, c, n = _field(CELLPAINTING, compound, 3)
        plane = image[channel].astype(float) - np.median(image[channel][c == 0])
        return plane[(c > 0) & (n == 0)].mean()

    assert cytoplasm_mean("ERS-1", 1) > 1.5 * cytoplasm_mean("DMSO", 1)  # ER stress swells the ER
    assert cytoplasm_mean("POL-1", 2) < 0.8 * cytoplasm_mean("DMSO", 2)  # less cytoplasmic RNA

    def mito_length_px(compound):
        """Median major axis of the Otsu-thresholded mitochondria objects in the cytoplasm."""
        image, c, n = _field(CELLPAINTING, compound, 4)
        plane = image[4].astype(float)
        cytoplasm = (c > 0) & (n == 0)
        objects = cc_label((plane > threshold_otsu(plane[cytoplasm])) & cytoplasm)
        return np.median([r.axis_major_length for r in regionprops(objects) if r.area >= 3])

    assert mito_length_px("UNC-1") < 0.6 * mito_length_px("DMSO")  # fragmented mitochondria


# ---------------------------------------------------------------------------------------------------
# screen geometries: JUMP Cell Painting and HPA confocal fields


def test_geometries_name_the_screen_layouts():
    assert layout_for() is HPA and layout_for(cellpainting=True) is CELLPAINTING
    assert layout_for("jump") is JUMP and layout_for("jump", cellpainting=True) is JUMP
    assert layout_for("hpa") is HPA_CONFOCAL
    assert (JUMP.field_size, JUMP.pixel_size, JUMP.fields_per_well, JUMP.cells_per_field) == (1080, 0.598, 9, 250)
    assert JUMP.channels == ("DNA", "ER", "RNA", "AGP", "Mito")
    assert (HPA_CONFOCAL.field_size, HPA_CONFOCAL.pixel_size, HPA_CONFOCAL.fields_per_well,
            HPA_CONFOCAL.cells_per_field) == (2048, 0.08, 4, 20)
    assert HPA_CONFOCAL.channels == HPA.channels
    with pytest.raises(ConfigError, match="geometry must be one of 'demo', 'jump', 'hpa'"):
        layout_for("cpg0016")
    with pytest.raises(ConfigError, match="use geometry 'jump' for Cell Painting"):
        layout_for("hpa", cellpainting=True)


def _equivalent_diameters_um(labels: np.ndarray, pixel_size: float) -> np.ndarray:
    areas = np.bincount(labels.ravel())[1:]
    return 2.0 * np.sqrt(areas[areas > 0] * pixel_size**2 / np.pi)


@pytest.fixture(scope="module")
def jump_field():
    """One full-size JUMP-geometry DMSO field: (image, cells, nuclei)."""
    effects = PlateEffects.draw(JUMP, JUMP.field_size, seed=0, plate_index=0)
    return synthesize_field(JUMP, phenotypes(JUMP)["DMSO"], effects, np.random.default_rng([0, 2, 0, 0, 0]),
                            field_size=JUMP.field_size, cells_per_field=JUMP.cells_per_field)


@pytest.mark.slow
def test_jump_fields_have_jump_cells(jump_field):
    image, cells, nuclei = jump_field
    assert image.shape == (5, 1080, 1080) and image.dtype == np.uint16
    assert 240 <= cells.max() <= 250
    # U2OS-like: nuclei 12-20 um and cells of about 37 um covering most of the field (0.598 um/px)
    assert 12.0 < np.median(_equivalent_diameters_um(nuclei, 0.598)) < 20.0
    assert 28.0 < np.median(_equivalent_diameters_um(cells, 0.598)) < 45.0
    assert 0.5 < (cells > 0).mean() < 0.85
    # confluent: most cells share a border with a neighbour
    pairs = set()
    for a, b in ((cells[:, :-1], cells[:, 1:]), (cells[:-1], cells[1:])):
        shared = (a > 0) & (b > 0) & (a != b)
        pairs |= {(int(x), int(y)) for x, y in zip(a[shared], b[shared])}
    touching = {v for pair in pairs for v in pair}
    assert len(touching) > 0.6 * cells.max()


@pytest.mark.slow
def test_jump_er_and_rna_images_share_signal_like_jumps(jump_field):
    image, cells, _ = jump_field
    inside = cells > 0
    channels = {name: image[i][inside].astype(float) for i, name in enumerate(JUMP.channels)}
    r = np.corrcoef([channels["ER"], channels["RNA"], channels["AGP"], channels["DNA"]])
    assert r[0, 1] > 0.85  # concanavalin A and SYTO 14 bleed into each other's channel
    assert r[0, 1] > r[0, 2] + 0.1 and r[0, 1] > r[0, 3] + 0.3
    background = np.median(image[:, ~inside], axis=1)
    signal = np.percentile(image[:, inside], 99, axis=1)
    assert np.all(signal > 8 * background)  # a bright, well-exposed widefield screen


def _pattern_cover(render, pixel_size: float, pattern: str) -> float:
    """Fraction of the cytoplasm where the protein channel passes half its 99.5th percentile."""
    scale = 0.32 / pixel_size
    geometry = synthetic.layout_cells((int(320 * scale),) * 2, 3, np.random.default_rng(5),
                                      radius_px=(45 * scale, 60 * scale))
    signal = render(geometry, synthetic.Phenotype(pattern), pixel_size, np.random.default_rng(6))[3]
    cytoplasm = (geometry.labels > 0) & (geometry.nuclei == 0)
    return float((signal[cytoplasm] > 0.5 * np.percentile(signal[cytoplasm], 99.5)).mean())


@pytest.mark.slow
@pytest.mark.parametrize("pattern", ["mitochondria", "vesicles"])
def test_confocal_patterns_keep_their_density_per_square_micrometre(pattern):
    demo = _pattern_cover(synthetic.hpa_field, 0.32, pattern)
    confocal = _pattern_cover(synthetic.hpa_confocal_field, 0.08, pattern)
    assert 0.0 < demo < 0.5
    assert 0.5 < confocal / demo < 2.0


@pytest.mark.slow
def test_hpa_confocal_fields_have_hpa_cells():
    effects = PlateEffects.draw(HPA_CONFOCAL, 1024, seed=0, plate_index=0)
    image, cells, nuclei = synthesize_field(HPA_CONFOCAL, phenotypes(HPA_CONFOCAL)["MIT-1"], effects,
                                            np.random.default_rng(2), field_size=1024, cells_per_field=5)
    assert image.shape == (4, 1024, 1024) and cells.max() == 5
    inner = np.setdiff1d(np.unique(cells), np.concatenate([[0], cells[0], cells[-1], cells[:, 0], cells[:, -1]]))
    diameters = _equivalent_diameters_um(np.where(np.isin(cells, inner), cells, 0), 0.08)
    assert np.all((diameters > 20.0) & (diameters < 50.0)), diameters  # about 380 px at 0.08 um/px
    assert 10.0 < np.median(_equivalent_diameters_um(nuclei, 0.08)) < 20.0


@pytest.mark.slow
def test_plates_without_labels_and_from_several_processes_are_the_same(tmp_path):
    kwargs = {"n_plates": 1, "n_wells": 4, "n_fields": 2, "field_size": 128, "cells_per_field": 6,
              "geometry": "jump", "labels": False, "seed": 1}
    one = make_demo_plate(tmp_path / "one", **kwargs)[0]
    two = make_demo_plate(tmp_path / "two", processes=2, **kwargs)[0]
    validate_plate(two)
    plate = open_plate(two)
    assert plate.name == "jump-plate-1" and plate.pixel_size == pytest.approx((0.598, 0.598))
    assert plate.fields("A01") == ["0", "1"] and plate.label_names("A01", "1") == []
    a, b = _arrays(one), _arrays(two)
    assert len(a) == 4 * 2 * 2  # wells x fields x image levels, no label images
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
    labelled = make_demo_plate(tmp_path / "labelled", **(kwargs | {"labels": True}))[0]
    np.testing.assert_array_equal(open_plate(labelled).read_field("A02", "1"), plate.read_field("A02", "1"))


# ---------------------------------------------------------------------------------------------------
# platemap design


@pytest.mark.parametrize(("n_plates", "n_wells"), [(2, 24), (1, 24), (3, 12), (2, 96), (1, 4), (2, 120)])
def test_platemap_design_has_controls_replicates_and_shuffled_positions(n_plates, n_wells):
    design = design_platemap(HPA, n_plates=n_plates, n_wells=n_wells, seed=0)
    assert list(design.columns) == ["plate", "well", "compound", "moa", "control_type"]
    assert len(design) == n_plates * n_wells
    assert list(design["plate"].unique()) == [f"demo-plate-{p + 1}" for p in range(n_plates)]
    for _, plate in design.groupby("plate"):
        assert list(plate["well"]) == plate_wells(n_wells)
        assert (plate["compound"] == "DMSO").sum() >= 2
    assert ((design["compound"] == "DMSO") == (design["control_type"] == "negcon")).all()
    assert set(design["control_type"]) == {"negcon", "trt"}
    treated = design[design["control_type"] == "trt"]
    assert treated.groupby("compound").size().min() >= 2
    # every compound keeps one MoA, and MoAs have several compounds once there is room for them
    assert (treated.groupby("compound")["moa"].nunique() == 1).all()
    if len(treated) >= 16:
        assert treated.groupby("moa")["compound"].nunique().min() >= 2
    if n_plates > 1:
        per_plate = treated.groupby(["compound", "plate"]).size().unstack(fill_value=0)
        assert (per_plate > 0).sum(axis=1).min() >= 2 or len(treated) < 2 * n_plates  # across plates
        wells = treated.groupby(["compound", "plate"])["well"].apply(frozenset).unstack()
        assert all(len(set(row.dropna())) == row.notna().sum() for _, row in wells.iterrows())
    if n_wells >= 24:
        assert (treated.groupby(["plate", "compound"]).size() >= 2).any()  # replicates within a plate


def test_plate_wells_fill_96_then_384_layouts():
    assert plate_wells(14)[-3:] == ["A12", "B01", "B02"]
    assert plate_wells(96)[-1] == "H12"
    assert plate_wells(100)[23:26] == ["A24", "B01", "B02"]
    assert plate_wells(384)[-1] == "P24"


def test_design_depends_on_the_seed_only():
    a = design_platemap(HPA, n_plates=2, n_wells=24, seed=0)
    pd.testing.assert_frame_equal(a, design_platemap(HPA, n_plates=2, n_wells=24, seed=0))
    assert not a.equals(design_platemap(HPA, n_plates=2, n_wells=24, seed=1))


def test_plate_effects_differ_between_plates():
    first = PlateEffects.draw(HPA, 256, seed=0, plate_index=0)
    second = PlateEffects.draw(HPA, 256, seed=0, plate_index=1)
    assert not np.allclose(first.gain, second.gain)
    for effects in (first, second):
        assert effects.illumination.shape == (4, 256, 256)
        assert effects.illumination.max() <= 1.0 and effects.illumination.min() < 0.9


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_wells": 0}, "n_wells must be 1..384"),
        ({"n_wells": 385}, "n_wells must be 1..384"),
        ({"n_plates": 1, "n_wells": 3}, "at least 2 are needed"),
        ({"version": "0.6"}, "version must be '0.4' or '0.5'"),
        ({"field_size": 32}, "field_size must be at least 64"),
        ({"cells_per_field": 0}, "cells_per_field must be at least 1"),
        ({"processes": 0}, "processes must be a whole number of at least 1"),
        ({"geometry": "jump-cp"}, "geometry must be one of"),
    ],
)
def test_bad_arguments_raise_config_errors(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_demo_plate(tmp_path, **kwargs)


# ---------------------------------------------------------------------------------------------------
# command line


def test_cli_writes_plates_and_platemap(tmp_path, capsys):
    out = tmp_path / "cp"
    code = main(["make-demo-plate", str(out), "--cellpainting", "--plates", "1", "--wells", "4",
                 "--fields", "1", "--size", "128", "--seed", "2"])
    assert code == 0
    assert (out / "demo-cp-plate-1.zarr").is_dir()
    platemap = pd.read_csv(out / "platemap.csv")
    assert len(platemap) == 4 and set(platemap["plate"]) == {"demo-cp-plate-1"}
    plate = open_plate(out / "demo-cp-plate-1.zarr")
    assert plate.channel_names == ["DNA", "ER", "RNA", "AGP", "Mito"]
    assert plate.pixel_size == pytest.approx((0.598, 0.598))
    assert "demo-cp-plate-1.zarr" in capsys.readouterr().out


def test_cli_writes_a_jump_geometry_plate_without_labels(tmp_path, capsys):
    out = tmp_path / "jump"
    code = main(["make-demo-plate", str(out), "--geometry", "jump", "--no-labels", "--plates", "1", "--wells", "4",
                 "--fields", "1", "--size", "96", "--cells", "4"])
    assert code == 0
    plate = open_plate(out / "jump-plate-1.zarr")
    assert plate.channel_names == ["DNA", "ER", "RNA", "AGP", "Mito"]
    assert plate.image("A01", "0").shape == (5, 96, 96)
    assert plate.label_names("A01", "0") == []
    assert "1 plate(s) x 4 wells x 1 fields" in capsys.readouterr().out


def test_cli_reports_bad_arguments_on_one_line(tmp_path, capsys):
    assert main(["make-demo-plate", str(tmp_path), "--wells", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "n_wells must be 1..384" in err
