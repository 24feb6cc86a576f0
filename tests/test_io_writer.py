"""PlateWriter writes valid NGFF HCS plates (0.4 and 0.5) with exact pixels, pyramids and labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

import ome_zarr_models
from subcell_scale.errors import PlateFormatError, RunDirectoryError, WellNameError
from subcell_scale.io import PlateWriter
from subcell_scale.io.labels import nearest_downsample
from subcell_scale.io.writer import image_pyramid

CHANNELS = ["microtubules", "er", "dna", "protein"]


def _ome(node):
    attrs = node.attrs.asdict()
    return attrs.get("ome", {}) if node.metadata.zarr_format == 3 else attrs


def _field(rng, shape=(4, 70, 90)):
    image = rng.integers(0, 60000, size=shape, dtype=np.uint16)
    labels = np.zeros(shape[1:], np.int32)
    labels[5:30, 10:40] = 1
    labels[40:65, 50:85] = 7
    return image, labels


@pytest.fixture(scope="module", params=["0.5", "0.4"])
def written(request, tmp_path_factory):
    version = request.param
    path = tmp_path_factory.mktemp(f"w{version}") / "plate.zarr"
    rng = np.random.default_rng(1)
    fields = {}
    with PlateWriter(path, name="P1", channel_names=CHANNELS, pixel_size=(0.5, 0.25), version=version,
                     field_count=2, levels=3, chunks=(1, 32, 32)) as writer:
        for well in ("B3", "b03", "C012"):
            for field in (0, 1):
                image, labels = _field(rng)
                writer.write_field(well, field, image, labels={"cells": labels})
                fields[(well.upper()[0], field)] = (image, labels)
    return version, path, fields


@pytest.mark.slow
def test_layout_metadata_and_validation(written):
    version, path, _ = written
    root = zarr.open_group(str(path), mode="r")
    assert root.metadata.zarr_format == (3 if version == "0.5" else 2)
    plate = _ome(root)["plate"]
    assert plate["name"] == "P1"
    assert plate["version"] == version
    assert plate["field_count"] == 2
    # B3 and b03 are the same well; C12 forces the 96-well layout (8 x 12)
    assert [w["path"] for w in plate["wells"]] == ["B/3", "C/12"]
    assert [(w["rowIndex"], w["columnIndex"]) for w in plate["wells"]] == [(1, 2), (2, 11)]
    assert [r["name"] for r in plate["rows"]] == list("ABCDEFGH")
    assert [c["name"] for c in plate["columns"]] == [str(i) for i in range(1, 13)]
    assert [i["path"] for i in _ome(root["B/3"])["well"]["images"]] == ["0", "1"]
    model = ome_zarr_models.open_ome_zarr(root)
    assert type(model).__module__.startswith(f"ome_zarr_models.v0{version[-1]}")
    assert type(model).__name__ == "HCS"


def test_pixels_pyramid_and_channels(written):
    version, path, fields = written
    field = zarr.open_group(str(path / "C/12/1"), mode="r")
    meta = _ome(field)
    image, _ = fields[("C", 1)]
    datasets = meta["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["s0", "s1", "s2"]
    np.testing.assert_array_equal(field["s0"][...], image)
    # level 1 is the 2 x 2 block mean of level 0, rounded (independent computation)
    expected = np.round(image.astype(float).reshape(4, 35, 2, 45, 2).mean(axis=(2, 4))).astype(np.uint16)
    np.testing.assert_array_equal(field["s1"][...], expected)
    assert field["s2"].shape == (4, 17, 22)
    assert datasets[1]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 0.5]
    assert [c["label"] for c in meta["omero"]["channels"]] == CHANNELS
    assert [c["color"] for c in meta["omero"]["channels"]] == ["FF0000", "FFFF00", "0000FF", "00FF00"]
    axes = meta["multiscales"][0]["axes"]
    assert [a["name"] for a in axes] == ["c", "y", "x"]
    assert axes[1]["unit"] == "micrometer"
    assert field["s0"].chunks == (1, 32, 32)
    if version == "0.5":
        assert json.loads((path / "C/12/1/s0/zarr.json").read_text())["dimension_names"] == ["c", "y", "x"]


def test_labels_levels_and_metadata(written):
    version, path, fields = written
    field = zarr.open_group(str(path / "B/3/0"), mode="r")
    _, labels = fields[("B", 0)]
    labels_group = field["labels"]
    assert _ome(labels_group)["labels"] == ["cells"]
    if version == "0.5":
        assert _ome(labels_group)["version"] == "0.5"
    cells = field["labels/cells"]
    meta = _ome(cells)
    assert len(meta["multiscales"][0]["datasets"]) == 3
    assert cells["s0"].shape == (1, 70, 90)
    np.testing.assert_array_equal(cells["s0"][0], labels)
    for level in (1, 2):
        level_labels = cells[f"s{level}"][0]
        assert level_labels.shape == field[f"s{level}"].shape[1:]
        assert set(np.unique(level_labels)) <= {0, 1, 7}  # nearest neighbour never invents values
    assert [c["label-value"] for c in meta["image-label"]["colors"]] == [1, 7]
    assert meta["image-label"]["source"] == {"image": "../../"}


def test_nearest_downsample_matches_direct_indexing():
    labels = np.arange(12 * 10).reshape(12, 10)
    np.testing.assert_array_equal(nearest_downsample(labels, (6, 5)), labels[::2, ::2])
    np.testing.assert_array_equal(nearest_downsample(labels, (12, 10)), labels)


def test_pyramid_odd_shapes_floor():
    image = np.ones((2, 9, 7), np.uint8)
    assert [p.shape for p in image_pyramid(image, 3)] == [(2, 9, 7), (2, 4, 3), (2, 2, 1)]


def test_explicit_layout_and_bad_inputs(tmp_path):
    image = np.zeros((2, 16, 16), np.uint16)
    with PlateWriter(tmp_path / "p.zarr", name="p", channel_names=["a", "b"], pixel_size=1,
                     rows=16, columns=24, levels=1) as writer:
        writer.write_field("A01", "0", image)
        with pytest.raises(PlateFormatError, match=r"A01/1: image must be \(c, y, x\) with c = 2"):
            writer.write_field("A01", "1", np.zeros((3, 16, 16), np.uint16))
        with pytest.raises(WellNameError, match="'Q-x'"):
            writer.write_field("Q-x", "0", image)
        with pytest.raises(PlateFormatError, match="integer array"):
            writer.write_field("A02", "0", image, labels={"cells": np.zeros((16, 16), float)})
    plate = _ome(zarr.open_group(str(tmp_path / "p.zarr"), mode="r"))["plate"]
    assert len(plate["rows"]) == 16 and len(plate["columns"]) == 24
    (tmp_path / "notzarr").mkdir()
    (tmp_path / "notzarr" / "data.txt").write_text("keep me")
    with pytest.raises(RunDirectoryError, match="not a zarr store"), \
            PlateWriter(tmp_path / "notzarr", name="p", channel_names=["a"], pixel_size=1):
        pass
    assert (tmp_path / "notzarr" / "data.txt").exists()
    with pytest.raises(PlateFormatError, match="hex RRGGBB"):
        PlateWriter(tmp_path / "c.zarr", name="p", channel_names=["a"], pixel_size=1, channel_colors=["blue"])


def test_failed_block_leaves_no_plate_metadata(tmp_path):
    path = tmp_path / "p.zarr"
    with pytest.raises(RuntimeError), \
            PlateWriter(path, name="p", channel_names=["a"], pixel_size=1, levels=1) as writer:
        writer.write_field("A1", 0, np.zeros((1, 8, 8), np.uint8))
        raise RuntimeError("boom")
    assert "plate" not in _ome(zarr.open_group(str(path), mode="r"))


def test_ome_zarr_py_reads_the_plate(written):
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Plate as PlateSpec
    from ome_zarr.reader import Reader

    version, path, fields = written
    fmt = FormatV05() if version == "0.5" else FormatV04()
    node = next(iter(Reader(parse_url(str(path), fmt=fmt))()))
    assert node.first(PlateSpec) is not None
    # the viewer mosaic tiles the first field of each well on the 8 x 12 grid
    mosaic = node.data[0]
    assert mosaic.shape[-2:] == (8 * 70, 12 * 90)
    image, _ = fields[("B", 0)]
    np.testing.assert_array_equal(np.asarray(mosaic[..., 70:140, 180:270]).reshape(image.shape), image)


def test_demo_generator_is_reexported():
    import subcell_scale
    import subcell_scale.io
    from subcell_scale.io import demo

    assert subcell_scale.io.make_demo_plate is demo.make_demo_plate
    assert subcell_scale.make_demo_plate is demo.make_demo_plate


def test_label_properties_and_replacement(tmp_path):
    import pandas as pd

    from subcell_scale.io import open_plate, write_labels

    path = tmp_path / "props.zarr"
    labels = np.zeros((32, 32), np.int32)
    labels[2:10, 2:10] = 4
    labels[20:30, 5:15] = 11
    with PlateWriter(path, name="p", channel_names=["dna"], pixel_size=1, levels=2) as writer:
        writer.write_field("A1", 0, np.zeros((1, 32, 32), np.uint16), labels={"cells": labels})
    table = pd.DataFrame({"label": np.array([4, 11]), "area": np.array([64, 100], np.int64), "kind": ["a", "b"]})
    write_labels(path, "A01", 0, "cells", labels, properties=table)
    meta = _ome(zarr.open_group(str(path / "A/1/0/labels/cells"), mode="r"))["image-label"]
    assert meta["properties"] == [{"label-value": 4, "area": 64, "kind": "a"},
                                  {"label-value": 11, "area": 100, "kind": "b"}]
    write_labels(path, "A01", 0, "cells", labels[::-1].copy(), properties={4: {"note": "flipped"}})
    plate = open_plate(path)
    assert plate.label_names("A01", 0) == ["cells"]
    np.testing.assert_array_equal(plate.read_labels("A01", 0, "cells"), labels[::-1])
    meta = _ome(zarr.open_group(str(path / "A/1/0/labels/cells"), mode="r"))["image-label"]
    assert meta["properties"] == [{"label-value": 4, "note": "flipped"}]
    with pytest.raises(PlateFormatError, match=r"labels 'cells' have shape \(16, 16\), the image is \(32, 32\)"):
        write_labels(plate, "A01", 0, "cells", labels[:16, :16])
    with pytest.raises(PlateFormatError, match="negative values"):
        write_labels(plate, "A01", 0, "cells", -labels)


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_fields_written_by_other_writers_are_listed_once_reserved(tmp_path, version):
    from subcell_scale.io import open_plate, validate_plate

    path = tmp_path / "plate.zarr"
    rng = np.random.default_rng(4)
    fields = {("B03", "0"): _field(rng), ("B03", "1"): _field(rng), ("C05", "0"): _field(rng)}
    options = {"channel_names": CHANNELS, "pixel_size": 0.5, "version": version, "chunks": (1, 32, 32)}
    with PlateWriter(path, name="P2", **options) as owner:
        for well, field in fields:
            owner.reserve_field(well, field)
        # what a worker process does: its own writer on the same store, never closed
        helper = PlateWriter(path, name="P2", **options)
        helper.open(replace=False)
        for (well, field), (image, labels) in fields.items():
            helper.write_field(well, field, image, labels={"cells": labels})
        owner.reserve_field("B3", 1)  # reserving again lists the field once
    validate_plate(path)
    plate = open_plate(path)
    assert plate.wells == ["B03", "C05"]
    assert plate.fields("B03") == ["0", "1"]
    for (well, field), (image, labels) in fields.items():
        np.testing.assert_array_equal(plate.read_field(well, field), image)
        np.testing.assert_array_equal(plate.read_labels(well, field, "cells"), labels)
    with pytest.raises(RunDirectoryError, match="no zarr store to add fields to"):
        PlateWriter(tmp_path / "missing.zarr", name="x", **options).open(replace=False)
    with pytest.raises(RunDirectoryError, match="not open"):
        PlateWriter(tmp_path / "closed.zarr", name="x", **options).reserve_field("A01", 0)
