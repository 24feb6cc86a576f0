"""Segmentation: nuclei and cells on synthetic fields with known truth, filters, and the match scores."""

from __future__ import annotations

import numpy as np
import pytest

from subcell_scale.errors import ChannelMismatchError, ConfigError, PlateFormatError
from subcell_scale.segment import (
    DROP_REASONS,
    SegmentParams,
    filter_cells,
    match_scores,
    resolve_segmentation_channels,
    segment_field,
    segment_nuclei,
)


def synthetic_field(seed: int = 0, size_um: float = 128.0, pixel_size: float = 0.5, n_cells: int = 12,
                    touching: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (cytoplasm, dna) uint16 field with round nuclei in round cells, and both truth label images."""
    rng = np.random.default_rng(seed)
    size = int(round(size_um / pixel_size))
    yy, xx = (np.mgrid[:size, :size] + 0.5) * pixel_size
    centres: list[np.ndarray] = []
    while len(centres) < n_cells:
        c = rng.uniform(10.0, size_um - 10.0, 2)
        if all(np.hypot(*(c - d)) > 18.0 for d in centres):
            centres.append(c)
            if touching:  # a second nucleus 9 um away: the 5-um discs overlap by 1 um
                angle = rng.uniform(0, 2 * np.pi)
                centres.append(c + 9.0 * np.array([np.sin(angle), np.cos(angle)]))
    nuclei = np.zeros((size, size), np.int32)
    cells = np.zeros((size, size), np.int32)
    nearest = np.full((size, size), np.inf)
    for label, (cy, cx) in enumerate(centres, start=1):
        d = np.hypot(yy - cy, xx - cx)
        closest = d < nearest
        nuclei[(d < 5.0) & closest] = label
        cells[(d < 9.0) & closest] = label
        nearest = np.where(closest & (d < 9.0), d, nearest)
    dna = 100 + 1000 * (nuclei > 0) + rng.normal(0, 30, nuclei.shape)
    cyto = 100 + 600 * (cells > 0) + rng.normal(0, 30, cells.shape)
    image = np.stack([cyto, dna]).clip(0, 65535).astype(np.uint16)
    return image, nuclei, cells


def brute_force_scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """F1 at IoU > 0.5 and mean matched IoU by comparing every pair of objects."""
    p_ids = [v for v in np.unique(pred) if v]
    t_ids = [v for v in np.unique(truth) if v]
    ious = []
    for p in p_ids:
        for t in t_ids:
            a, b = pred == p, truth == t
            iou = (a & b).sum() / (a | b).sum()
            if iou > 0.5:
                ious.append(iou)
    f1 = 2 * len(ious) / (len(p_ids) + len(t_ids))
    return f1, float(np.mean(ious)) if ious else 0.0


@pytest.mark.parametrize("pixel_size", [0.5, 0.25])
def test_segment_field_recovers_synthetic_cells_at_any_pixel_size(pixel_size):
    image, nuclei, cells = synthetic_field(pixel_size=pixel_size)
    labels = segment_field(image, ["microtubules", "dna"], (pixel_size, pixel_size))
    assert labels.dtype == np.int32
    scores = match_scores(labels, cells)
    assert scores["f1"] == 1.0
    assert scores["mean_iou"] > 0.85
    # each cell keeps the number of its nucleus
    nuc = segment_nuclei(image[1], pixel_size)
    assert match_scores(nuc, nuclei)["f1"] == 1.0
    inside = nuc > 0
    assert np.array_equal(labels[inside], nuc[inside])


def test_fine_fields_are_segmented_on_a_binned_grid():
    # 0.09 um/px with a ragged size: binned x4 to 0.36 um/px, labels repeated back to every pixel
    image, _, cells = synthetic_field(pixel_size=0.09, size_um=80.0, n_cells=6)
    assert image.shape[1] % 4 != 0
    labels = segment_field(image, ["er", "dna"], 0.09)
    assert labels.shape == cells.shape and labels.dtype == np.int32
    scores = match_scores(labels, cells)
    assert scores["f1"] == 1.0 and scores["mean_iou"] > 0.85
    blocks = labels[:labels.shape[0] // 4 * 4, :labels.shape[1] // 4 * 4].reshape(
        labels.shape[0] // 4, 4, labels.shape[1] // 4, 4)
    assert (blocks == blocks[:, :1, :, :1]).all()  # constant on each 4 x 4 block
    full = segment_field(image, ["er", "dna"], 0.09, work_pixel_size_um=0.09)
    assert match_scores(full, cells)["f1"] == 1.0
    assert match_scores(labels, full)["mean_iou"] > 0.9


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
@pytest.mark.parametrize(("shape", "factor"), [((2048, 2048), 5), ((203, 157), 4), ((9, 7), 3), ((40, 40), 15)])
def test_binning_is_the_exact_block_mean_of_the_edge_padded_plane(dtype, shape, factor):
    from subcell_scale.segment import _bin_mean

    rng = np.random.default_rng(factor)
    if np.dtype(dtype).kind == "f":
        plane = rng.normal(1000.0, 300.0, shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        plane = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
        plane[-1, -1] = plane[0, 0] = info.max  # full-scale pixels, in the ragged corner too
    # the definition: pad the ragged edge with its last pixels, float32 mean of each block
    padded = np.pad(plane.astype(np.float32), ((0, -shape[0] % factor), (0, -shape[1] % factor)), mode="edge")
    expected = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).mean(axis=(1, 3))
    binned = _bin_mean(plane, factor)
    assert binned.dtype == np.float32
    assert binned.tobytes() == expected.tobytes()  # bit for bit: segmentation is unchanged by the fast path


def test_touching_nuclei_are_split():
    image, nuclei, _ = synthetic_field(seed=3, touching=True, n_cells=8)
    # every nucleus overlaps a partner: one Otsu component per pair unless the watershed splits them
    from scipy import ndimage as ndi

    assert ndi.label(nuclei > 0)[1] <= nuclei.max() // 2
    pred = segment_nuclei(image[1], 0.5, None)
    assert match_scores(pred, nuclei)["f1"] >= 0.9


def test_local_threshold_handles_vignetting():
    image, nuclei, _ = synthetic_field(seed=1)
    size = image.shape[-1]
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    dark = (image[1] * np.exp(-(yy**2 + xx**2) / 0.1)).astype(np.uint16)  # corners at 8 %
    otsu = segment_nuclei(dark, 0.5, SegmentParams(nucleus_threshold="otsu"))
    local = segment_nuclei(dark, 0.5, SegmentParams(nucleus_threshold="local"))
    assert match_scores(otsu, nuclei)["f1"] < 0.8  # one global threshold loses the dim corners
    assert match_scores(local, nuclei)["f1"] >= 0.95


def test_without_cytoplasm_channel_cells_are_grown_nuclei():
    image, nuclei, _ = synthetic_field(seed=2)
    labels = segment_field(image[1:], ["DNA"], 0.5, max_cell_radius_um=6.0)
    grown = labels > 0
    assert grown.sum() > (nuclei > 0).sum()
    assert match_scores(labels, nuclei)["n_predicted"] == nuclei.max()


def test_channel_resolution_by_name():
    assert resolve_segmentation_channels(["microtubules", "er", "dna", "protein"]) == (2, [0, 1])
    assert resolve_segmentation_channels(["DNA", "ER", "RNA", "AGP", "Mito"]) == (0, [1, 2, 3])
    assert resolve_segmentation_channels(["a", "b", "c"], "C", ["a"]) == (2, [0])
    with pytest.raises(ChannelMismatchError, match="no nuclear channel"):
        resolve_segmentation_channels(["protein", "er"])
    with pytest.raises(ChannelMismatchError, match="'tubulin' is not in"):
        resolve_segmentation_channels(["dna", "er"], cell_channel="tubulin")


def test_bad_input_names_the_problem():
    image, _, _ = synthetic_field()
    with pytest.raises(ConfigError, match=r"segmentation: unknown parameter\(s\)"):
        segment_field(image, ["er", "dna"], 0.5, sigma=3)
    with pytest.raises(ConfigError, match="nucleus_sigma_um must be a number, got 'wide'"):
        segment_field(image, ["er", "dna"], 0.5, nucleus_sigma_um="wide")
    with pytest.raises(ConfigError, match="max_cell_radius_um must be a positive number"):
        segment_field(image, ["er", "dna"], 0.5, max_cell_radius_um=0)
    with pytest.raises(ChannelMismatchError, match="2 channels but 3 names"):
        segment_field(image, ["er", "dna", "x"], 0.5)
    with pytest.raises(PlateFormatError, match=r"\(c, y, x\)"):
        segment_field(image[0], ["er"], 0.5)
    with pytest.raises(ConfigError, match="pixel_size"):
        segment_field(image, ["er", "dna"], (0.5, -1))


def test_filter_cells_drops_by_reason_in_square_micrometres():
    labels = np.zeros((40, 60), np.int32)
    labels[0:5, 10:15] = 1  # touches the top edge, and small
    labels[10:12, 10:12] = 2  # 4 px
    labels[10:20, 30:40] = 3  # 100 px
    labels[22:38, 5:45] = 7  # 640 px
    labels[30:40, 50:55] = 9  # bottom edge
    pixel_size = (0.5, 2.0)  # 1 um2 per pixel
    kept, dropped = filter_cells(labels, pixel_size, min_area_um2=10, max_area_um2=600)
    assert list(dropped) == list(DROP_REASONS)
    assert dropped == {"border": [1, 9], "too_small": [2], "too_large": [7]}
    assert np.array_equal(np.unique(kept), [0, 3])
    assert np.array_equal(kept == 3, labels == 3)
    kept, dropped = filter_cells(labels, 0.5, min_area_um2=None, max_area_um2=None, drop_border=False)
    assert np.array_equal(kept, labels)
    assert dropped == {"border": [], "too_small": [], "too_large": []}
    # 0.25 um2 per pixel: cell 3 is 25 um2, cell 7 is 160 um2
    _, dropped = filter_cells(labels, 0.5, min_area_um2=30, max_area_um2=1000, drop_border=False)
    assert dropped["too_small"] == [1, 2, 3, 9]


@pytest.mark.parametrize("offset", [0, 2**31 - 100])  # small ids (a lookup table), ids too large for one
def test_filter_cells_is_the_same_whatever_the_label_values(offset):
    rng = np.random.default_rng(3)
    base = rng.integers(0, 40, (50, 70)).astype(np.int64)
    labels = np.where(base > 0, base + offset, 0)
    pixel_size = 1.0
    kept, dropped = filter_cells(labels, pixel_size, min_area_um2=85, max_area_um2=95, drop_border=False)
    gone = [v for reason in DROP_REASONS for v in dropped[reason]]
    assert gone and len(gone) < 39
    np.testing.assert_array_equal(kept, np.where(np.isin(labels, gone), 0, labels))
    small, _ = filter_cells(base, pixel_size, min_area_um2=85, max_area_um2=95, drop_border=False)
    np.testing.assert_array_equal(kept, np.where(small > 0, small + offset, 0))


def test_filter_cells_rejects_inconsistent_bounds():
    with pytest.raises(ConfigError, match="larger than"):
        filter_cells(np.zeros((4, 4), np.int32), 1.0, min_area_um2=10, max_area_um2=5)


def test_match_scores_agree_with_brute_force():
    rng = np.random.default_rng(7)
    _, _, truth = synthetic_field(seed=5)
    # perturb: shift, merge two cells, delete one, add a spurious blob
    pred = np.roll(truth, (2, -1), axis=(0, 1)).copy()
    ids = [v for v in np.unique(truth) if v]
    pred[pred == ids[1]] = ids[0]
    pred[pred == ids[2]] = 0
    pred[5:15, 5:15] = 99
    pred = np.where(rng.random(pred.shape) < 0.02, 0, pred)
    scores = match_scores(pred, truth)
    f1, mean_iou = brute_force_scores(pred, truth)
    assert scores["f1"] == pytest.approx(f1)
    assert scores["mean_iou"] == pytest.approx(mean_iou)
    assert scores["n_true"] == len(ids)
    assert match_scores(truth, truth) == {"f1": 1.0, "precision": 1.0, "recall": 1.0, "mean_iou": 1.0,
                                          "n_true": len(ids), "n_predicted": len(ids), "n_matched": len(ids)}


# --- whole plates: the demo plates carry ground-truth "cells" labels ---------------------------------


@pytest.fixture(scope="session")
def demo_plates(tmp_path_factory):
    """One HPA-like and one Cell Painting plate, 4 wells x 1 field of 384 px each (the smallest valid design)."""
    from subcell_scale.io import make_demo_plate

    root = tmp_path_factory.mktemp("segment_demo")
    hpa = make_demo_plate(root / "hpa", n_plates=1, n_wells=4, n_fields=1, field_size=384, seed=3)[0]
    cp = make_demo_plate(root / "cp", n_plates=1, n_wells=4, n_fields=1, field_size=384, seed=3,
                         cellpainting=True)[0]
    return {"hpa": hpa, "cellpainting": cp}


@pytest.mark.parametrize(("layout", "min_f1", "min_iou"), [("hpa", 0.9, 0.7), ("cellpainting", 0.9, 0.7)])
def test_segment_plate_writes_labels_that_match_the_ground_truth(demo_plates, layout, min_f1, min_iou):
    from subcell_scale.io import open_plate
    from subcell_scale import segment_plate

    summary = segment_plate(demo_plates[layout], label_name="classical")
    plate = open_plate(demo_plates[layout])
    sites = [(w, f) for w in plate.wells for f in plate.fields(w)]
    assert (summary["n_fields"], summary["done"], summary["failed"]) == (len(sites), len(sites), 0)
    counted = 0
    for (well, field), record in zip(sites, summary["fields"], strict=True):
        assert (record["well"], record["field"], record["status"]) == (well, field, "done")
        assert "classical" in plate.label_names(well, field)
        predicted = plate.read_labels(well, field, "classical")
        scores = match_scores(predicted, plate.read_labels(well, field, "cells"))
        assert scores["f1"] >= min_f1 and scores["mean_iou"] >= min_iou, scores
        assert record["n_cells"] == scores["n_predicted"]
        counted += record["n_cells"]
    assert summary["n_cells"] == counted
    # a second run keeps what is there; overwrite segments again to the same labels
    again = segment_plate(demo_plates[layout], label_name="classical")
    assert again["skipped"] == len(sites) and again["n_cells"] == counted
    redo = segment_plate(demo_plates[layout], label_name="classical", overwrite=True)
    assert redo["done"] == len(sites)
    np.testing.assert_array_equal(open_plate(demo_plates[layout]).read_labels(*sites[-1], "classical"), predicted)


def test_segment_plate_on_a_local_cluster_equals_in_process(demo_plates):
    from distributed import Client, LocalCluster

    from subcell_scale.io import open_plate
    from subcell_scale import segment_plate

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        summary = segment_plate(demo_plates["hpa"], label_name="on_cluster", client=client)
    assert summary["done"] == summary["n_fields"] == 4
    local = segment_plate(demo_plates["hpa"], label_name="in_process")
    plate = open_plate(demo_plates["hpa"])
    for well in plate.wells:
        np.testing.assert_array_equal(plate.read_labels(well, "0", "on_cluster"),
                                      plate.read_labels(well, "0", "in_process"))
    assert summary["n_cells"] == local["n_cells"]


def test_segment_plate_reports_an_unreadable_field_and_checks_options_first(demo_plates, tmp_path):
    import shutil

    from subcell_scale import segment_plate

    plate = tmp_path / "broken.zarr"
    shutil.copytree(demo_plates["hpa"], plate)
    from subcell_scale.io import open_plate

    field = plate / open_plate(plate).well_path("A01") / "0"
    chunk = next(p for p in sorted(field.rglob("*")) if p.is_file() and not p.name.startswith((".z", "zarr.json"))
                 and "labels" not in p.relative_to(field).parts)
    chunk.write_bytes(b"not a chunk")
    summary = segment_plate(plate, label_name="x")
    assert (summary["done"], summary["failed"]) == (3, 1)
    failed = next(r for r in summary["fields"] if r["status"] == "failed")
    assert failed["well"] == "A01" and "A01/0" in failed["error"]
    with pytest.raises(ChannelMismatchError, match="'GFP' is not in"):
        segment_plate(plate, cell_channel="GFP")
    with pytest.raises(ConfigError, match=r"segmentation: unknown parameter\(s\)"):
        segment_plate(plate, nucleus_sigma=2)


@pytest.mark.slow
def test_segment_command(demo_plates, tmp_path, capsys):
    import shutil
    import subprocess

    from subcell_scale.cli import main
    from subcell_scale.io import open_plate

    plate = tmp_path / "cli.zarr"
    shutil.copytree(demo_plates["hpa"], plate)
    out = subprocess.run(["subcell-scale", "segment", str(plate), "--label-name", "cli", "--channel-nucleus", "dna",
                          "--set", "nucleus_min_distance_um=6"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "4 fields segmented, 0 kept, 0 failed" in out.stdout
    assert "cli" in open_plate(plate).label_names("A02", "0")
    assert main(["segment", str(plate), "--label-name", "cli"]) == 0
    assert "0 fields segmented, 4 kept, 0 failed" in capsys.readouterr().out
    assert main(["segment", str(plate), "--channel-cell", "tubulin"]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "'tubulin' is not in" in err


def test_li_threshold_keeps_more_of_the_dim_confocal_cytoplasm(demo_plates):
    from subcell_scale.io import open_plate

    plate = open_plate(demo_plates["hpa"])
    otsu_iou, li_iou, otsu_area, li_area = [], [], 0, 0
    for well in plate.wells[:2]:
        image, truth = plate.read_field(well, "0"), plate.read_labels(well, "0", "cells")
        otsu = segment_field(image, plate.channel_names, plate.pixel_size)
        li = segment_field(image, plate.channel_names, plate.pixel_size, cell_threshold="li")
        otsu_iou.append(match_scores(otsu, truth)["mean_iou"])
        li_iou.append(match_scores(li, truth)["mean_iou"])
        otsu_area += int((otsu > 0).sum())
        li_area += int((li > 0).sum())
    assert li_area > otsu_area
    assert np.mean(li_iou) > np.mean(otsu_iou)
    with pytest.raises(ConfigError, match="cell_threshold must be"):
        segment_field(image, plate.channel_names, plate.pixel_size, cell_threshold="triangle")


@pytest.mark.slow
def test_jump_sized_nuclei_need_a_split_distance_to_match():
    """On a JUMP-geometry field (U2OS-like 12-20 um nuclei, confluent cells, 0.598 um/px) the default 5 um
    split distance cuts elongated nuclei in two; 10 um recovers the cells."""
    from subcell_scale.io.demo import JUMP, PlateEffects, phenotypes, synthesize_field

    effects = PlateEffects.draw(JUMP, 540, seed=0, plate_index=0)
    image, cells, _ = synthesize_field(JUMP, phenotypes(JUMP)["DMSO"], effects, np.random.default_rng(2),
                                       field_size=540, cells_per_field=62)
    default = match_scores(segment_field(image, JUMP.channels, JUMP.pixel_size), cells)
    wider = match_scores(segment_field(image, JUMP.channels, JUMP.pixel_size, nucleus_min_distance_um=10.0), cells)
    assert default["n_predicted"] > 1.1 * default["n_true"]  # over-split nuclei make extra cells
    assert wider["f1"] >= 0.9 and wider["mean_iou"] >= 0.75, wider
    assert wider["f1"] > default["f1"] + 0.1
