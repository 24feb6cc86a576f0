"""Write the iohub plate the interoperability tests open (needs iohub >= 0.3, hence Python >= 3.12).

Usage: python3.12 -m pip install "iohub==0.3.11" && python3.12 tests/data/iohub/make_iohub_plate.py

iohub cannot be installed beside the zarr 3 this project runs on under Python 3.11 (its 0.2 series
requires zarr < 3), so the plate is written once here and kept in the repository. It is the layout
iohub writes: TCZYX axes with upper-case names, level "0", the label listing kept in the image
group ({"labels": {"labels": [...]}}) and an empty ``labels`` group. Labels are added in a second
session after the plate was written, as a user's segmentation step would.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from iohub.ngff import open_ome_zarr

OUT = Path(__file__).parent / "iohub-0.3.11.zarr"
CHANNELS = ["DNA", "Protein"]
SHAPE = (1, 2, 1, 48, 40)  # t, c, z, y, x


def main(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng(3)
    with open_ome_zarr(out, layout="hcs", mode="w-", channel_names=CHANNELS, version="0.5") as plate:
        for row, column in (("A", "1"), ("B", "2")):
            position = plate.create_position(row, column, "0")
            position.create_image("0", rng.integers(100, 4000, SHAPE, dtype=np.uint16))
    with open_ome_zarr(out, layout="hcs", mode="r+") as plate:
        for i, (_, position) in enumerate(plate.positions()):
            nuclei = np.zeros((1, 1, *SHAPE[-2:]), np.uint32)  # t, z, y, x
            nuclei[0, 0, 5 + i : 20, 6:30] = 4
            nuclei[0, 0, 25:40, 10 : 20 + i] = 7
            position.create_label("nuclei", nuclei)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
