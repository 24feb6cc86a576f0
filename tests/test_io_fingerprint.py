"""field_fingerprint changes when a field's pixels or labels change on disk, and only then."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from subcell_scale.errors import PlateNotFoundError
from subcell_scale.io import PlateWriter, field_fingerprint, open_plate, write_labels

WELLS = ("A01", "A02")


def _write(path, version="0.5"):
    rng = np.random.default_rng(0)
    with PlateWriter(path, name="fp", channel_names=["DNA", "Protein"], pixel_size=0.5, version=version,
                     chunks=(1, 32, 32)) as writer:
        for well in WELLS:
            for field in ("0", "1"):
                labels = np.zeros((64, 64), np.uint32)
                labels[10:30, 10:30] = 1
                writer.write_field(well, field, rng.integers(0, 4000, (2, 64, 64), dtype=np.uint16),
                                   labels={"cells": labels})


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("fp") / "fp.zarr"
    _write(path)
    return path


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_changes_with_the_fields_own_pixels_and_labels_only(tmp_path, version):
    path = tmp_path / "plate.zarr"
    _write(path, version)
    plate = open_plate(path)
    before = {(w, f): field_fingerprint(plate, w, f, labels="cells") for w in WELLS for f in ("0", "1")}
    assert len(set(before.values())) == 4  # every field has its own
    assert field_fingerprint(open_plate(path), "A01", "0", labels="cells") == before[("A01", "0")]
    plate.read_field("A01", "0")  # reading changes nothing
    assert field_fingerprint(plate, "A01", "0", labels=["cells"]) == before[("A01", "0")]
    assert field_fingerprint(plate, "A01", "0") != before[("A01", "0")]  # labels are part of it when named

    # pixels rewritten in one chunk of A01/0 (same size, new content)
    image = zarr.open_array(str(path / plate.level_path("A01", "0")), mode="r+")
    image[0, :32, :32] = image[0, :32, :32][::-1]
    # labels of A02/1 written again by a new segmentation
    write_labels(plate, "A02", "1", "cells", np.eye(64, dtype=np.uint32))
    after = {(w, f): field_fingerprint(plate, w, f, labels="cells") for w in WELLS for f in ("0", "1")}
    assert {k for k in before if before[k] != after[k]} == {("A01", "0"), ("A02", "1")}


def test_a_label_image_that_appears_changes_it(written, tmp_path):
    path = tmp_path / "copy.zarr"
    shutil.copytree(written, path)
    plate = open_plate(path)
    without = field_fingerprint(plate, "A01", "1", labels=("cells", "nuclei"))
    assert field_fingerprint(plate, "A01", "1", labels=("cells", "nuclei")) == without
    write_labels(plate, "A01", "1", "nuclei", np.eye(64, dtype=np.uint32))
    assert field_fingerprint(plate, "A01", "1", labels=("cells", "nuclei")) != without
    with pytest.raises(PlateNotFoundError, match="no field '7'"):
        field_fingerprint(plate, "A01", "7")


def test_works_through_fsspec_urls(written):
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    memory.put(str(written), "/fp-plate.zarr", recursive=True)
    plate = open_plate("memory://fp-plate.zarr")
    first = field_fingerprint(plate, "A02", "0", labels="cells")
    assert field_fingerprint(plate, "A02", "0", labels="cells") == first
    key = "/fp-plate.zarr/" + plate.level_path("A02", "0") + "/c/1/1/1"
    memory.pipe(key, memory.cat(key))  # the same bytes written again: a new object
    assert field_fingerprint(plate, "A02", "0", labels="cells") != first


@pytest.mark.s3
def test_works_on_an_s3_server(written, s3_server):
    """A real S3 protocol server on loopback (moto), read through s3fs as on a cluster without shared disk."""
    fs = s3_server.fs
    fs.put(str(written), f"{s3_server.bucket('plates')}/fp.zarr", recursive=True)
    plate = open_plate("s3://plates/fp.zarr", storage_options=s3_server.options)
    np.testing.assert_array_equal(plate.read_field("A01", "1"), open_plate(written).read_field("A01", "1"))
    first = field_fingerprint(plate, "A01", "1", labels="cells")
    other = field_fingerprint(plate, "A02", "1", labels="cells")
    key = "plates/fp.zarr/" + plate.level_path("A01", "1") + "/c/0/0/0"
    data = fs.cat(key)
    fs.pipe(key, data[::-1])  # same size, different content, possibly within the same second
    assert field_fingerprint(plate, "A01", "1", labels="cells") != first
    assert field_fingerprint(plate, "A02", "1", labels="cells") == other
