"""`convert` turns real HPA PNGs and JUMP multi-channel TIFFs into plates that open with their pixels."""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile

from subcell_scale.cli import convert as convert_cli
from subcell_scale.errors import PlateFormatError, PlateNotFoundError, WellNameError
from subcell_scale.io import open_plate, validate_plate
from subcell_scale.io.convert import convert_images

REALDATA = Path(__file__).parent / "data" / "realdata"


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    convert_cli.add_arguments(parser)
    return convert_cli.run(parser.parse_args(list(argv)))


@pytest.fixture(scope="module")
def hpa_plate(tmp_path_factory):
    out = tmp_path_factory.mktemp("hpa")
    assert _cli(str(REALDATA / "hpa_index.csv"), str(out), "--pixel-size", "0.32", "--validate") == 0
    return out / "HPA-SCC.zarr"


def test_hpa_pngs_with_masks(hpa_plate):
    plate = open_plate(hpa_plate)
    assert plate.name == "HPA-SCC"
    assert plate.version == "0.5"
    assert plate.wells == ["A01", "A02"]
    assert plate.channel_names == ["microtubules", "er", "dna", "protein"]
    assert plate.pixel_size == pytest.approx((0.32, 0.32))
    index = pd.read_csv(REALDATA / "hpa_index.csv", dtype=str, keep_default_na=False)
    for well, short in (("A01", "000a6c98"), ("A02", "a34d8680")):
        image = plate.read_field(well, "0")
        for c, suffix in enumerate(("red", "yellow", "blue", "green")):
            np.testing.assert_array_equal(image[c], iio.imread(REALDATA / "hpa" / f"{short}_{suffix}.png"))
        mask = iio.imread(REALDATA / "hpa" / f"{short}_cells.png")
        np.testing.assert_array_equal(plate.read_labels(well, "0", "cells"), mask)
        assert len(np.unique(plate.read_labels(well, "0", "cells"))) - 1 == {"A01": 19, "A02": 18}[well]
    assert len(index) == 10


def test_jump_multichannel_tiffs_as_ngff_04(tmp_path, capsys):
    order = "DNA,ER,RNA,AGP,Mito"
    assert _cli(str(REALDATA / "jump_index.csv"), str(tmp_path), "--pixel-size", "0.598",
                "--version", "0.4", "--channels", order) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "BR00123947.zarr"), str(tmp_path / "CP-CC9-R1-05.zarr")]
    source_order = ["AGP", "DNA", "ER", "Mito", "RNA"]
    for path, well, field in ((printed[0], "G01", "1"), (printed[1], "L07", "0")):
        plate = open_plate(path)
        assert plate.version == "0.4"
        assert plate.wells == [well]
        assert plate.fields(well) == [field]
        assert plate.channel_names == order.split(",")
        stack = tifffile.imread(REALDATA / "jump" / f"{plate.name}_{well}_s{field}.tif")
        expected = stack[[source_order.index(c) for c in order.split(",")]]
        np.testing.assert_array_equal(plate.read_field(well, field), expected)
        assert plate.read_field(well, field).dtype == np.uint16
        validate_plate(path)


def _index(tmp_path, rows):
    frame = pd.DataFrame(rows, columns=["plate", "well", "field", "channel", "channels", "label", "path"])
    path = tmp_path / "index.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def pngs(tmp_path):
    for name, shape in (("a.png", (16, 16)), ("b.png", (16, 16)), ("small.png", (8, 16))):
        iio.imwrite(tmp_path / name, np.full(shape, 7, np.uint8))
    iio.imwrite(tmp_path / "rgb.png", np.dstack([np.zeros((16, 16), np.uint8), np.ones((16, 16), np.uint8),
                                                 np.zeros((16, 16), np.uint8)]))
    return tmp_path


def test_missing_file_is_named(pngs):
    index = _index(pngs, [["P", "A1", "0", "dna", "", "", "a.png"], ["P", "A1", "0", "er", "", "", "gone.png"]])
    with pytest.raises(PlateNotFoundError, match=r"row 2: file not found: .*gone.png \(plate P, well A01, field 0\)"):
        convert_images(index, pngs / "out", pixel_size=1)
    assert not (pngs / "out" / "P.zarr").exists()


def test_shape_mismatch_is_named(pngs):
    index = _index(pngs, [["P", "A1", "0", "dna", "", "", "a.png"], ["P", "A1", "0", "er", "", "", "small.png"]])
    with pytest.raises(PlateFormatError, match=r"plate P well A01 field 0: channels differ in shape: "
                                               r"dna \(16, 16\) \(a.png\), er \(8, 16\) \(small.png\)"):
        convert_images(index, pngs / "out", pixel_size=1)


def test_unknown_well_name_is_named(pngs):
    index = _index(pngs, [["P", "A1", "0", "dna", "", "", "a.png"], ["P", "well-7", "0", "dna", "", "", "b.png"]])
    with pytest.raises(WellNameError, match=r"index.csv row 2: well name 'well-7'"):
        convert_images(index, pngs / "out", pixel_size=1)


def test_missing_channel_and_bad_rows(pngs):
    index = _index(pngs, [["P", "A1", "0", "dna", "", "", "a.png"], ["P", "A1", "0", "er", "", "", "b.png"],
                          ["P", "A2", "0", "dna", "", "", "a.png"]])
    with pytest.raises(PlateFormatError, match=r"plate P well A02 field 0: missing channels \['er'\]"):
        convert_images(index, pngs / "out", pixel_size=1)
    index = _index(pngs, [["P", "A1", "0", "dna", "", "cells", "a.png"]])
    with pytest.raises(PlateFormatError, match="exactly one of 'channel', 'channels' or 'label'"):
        convert_images(index, pngs / "out", pixel_size=1)
    index = _index(pngs, [["P", "A1", "0", "dna", "", "", "rgb.png"]])
    with pytest.raises(PlateFormatError, match=r"rgb.png \(plate P, well A01, field 0\): a colour \(RGB\) image"):
        convert_images(index, pngs / "out", pixel_size=1)
    index = _index(pngs, [["P", "A1", "0", "", "r;g", "", "rgb.png"]])
    with pytest.raises(PlateFormatError, match=r"2 channels \['r', 'g'\] listed, but the file has shape \(16, 16, 3\)"):
        convert_images(index, pngs / "out", pixel_size=1)


def test_rgb_file_as_channels_and_frame_index(pngs):
    frame = pd.DataFrame({"well": ["B2"], "channels": ["r|g|b"], "path": ["rgb.png"]})
    (path,) = convert_images(frame, pngs / "out", pixel_size=(0.5, 0.25), base_dir=pngs, levels=1)
    plate = open_plate(path)
    assert plate.name == "plate" and plate.fields("B02") == ["0"]
    assert plate.pixel_size == (0.5, 0.25)
    np.testing.assert_array_equal(plate.read_field("B2", 0)[:, 0, 0], [0, 1, 0])


def test_cli_pixel_size_parsing_and_plain_errors(tmp_path):
    parser = argparse.ArgumentParser()
    convert_cli.add_arguments(parser)
    assert parser.parse_args(["i", "o", "--pixel-size", "0.5,0.25"]).pixel_size == (0.5, 0.25)
    assert parser.parse_args(["i", "o", "--pixel-size", "0.3"]).pixel_size == (0.3, 0.3)
    with pytest.raises(SystemExit):
        parser.parse_args(["i", "o", "--pixel-size", "-1"])
    with pytest.raises(PlateNotFoundError, match="nope.csv: index file not found"):
        _cli(str(tmp_path / "nope.csv"), str(tmp_path), "--pixel-size", "1")


def test_relative_paths_follow_the_index(tmp_path):
    shutil.copytree(REALDATA / "jump", tmp_path / "data" / "jump")
    index = pd.read_csv(REALDATA / "jump_index.csv", dtype=str, keep_default_na=False).iloc[:1]
    index.to_csv(tmp_path / "data" / "index.csv", index=False)
    (path,) = convert_images(tmp_path / "data" / "index.csv", tmp_path / "plates", pixel_size=0.598)
    assert open_plate(path).channel_names == ["AGP", "DNA", "ER", "Mito", "RNA"]


def test_command_line_errors_are_one_line(tmp_path, capsys):
    from subcell_scale.cli import main

    index = tmp_path / "index.csv"
    index.write_text("plate,well,field,channel,path\nP,A1,0,dna,missing.png\n")
    assert main(["convert", str(index), str(tmp_path / "out"), "--pixel-size", "0.5"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("subcell-scale convert: error: ") and "missing.png" in err


# Opera Phenix exports one LZW-compressed TIFF per channel (r03c03f03p01-ch5sk1fk1fl1.tiff, no
# predictor); the JUMP images are ZSTD-compressed; many microscopes add the horizontal predictor.
COMPRESSIONS = {
    "lzw": ({"compression": "lzw"}, tifffile.COMPRESSION.LZW),
    "lzw-predictor": ({"compression": "lzw", "predictor": True}, tifffile.COMPRESSION.LZW),
    "zstd": ({"compression": "zstd"}, tifffile.COMPRESSION.ZSTD),
}


def _phenix_files(folder, compression):
    """The vendored JUMP site's real pixels as one compressed TIFF per channel, Phenix-named."""
    stack = tifffile.imread(REALDATA / "jump" / "BR00123947_G01_s1.tif")
    folder.mkdir()
    rows = []
    for i, (channel, plane) in enumerate(zip(["AGP", "DNA", "ER", "Mito", "RNA"], stack)):
        name = f"r07c01f02p01-ch{i + 1}sk1fk1fl1.tiff"
        tifffile.imwrite(folder / name, plane, photometric="minisblack", rowsperstrip=64,
                         **COMPRESSIONS[compression][0])
        rows.append({"plate": "BR00123947", "well": "G01", "field": "1", "channel": channel, "path": name})
    pd.DataFrame(rows).to_csv(folder / "index.csv", index=False)
    return stack


@pytest.mark.parametrize("compression", list(COMPRESSIONS))
def test_compressed_microscope_tiffs_convert_out_of_the_box(tmp_path, compression):
    stack = _phenix_files(tmp_path / "tiffs", compression)
    for path in (tmp_path / "tiffs").glob("*.tiff"):
        assert tifffile.TiffFile(path).pages[0].compression == COMPRESSIONS[compression][1]
    assert _cli(str(tmp_path / "tiffs" / "index.csv"), str(tmp_path / "plates"), "--pixel-size", "0.598",
                "--validate") == 0
    plate = open_plate(tmp_path / "plates" / "BR00123947.zarr")
    assert plate.channel_names == ["AGP", "DNA", "ER", "Mito", "RNA"]
    np.testing.assert_array_equal(plate.read_field("G01", "1"), stack)


@pytest.mark.slow
def test_without_imagecodecs_the_error_says_what_to_install(tmp_path):
    """A broken install (imagecodecs absent) gets one clear line, not a traceback from tifffile."""
    import subprocess
    import sys

    _phenix_files(tmp_path / "tiffs", "lzw")
    code = ("import sys; sys.modules['imagecodecs'] = None\n"
            "from subcell_scale.cli import main\n"
            f"sys.exit(main(['convert', {str(tmp_path / 'tiffs' / 'index.csv')!r}, {str(tmp_path / 'out')!r}, "
            "'--pixel-size', '0.6']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    line = done.stderr.splitlines()[-1]  # a log line about the unfinished plate may precede it
    assert line.startswith("subcell-scale convert: error: "), done.stderr
    assert "r07c01f02p01-ch1sk1fk1fl1.tiff (plate BR00123947, well G01, field 1)" in line
    assert "pip install imagecodecs" in line


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_an_existing_plate_is_replaced_only_when_asked(pngs, capsys, version):
    """convert into a folder holding the plate: refused, nothing touched, unless --overwrite."""
    from subcell_scale.cli import main
    from subcell_scale.errors import RunDirectoryError
    from subcell_scale.io.labels import write_labels

    index = _index(pngs, [["P", "A1", "0", "dna", "", "", "a.png"]])
    (path,) = convert_images(index, pngs / "out", pixel_size=1, version=version)
    plate = open_plate(path)
    write_labels(plate, "A01", "0", "cells", np.ones((16, 16), np.uint32))  # labels a user made since
    files = {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}
    with pytest.raises(RunDirectoryError, match=rf"plate {re.escape(str(path))} exists already; .*--overwrite"):
        convert_images(index, pngs / "out", pixel_size=1)
    assert main(["convert", str(index), str(pngs / "out"), "--pixel-size", "1", "--version", version]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("subcell-scale convert: error: plate ") and str(path) in err
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()} == files  # untouched
    assert open_plate(path).label_names("A01", "0") == ["cells"]

    assert main(["convert", str(index), str(pngs / "out"), "--pixel-size", "1", "--version", version,
                 "--overwrite"]) == 0
    assert capsys.readouterr().out.split() == [str(path)]
    assert open_plate(path).label_names("A01", "0") == []  # replaced: the labels went with the old plate
    (again,) = convert_images(index, pngs / "out", pixel_size=1, version=version, overwrite=True)
    np.testing.assert_array_equal(open_plate(again).read_field("A01", "0"), np.full((1, 16, 16), 7, np.uint8))
