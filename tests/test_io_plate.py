"""open_plate reads NGFF 0.4 and 0.5 plates identically, whoever wrote them, and names bad input.

Test matrix: NGFF 0.4 and 0.5 x (PlateWriter | ome-zarr-py write_image with "s0" levels and tczyx
axes | ome-zarr-py metadata writers with "0"-style levels, a z stack and nanometre units). Every
variant must give the same wells, fields, channels, pixel size, pixels and labels.
"""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader
from ome_zarr.writer import (
    write_image,
    write_label_metadata,
    write_labels,
    write_multiscales_metadata,
    write_plate_metadata,
    write_well_metadata,
)
from ome_zarr_models.common.omero import Omero

from subcell_scale.errors import PlateFormatError, PlateNotFoundError
from subcell_scale.io import PlateWriter, open_plate, validate_plate
from subcell_scale.io import write_labels as write_plate_labels

CHANNELS = ["DNA", "ER", "AGP"]
PIXEL = 0.5
WELLS = {"B03": ("B", "3"), "C11": ("C", "11")}
FIELDS = ["0", "1"]
SHAPE = (3, 64, 48)


def _data():
    rng = np.random.default_rng(7)
    out = {}
    for well in WELLS:
        for field in FIELDS:
            image = rng.integers(0, 4000, size=SHAPE, dtype=np.uint16)
            labels = np.zeros(SHAPE[1:], np.uint32)
            labels[4:20, 6:30] = 3
            labels[30:60, 10:40] = 5
            out[(well, field)] = (image, labels)
    return out


DATA = _data()


def _omero():
    return Omero.model_validate({
        "channels": [{"label": c, "color": col, "active": True, "coefficient": 1, "family": "linear",
                      "inverted": False, "window": {"min": 0, "max": 65535, "start": 0, "end": 4000}}
                     for c, col in zip(CHANNELS, ["0000FF", "00FF00", "FF0000"])],
        "rdefs": {"defaultT": 0, "defaultZ": 0, "model": "color"},
    })


def _fix_labels_version(field, fmt):
    if fmt.version == "0.5":
        group = field["labels"]
        ome = dict(group.attrs["ome"])
        ome["version"] = "0.5"
        group.attrs["ome"] = ome


def _write_plate_skeleton(path, fmt):
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    write_plate_metadata(root, list("ABCDEFGH"), [str(i) for i in range(1, 13)],
                         [f"{r}/{c}" for r, c in WELLS.values()], fmt=fmt, name="matrix", field_count=2)
    for r, c in WELLS.values():
        well = root.require_group(r).require_group(c)
        write_well_metadata(well, [{"path": f} for f in FIELDS], fmt=fmt)
    return root


def _by_writer(path, version):
    with PlateWriter(path, name="matrix", channel_names=CHANNELS, pixel_size=PIXEL, version=version,
                     rows=8, columns=12, chunks=(1, 32, 32)) as writer:
        for (well, field), (image, labels) in DATA.items():
            writer.write_field(well, field, image, labels={"cells": labels})


def _by_write_image(path, version):
    """ome-zarr-py's high-level writers: tczyx axes, "s0"/"s1" levels."""
    fmt = FormatV05() if version == "0.5" else FormatV04()
    root = _write_plate_skeleton(path, fmt)
    scale = {"t": 1.0, "c": 1.0, "z": 1.0, "y": PIXEL, "x": PIXEL}
    units = {"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"}
    for (well, field), (image, labels) in DATA.items():
        r, c = WELLS[well]
        group = root[r][c].require_group(field)
        write_image(image=image[None, :, None], group=group, axes="tczyx", scale=scale, axes_units=units,
                    scale_factors=[2], fmt=fmt, storage_options={"chunks": (1, 1, 1, 32, 32)}, omero=_omero())
        write_labels(labels=labels[None, None, None], group=group, name="cells", axes="tczyx", scale=scale,
                     axes_units=units, scale_factors=[2], scaler=None, fmt=fmt,
                     storage_options={"chunks": (1, 1, 1, 32, 32)},
                     label_metadata={"colors": [{"label-value": 3, "rgba": [255, 0, 0, 255]}]})
        _fix_labels_version(group, fmt)


def _by_metadata_writers(path, version):
    """"0"/"1" level names (older ome-zarr-py and most converters), czyx with 2 planes, nanometres."""
    fmt = FormatV05() if version == "0.5" else FormatV04()
    root = _write_plate_skeleton(path, fmt)
    axes = [{"name": "c", "type": "channel"}, {"name": "z", "type": "space", "unit": "nanometer"},
            {"name": "y", "type": "space", "unit": "nanometer"}, {"name": "x", "type": "space", "unit": "nanometer"}]
    names = ["c", "z", "y", "x"]

    def create(group, name, data):
        kwargs = {"dimension_names": names} if fmt.zarr_format == 3 else {
            "chunk_key_encoding": {"name": "v2", "separator": "/"}}
        array = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(1, 1, 32, 32), **kwargs)
        array[...] = data

    datasets = [{"path": str(i), "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, 1000.0, PIXEL * 1000 * 2**i, PIXEL * 1000 * 2**i]}]} for i in range(2)]
    for (well, field), (image, labels) in DATA.items():
        r, c = WELLS[well]
        group = root[r][c].require_group(field)
        stack = np.stack([image // 2, image], axis=1)  # max over z is the image itself
        create(group, "0", stack)
        create(group, "1", stack[:, :, ::2, ::2])
        write_multiscales_metadata(group, datasets=datasets, fmt=fmt, axes=axes,
                                   metadata={"omero": _omero().model_dump(exclude_none=True)})
        label_group = group.require_group("labels").require_group("cells")
        one = labels[None, None]
        create(label_group, "0", one)
        create(label_group, "1", one[:, :, ::2, ::2])
        write_multiscales_metadata(label_group, datasets=datasets, fmt=fmt, axes=axes)
        write_label_metadata(group["labels"], "cells", fmt=fmt, source={"image": "../../"})
        _fix_labels_version(group, fmt)


WRITERS = {"PlateWriter": _by_writer, "write_image": _by_write_image, "metadata_writers": _by_metadata_writers}


# plates of the other writers (ome-zarr, hand-written metadata) are part of the slow matrix
@pytest.fixture(scope="module", params=[pytest.param((w, v), marks=() if w == "PlateWriter" else pytest.mark.slow)
                                        for w in WRITERS for v in ("0.5", "0.4")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def plate_path(request, tmp_path_factory):
    writer, version = request.param
    path = tmp_path_factory.mktemp(f"{writer}{version}") / "matrix.zarr"
    WRITERS[writer](path, version)
    return path, version


def test_opens_identically(plate_path):
    path, version = plate_path
    plate = open_plate(path)
    assert plate.version == version
    assert plate.name == "matrix"
    assert plate.wells == ["B03", "C11"]
    assert plate.row_column("C11") == ("C", 11)
    assert plate.fields("b3") == FIELDS
    assert plate.channel_names == CHANNELS
    assert plate.pixel_size == pytest.approx((PIXEL, PIXEL))
    assert plate.n_levels("B03", "1") == 2
    assert plate.field_pixel_size("B03", "1", level=1) == pytest.approx((2 * PIXEL, 2 * PIXEL))
    assert plate.label_names("C11", 0) == ["cells"]
    for (well, field), (image, labels) in DATA.items():
        arr = plate.image(well, field)
        assert arr.dims == ("c", "y", "x")
        assert list(arr.coords["c"].values) == CHANNELS
        np.testing.assert_array_equal(arr.values, image)
        np.testing.assert_array_equal(plate.read_field(well, field), image)
        np.testing.assert_array_equal(plate.read_labels(well, field, "cells"), labels)
    low = plate.labels("C11", "1", "cells", level=1)
    assert low.dims == ("y", "x") and low.shape == plate.image("C11", "1", level=1).shape[1:]
    validate_plate(path)
    # ome-zarr-py's own reader finds the image and its labels in every variant
    fmt = FormatV05() if version == "0.5" else FormatV04()
    nodes = list(Reader(parse_url(str(path / "B/3/0"), fmt=fmt))())
    assert nodes[0].first(Multiscales) is not None
    assert any(n.first(Label) is not None for n in nodes)


def test_image_is_lazy_and_chunked(plate_path):
    path, _ = plate_path
    arr = open_plate(path).image("B03", "0")
    assert arr.chunks is not None
    assert arr.data.chunksize[-2:] == (32, 32)


def test_write_labels_into_any_variant(plate_path, tmp_path):
    path, version = plate_path
    copy = tmp_path / "copy.zarr"
    shutil.copytree(path, copy)
    plate = open_plate(copy)
    labels = np.zeros(SHAPE[1:], np.int32)
    labels[10:50, 5:25] = 9
    write_plate_labels(plate, "C11", "1", "nuclei", labels, properties=[{"label-value": 9, "class": "x"}])
    write_plate_labels(plate, "C11", "1", "nuclei", labels * 2)  # same name: replaced
    assert plate.label_names("C11", "1") == ["cells", "nuclei"]
    np.testing.assert_array_equal(plate.read_labels("C11", "1", "nuclei"), labels * 2)
    assert plate.labels("C11", "1", "nuclei", level=1).shape == plate.image("C11", "1", level=1).shape[1:]
    validate_plate(copy)


@pytest.fixture(scope="module")
def small_plate(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "small.zarr"
    _by_writer(path, "0.5")
    return path


def test_urls_and_pickling(small_plate):
    fsspec = pytest.importorskip("fsspec")
    plate = open_plate(small_plate.as_uri())
    np.testing.assert_array_equal(plate.read_field("B03", "0"), DATA[("B03", "0")][0])
    memory = fsspec.filesystem("memory")
    memory.put(str(small_plate), "/mem-plate.zarr", recursive=True)
    in_memory = open_plate("memory://mem-plate.zarr")
    assert in_memory.channel_names == CHANNELS
    np.testing.assert_array_equal(in_memory.read_field("C11", "1"), DATA[("C11", "1")][0])
    clone = pickle.loads(pickle.dumps(open_plate(small_plate)))
    np.testing.assert_array_equal(clone.read_labels("B03", "1", "cells"), DATA[("B03", "1")][1])


def test_z_and_t_selection(tmp_path):
    path = tmp_path / "z.zarr"
    _by_metadata_writers(path, "0.5")
    image = DATA[("B03", "0")][0]
    np.testing.assert_array_equal(open_plate(path, z=0).read_field("B03", "0"), image // 2)
    np.testing.assert_array_equal(open_plate(path, z=1).read_field("B03", "0"), image)
    with pytest.raises(PlateNotFoundError, match="plane z=5 does not exist"):
        open_plate(path, z=5).image("B03", "0")
    t_path = tmp_path / "t.zarr"
    _by_write_image(t_path, "0.4")
    with pytest.raises(PlateNotFoundError, match="time point t=1 does not exist"):
        open_plate(t_path, t=1).image("B03", "0")


def test_unknown_names_are_named(small_plate):
    plate = open_plate(small_plate)
    with pytest.raises(PlateNotFoundError, match="well D04 is not in the plate"):
        plate.fields("D4")
    with pytest.raises(PlateNotFoundError, match="no field '7'"):
        plate.image("B03", 7)
    with pytest.raises(PlateNotFoundError, match="level 2 does not exist"):
        plate.image("B03", 0, level=2)
    with pytest.raises(PlateNotFoundError, match="no label image 'nuclei'"):
        plate.labels("B03", 0, "nuclei")


# -- bad input: each gets a specific error naming the path and the problem -------------------------


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_missing_path(tmp_path):
    with pytest.raises(PlateNotFoundError, match="nope.zarr: no such plate"):
        open_plate(tmp_path / "nope.zarr")


def test_bare_image_file(tmp_path):
    import tifffile

    tif = tmp_path / "field.tif"
    tifffile.imwrite(tif, np.zeros((8, 8), np.uint16))
    with pytest.raises(PlateFormatError, match="field.tif: a file, not an OME-Zarr plate"):
        open_plate(tif)


def test_bare_zarr_array_and_group(tmp_path):
    zarr.create_array(str(tmp_path / "array.zarr"), shape=(4, 4), dtype="u2")
    with pytest.raises(PlateFormatError, match="array.zarr: a bare zarr array"):
        open_plate(tmp_path / "array.zarr")
    zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    with pytest.raises(PlateFormatError, match="group.zarr: a zarr group without NGFF 'plate' metadata"):
        open_plate(tmp_path / "group.zarr")
    (tmp_path / "dir").mkdir()
    with pytest.raises(PlateFormatError, match="dir: no zarr group here"):
        open_plate(tmp_path / "dir")


def test_single_image_and_well_are_not_plates(small_plate):
    with pytest.raises(PlateFormatError, match="single NGFF image"):
        open_plate(small_plate / "B/3/0")
    with pytest.raises(PlateFormatError, match="one well of a plate"):
        open_plate(small_plate / "B/3")


def test_unsupported_axes(small_plate, tmp_path):
    copy = tmp_path / "axes.zarr"
    shutil.copytree(small_plate, copy)
    _edit_json(copy / "B/3/0/zarr.json",
               lambda d: d["attributes"]["ome"]["multiscales"][0]["axes"][0].update(name="angle", type="angle"))
    plate = open_plate(copy)
    with pytest.raises(PlateFormatError, match=r"B03/0: unsupported axes \['angle', 'y', 'x'\]"):
        plate.image("B03", "0")


def test_missing_level_array(small_plate, tmp_path):
    copy = tmp_path / "level.zarr"
    shutil.copytree(small_plate, copy)
    shutil.rmtree(copy / "B/3/1/s1")
    plate = open_plate(copy)
    np.testing.assert_array_equal(plate.read_field("B03", "1"), DATA[("B03", "1")][0])
    with pytest.raises(PlateFormatError, match=r"B03/1 level 1: level array 's1' is listed in multiscales but missing"):
        plate.image("B03", "1", level=1)
    with pytest.raises(PlateFormatError, match="B03/1: level array 's1' is missing"):
        validate_plate(copy)


def test_empty_well(small_plate, tmp_path):
    copy = tmp_path / "empty.zarr"
    shutil.copytree(small_plate, copy)
    _edit_json(copy / "C/11/zarr.json", lambda d: d["attributes"]["ome"]["well"].update(images=[]))
    plate = open_plate(copy)
    assert plate.fields("B03") == FIELDS
    with pytest.raises(PlateFormatError, match="well C11 is empty"):
        plate.fields("C11")


def test_unreadable_chunk(small_plate, tmp_path):
    copy = tmp_path / "corrupt.zarr"
    shutil.copytree(small_plate, copy)
    chunk = copy / "B/3/1/s0/c/1/0/0"
    assert chunk.is_file()
    chunk.write_bytes(b"\x00garbage" + chunk.read_bytes()[8:])
    plate = open_plate(copy)
    np.testing.assert_array_equal(plate.read_field("B03", "0"), DATA[("B03", "0")][0])
    with pytest.raises(PlateFormatError, match=r"matrix/B03/1|corrupt.zarr B03/1 level 0: cannot read a chunk"):
        plate.read_field("B03", "1")


def _chunk_files(array_dir):
    return sorted(p for p in array_dir.rglob("*") if p.is_file() and p.name not in ("zarr.json", ".zarray", ".zattrs"))


def test_a_missing_image_chunk_fails_the_field_in_every_variant(plate_path, tmp_path):
    path, _ = plate_path
    copy = tmp_path / "holes.zarr"
    shutil.copytree(path, copy)
    level0 = copy / open_plate(copy).level_path("C11", "1")
    chunk = _chunk_files(level0)[-1]
    chunk.unlink()
    key = chunk.relative_to(copy).as_posix()
    plate = open_plate(copy)
    with pytest.raises(PlateFormatError, match=rf"holes.zarr C11/1 level 0: 1 chunk\(s\) .* missing from the store: {key};"):
        plate.read_field("C11", "1")
    with pytest.raises(PlateFormatError, match="missing_chunks='fill'"):
        plate.image("C11", "1").values
    np.testing.assert_array_equal(plate.read_field("C11", "0"), DATA[("C11", "0")][0])  # other fields read
    filled = open_plate(copy, missing_chunks="fill").read_field("C11", "1")
    image = DATA[("C11", "1")][0]
    holes = filled != image
    assert 0 < holes.sum() <= 32 * 32  # one chunk's worth of pixels, at most
    assert (filled[holes] < image[holes]).all()  # zeros (or the other z plane, where a stack is projected)


def test_only_the_chunks_a_read_touches_must_exist(tmp_path):
    path = tmp_path / "z.zarr"
    _by_metadata_writers(path, "0.5")  # czyx, one chunk per channel and plane, 2 planes
    level0 = path / open_plate(path).level_path("B03", "0")
    (level0 / "c/1/0/0/0").unlink()  # channel 1, plane 0, first tile
    image = DATA[("B03", "0")][0]
    np.testing.assert_array_equal(open_plate(path, z=1).read_field("B03", "0"), image)
    with pytest.raises(PlateFormatError, match="B/3/0/0/c/1/0/0/0"):
        open_plate(path, z=0).read_field("B03", "0")
    with pytest.raises(PlateFormatError, match="B/3/0/0/c/1/0/0/0"):
        open_plate(path).read_field("B03", "0")  # max over z reads both planes
    # a crop that stays in the other tiles reads
    np.testing.assert_array_equal(open_plate(path).image("B03", "0")[:, 40:, 40:].values, image[:, 40:, 40:])


def test_missing_shards_chunks_behind_urls_and_label_images(small_plate, tmp_path):
    copy = tmp_path / "sharded.zarr"
    shutil.copytree(small_plate, copy)
    image = DATA[("B03", "0")][0]
    field = zarr.open_group(str(copy / "B/3/0"), mode="r+")
    sharded = field.create_array("s0", shape=image.shape, dtype=image.dtype, chunks=(1, 16, 16), shards=(1, 32, 32),
                                 dimension_names=["c", "y", "x"], overwrite=True)
    sharded[...] = image
    np.testing.assert_array_equal(open_plate(copy).read_field("B03", "0"), image)
    (copy / "B/3/0/s0/c/2/1/0").unlink()  # one shard: channel 2, rows 32-63, columns 0-31
    with pytest.raises(PlateFormatError, match="B03/0 level 0: 1 chunk.*: B/3/0/s0/c/2/1/0;"):
        open_plate(copy).read_field("B03", "0")
    # the same through an fsspec URL
    fsspec = pytest.importorskip("fsspec")
    fsspec.filesystem("memory").put(str(copy), "/holes-plate.zarr", recursive=True)
    with pytest.raises(PlateFormatError, match="B/3/0/s0/c/2/1/0"):
        open_plate("memory://holes-plate.zarr").read_field("B03", "0")
    # label images leave out chunks without cells, so a missing label chunk reads as background
    labels = copy / "B/3/1/labels/cells/s0"
    for chunk in _chunk_files(labels):
        chunk.unlink()
    assert (open_plate(copy).read_labels("B03", "1", "cells") == 0).all()
    with pytest.raises(PlateFormatError, match="missing_chunks must be 'raise' or 'fill'"):
        open_plate(copy, missing_chunks="zero")


def test_validate_reports_every_problem(small_plate, tmp_path):
    copy = tmp_path / "invalid.zarr"
    shutil.copytree(small_plate, copy)

    def break_plate(d):
        d["attributes"]["ome"]["plate"]["wells"][0]["rowIndex"] = 4
        d["attributes"]["ome"]["plate"]["wells"][1]["columnIndex"] = 2
        del d["attributes"]["ome"]["plate"]["version"]

    _edit_json(copy / "zarr.json", break_plate)
    _edit_json(copy / "B/3/0/zarr.json",
               lambda d: d["attributes"]["ome"]["omero"]["channels"][1].update(color="green"))
    _edit_json(copy / "C/11/1/labels/zarr.json", lambda d: d["attributes"]["ome"].pop("version"))
    with pytest.raises(PlateFormatError) as info:
        validate_plate(copy)
    text = str(info.value)
    assert "well B/3: rowIndex 4 is row 'E', but the path names row 'B'" in text
    assert "well C/11: columnIndex 2 is column '3', but the path names column '11'" in text
    assert "B03/0: omero channel 1 colour 'green' is not hex RRGGBB" in text
    assert "C11/1: labels group has no 'version'" in text
    assert "plate metadata has no 'version'" in text
    assert "ome-zarr-models" in text  # the schema check still runs and reports the labels version


def test_acquisitions_padded_columns_and_units(tmp_path):
    """Plates from other converters: zero-padded column names, two acquisitions, odd units."""
    path = tmp_path / "acq.zarr"
    fmt = FormatV05()
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    write_plate_metadata(root, ["A", "B"], ["01", "02", "03"], ["B/03"], fmt=fmt, name="acq",
                         acquisitions=[{"id": 1, "name": "first"}, {"id": 2, "name": "second"}])
    well = root.require_group("B").require_group("03")
    write_well_metadata(well, [{"path": "0", "acquisition": 1}, {"path": "1", "acquisition": 2}], fmt=fmt)
    image = DATA[("B03", "0")][0]
    for field, unit in (("0", "millimeter"), ("1", "micrometer")):
        write_image(image=image, group=well.require_group(field), axes="cyx", scale={"c": 1, "y": 0.001, "x": 0.002},
                    axes_units={"y": unit, "x": unit}, scale_factors=[], fmt=fmt, omero=_omero())
    plate = open_plate(path)
    assert plate.wells == ["B03"]
    assert plate.well_path("b3") == "B/03"
    assert plate.row_column("B03") == ("B", 3)
    assert [a["name"] for a in plate.acquisitions] == ["first", "second"]
    assert plate.fields("B03", acquisition=2) == ["1"]
    assert plate.field_pixel_size("B03", "0") == pytest.approx((1.0, 2.0))  # millimetres -> micrometres
    np.testing.assert_array_equal(plate.read_field("B03", "0"), image)
    assert plate.field_pixel_size("B03", "1") == pytest.approx((0.001, 0.002))
    validate_plate(path)


def test_non_length_unit_is_refused(small_plate, tmp_path):
    copy = tmp_path / "unit.zarr"
    shutil.copytree(small_plate, copy)
    _edit_json(copy / "B/3/0/zarr.json",
               lambda d: d["attributes"]["ome"]["multiscales"][0]["axes"][1].update(unit="second"))
    with pytest.raises(PlateFormatError, match=r"B03/0: axis 'y' has unit 'second', which is not a length"):
        open_plate(copy).image("B03", "0")
