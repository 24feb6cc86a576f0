"""Plates written by other NGFF implementations, with label images added after they were written.

Writers: ngff-zarr (NGFF 0.4 and 0.5; it consolidates the metadata of every image it writes),
ome-zarr-py with the plate then consolidated by the user (``zarr.consolidate_metadata``, the usual
step before uploading to object storage), and iohub (TCZYX, upper-case axis names, the label listing
kept in the image group; written once by ``tests/data/iohub/make_iohub_plate.py`` because iohub does
not install beside zarr 3 on Python 3.11). For each: label images written afterwards by another tool
are seen, subcell-scale's own ``write_labels`` and ``segment_plate`` work on the plate, and other
readers (zarr with its consolidated listings, ome-zarr-py, iohub's layout) see what was written.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader
from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata
from ome_zarr.writer import write_labels as ome_zarr_write_labels
from ome_zarr_models.common.omero import Omero
from skimage.draw import disk
from zarr.errors import ZarrUserWarning

from subcell_scale.io import open_plate, validate_plate, write_labels
from subcell_scale.io.consolidated import quiet_consolidation, repair_consolidated
from subcell_scale import segment_plate

IOHUB_PLATE = Path(__file__).parent / "data" / "iohub" / "iohub-0.3.11.zarr"
CHANNELS = ["DNA", "Protein"]
SHAPE = (2, 64, 56)  # c, y, x
WELLS = {"A01": ("A", "1"), "B02": ("B", "2")}


def _image(seed: int) -> np.ndarray:
    """Two channels of noise with three bright nuclei in DNA, so segmentation finds cells."""
    rng = np.random.default_rng(seed)
    image = rng.integers(100, 300, SHAPE, dtype=np.uint16)
    for centre in ((16, 14), (40, 20), (30, 42)):
        rr, cc = disk(centre, 7, shape=SHAPE[1:])
        image[:, rr, cc] += np.array([3000, 800], np.uint16)[:, None]
    return image


IMAGES = {well: _image(i) for i, well in enumerate(WELLS)}
ADDED = np.zeros(SHAPE[1:], np.uint32)  # the label image another tool adds afterwards
ADDED[5:25, 5:25] = 3
ADDED[35:60, 30:50] = 8


def _ngff_zarr(path: Path, version: str) -> None:
    import ngff_zarr as nz

    metadata = nz.Plate(rows=[nz.PlateRow(name=r) for r in "AB"], columns=[nz.PlateColumn(name=c) for c in "12"],
                        wells=[nz.PlateWell(path=f"{r}/{c}", rowIndex="AB".index(r), columnIndex="12".index(c))
                               for r, c in WELLS.values()],
                        name="foreign", field_count=1, version=version)
    with nz.HCSPlateWriter(str(path), metadata) as writer:
        for well, (row, column) in WELLS.items():
            image = nz.to_ngff_image(IMAGES[well], dims=["c", "y", "x"], scale={"y": 0.5, "x": 0.5},
                                     axes_units={"y": "micrometer", "x": "micrometer"}, channel_names=CHANNELS)
            multiscales = nz.to_multiscales(image, scale_factors=[2])
            multiscales.metadata.omero = nz.Omero(channels=[
                nz.OmeroChannel(color="FFFFFF", window=nz.OmeroWindow(min=0, max=65535, start=0, end=4000), label=c)
                for c in CHANNELS])
            writer.write_well_image(multiscales=multiscales, row_name=row, column_name=column, field_index=0)


def _ome_zarr_consolidated(path: Path, version: str) -> None:
    fmt = FormatV05() if version == "0.5" else FormatV04()
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    write_plate_metadata(root, ["A", "B"], ["1", "2"], [f"{r}/{c}" for r, c in WELLS.values()], fmt=fmt,
                         name="foreign", field_count=1)
    omero = Omero.model_validate({
        "channels": [{"label": c, "color": "FFFFFF", "active": True, "coefficient": 1, "family": "linear",
                      "inverted": False, "window": {"min": 0, "max": 65535, "start": 0, "end": 4000}}
                     for c in CHANNELS],
        "rdefs": {"defaultT": 0, "defaultZ": 0, "model": "color"}})
    for well, (row, column) in WELLS.items():
        group = root.require_group(row).require_group(column)
        write_well_metadata(group, [{"path": "0"}], fmt=fmt)
        write_image(image=IMAGES[well], group=group.require_group("0"), axes="cyx", scale_factors=[2], fmt=fmt,
                    storage_options={"chunks": (1, 32, 32)}, coordinateTransformations=[
                        [{"type": "scale", "scale": [1.0, 0.5 * 2**i, 0.5 * 2**i]}] for i in range(2)],
                    omero=omero)
    with quiet_consolidation():
        zarr.consolidate_metadata(str(path), zarr_format=fmt.zarr_format)


WRITERS = {
    "ngff-zarr-0.5": lambda p: _ngff_zarr(p, "0.5"),
    "ngff-zarr-0.4": lambda p: _ngff_zarr(p, "0.4"),
    "ome-zarr-consolidated-0.5": lambda p: _ome_zarr_consolidated(p, "0.5"),
    "ome-zarr-consolidated-0.4": lambda p: _ome_zarr_consolidated(p, "0.4"),
    "iohub-0.3.11": lambda p: shutil.copytree(IOHUB_PLATE, p),
}


def _listings(path: Path) -> list[str]:
    """Nodes of a plate whose metadata carries a consolidated listing (v3 inline or v2 .zmetadata)."""
    found = [str(p.parent.relative_to(path)) for p in path.rglob(".zmetadata")]
    for doc in path.rglob("zarr.json"):
        if "consolidated_metadata" in json.loads(doc.read_text()):
            found.append(str(doc.parent.relative_to(path)))
    return sorted(found)


@pytest.fixture(scope="module", params=list(WRITERS))
def written(request, tmp_path_factory) -> tuple[str, Path]:
    path = tmp_path_factory.mktemp(request.param) / "foreign.zarr"
    WRITERS[request.param](path)
    return request.param, path


@pytest.fixture
def plate_with_added_labels(written, tmp_path) -> tuple[str, Path]:
    """A copy of the plate, where another tool then adds the label image "added" to field A01/0.

    ome-zarr-py writes it through a group opened from its own metadata (with zarr's default, the
    consolidated listing, ome-zarr-py cannot add labels to these plates at all), so the plate's
    consolidated listings go stale. The iohub plate had its "nuclei" added by iohub in a second session.
    """
    writer, source = written
    path = tmp_path / "plate.zarr"
    shutil.copytree(source, path)
    if not writer.startswith("iohub"):
        fmt = FormatV05() if zarr.open_group(str(path), mode="r").metadata.zarr_format == 3 else FormatV04()
        field = zarr.open_group(str(path), path="A/1/0", mode="r+", use_consolidated=False)
        ome_zarr_write_labels(ADDED, field, name="added", axes="yx", fmt=fmt, scale_factors=[2], scaler=None,
                              storage_options={"chunks": (32, 32)})
    return writer, path


def test_the_writers_leave_consolidated_listings(written):
    writer, path = written
    expected = {"ngff-zarr": ["A/1/0", "B/2/0"], "ome-zarr-consolidated": ["."], "iohub": []}
    assert _listings(path) == expected[writer.rsplit("-", 1)[0]]


def test_labels_added_afterwards_are_read_from_disk(plate_with_added_labels):
    writer, path = plate_with_added_labels
    plate = open_plate(path)
    assert plate.wells == list(WELLS)
    assert plate.channel_names == CHANNELS
    name = "nuclei" if writer.startswith("iohub") else "added"
    assert plate.label_names("A01", "0") == [name]
    labels = plate.read_labels("A01", "0", name)
    if writer.startswith("iohub"):
        raw = zarr.open_array(str(path / "A/1/0/labels/nuclei/0"), mode="r")[0, 0]
        assert sorted(np.unique(labels)) == [0, 4, 7]
        np.testing.assert_array_equal(labels, raw)
        np.testing.assert_array_equal(plate.read_field("A01", "0"),
                                      zarr.open_array(str(path / "A/1/0/0"), mode="r")[0, :, 0])
    else:
        np.testing.assert_array_equal(labels, ADDED)
        np.testing.assert_array_equal(plate.read_field("A01", "0"), IMAGES["A01"])
    assert plate.labels("A01", "0", name).shape == plate.image("A01", "0").shape[1:]


def test_write_labels_twice_and_every_reader_sees_them(plate_with_added_labels, caplog):
    writer, path = plate_with_added_labels
    before = _listings(path)
    plate = open_plate(path)
    first = plate.label_names("A01", "0")
    cells = np.zeros(SHAPE[1:] if not writer.startswith("iohub") else (48, 40), np.uint32)
    cells[10:30, 12:34] = 5
    caplog.set_level(logging.INFO, logger="subcell_scale")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZarrUserWarning)  # refreshing a listing shows no zarr warning
        write_labels(plate, "A01", "0", "cells", cells)
        write_labels(plate, "A01", "0", "cells", cells * 2)  # replaced: the second run of a segmentation
    again = open_plate(path)
    assert again.label_names("A01", "0") == [*first, "cells"]
    np.testing.assert_array_equal(again.read_labels("A01", "0", "cells"), cells * 2)
    np.testing.assert_array_equal(again.read_labels("A01", "0", first[0]), plate.read_labels("A01", "0", first[0]))

    # listings inside the field are rebuilt; a listing of the whole plate is dropped, with a warning
    if writer.startswith("ngff-zarr"):
        assert _listings(path) == before
    elif writer.startswith("ome-zarr"):
        assert _listings(path) == [] and "removed the consolidated metadata of /" in caplog.text
        validate_plate(path)  # the whole plate, both label images included, is valid NGFF
    # zarr trusting consolidated listings (what other tools do by default) finds the new labels
    field = zarr.open_group(str(path), path="A/1/0", mode="r")
    assert set(field["labels"].group_keys()) == {*first, "cells"}
    label_group = field["labels/cells"]
    attrs = label_group.attrs.asdict()
    level0 = attrs.get("ome", attrs)["multiscales"][0]["datasets"][0]["path"]
    np.testing.assert_array_equal(np.squeeze(label_group[level0][...]), cells * 2)
    # ome-zarr-py's reader lists both label images
    fmt = FormatV05() if writer.endswith(("0.5", "0.3.11")) else FormatV04()
    nodes = list(Reader(parse_url(str(path / "A/1/0"), fmt=fmt))())
    assert {n.zarr.path.rstrip("/").rsplit("/", 1)[-1] for n in nodes if n.first(Label) is not None} == \
        {*first, "cells"}
    if writer.startswith("iohub"):  # iohub's own listing, in the image group, names the new labels too
        ome = json.loads((path / "A/1/0/zarr.json").read_text())["attributes"]["ome"]
        assert ome["labels"]["labels"] == ["nuclei", "cells"]
        assert json.loads((path / "A/1/0/labels/cells/0/zarr.json").read_text())["dimension_names"] == \
            ["T", "C", "Z", "Y", "X"]


def test_segment_plate_then_the_next_run_finds_the_labels(plate_with_added_labels):
    writer, path = plate_with_added_labels
    summary = segment_plate(path, nucleus_channel="DNA", label_name="seg")
    assert (summary["done"], summary["failed"]) == (len(WELLS), 0)
    if not writer.startswith("iohub"):  # iohub's fixture is noise; ours has three nuclei per field
        assert summary["n_cells"] == 3 * len(WELLS)
    plate = open_plate(path)
    assert plate.label_names("A01", "0")[-1] == "seg" and plate.label_names("B02", "0")[-1] == "seg"
    again = segment_plate(path, nucleus_channel="DNA", label_name="seg")
    assert again["skipped"] == len(WELLS) and again["n_cells"] == summary["n_cells"]


def test_repairing_listings_touches_only_stale_ones(tmp_path):
    """A plate without consolidated metadata (the usual case) is left exactly as it was."""
    path = tmp_path / "plain.zarr"
    shutil.copytree(IOHUB_PLATE, path)
    before = {p: p.read_bytes() for p in path.rglob("zarr.json")}
    store = zarr.open_group(str(path), mode="r+").store
    assert repair_consolidated(store, "A/1/0/labels/nuclei") == []
    assert {p: p.read_bytes() for p in path.rglob("zarr.json")} == before


def test_the_consolidation_warning_is_quiet_only_where_the_project_consolidates(tmp_path):
    path = tmp_path / "user.zarr"
    zarr.open_group(str(path), mode="w", zarr_format=3).create_group("a")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_consolidation():
            zarr.consolidate_metadata(str(path))
            with ad.settings.override(zarr_write_format=3):  # anndata consolidates every store it writes
                ad.AnnData(np.zeros((2, 2), np.float32)).write_zarr(tmp_path / "cells.zarr")
            warnings.warn("a user's warning inside the block", UserWarning, stacklevel=1)
        assert not [w for w in caught if issubclass(w.category, ZarrUserWarning)]
        zarr.consolidate_metadata(str(path))  # the user's own call still warns
    assert [w.category for w in caught if issubclass(w.category, ZarrUserWarning)] == [ZarrUserWarning]
    assert "a user's warning inside the block" in [str(w.message) for w in caught]
