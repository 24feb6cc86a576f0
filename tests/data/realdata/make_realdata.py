"""Rebuild the vendored real test fields from the shared real-data folder (see NOTICE.md).

Usage: python3 tests/data/realdata/make_realdata.py REALDATA_DIR

HPA: two 2048 px fields, 4x smaller (4 x 4 block means; masks take the centre pixel of each
block), one 8-bit PNG per channel plus the cell mask. JUMP: both 384 px sites, centre 256 px,
one 5-channel uint16 TIFF each (zlib). Index CSVs list them for ``subcell-scale convert``.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile
import zarr

HPA_IDS = ("000a6c98-bb9b-11e8-b2b9-ac1f6b6435d0", "a34d8680-bb99-11e8-b2b9-ac1f6b6435d0")
HPA_CHANNELS = {"red": "microtubules", "yellow": "er", "blue": "dna", "green": "protein"}
JUMP_CHANNELS = ("AGP", "DNA", "ER", "Mito", "RNA")  # order of the source array (channels.csv)
JUMP_SITES = (("BR00123947", "G01", "1"), ("CP-CC9-R1-05", "L07", "0"))
FACTOR = 4
CROP = 256


def main(shared: Path, out: Path) -> None:
    rows = []
    for i, image_id in enumerate(HPA_IDS):
        short = image_id[:8]
        for suffix, channel in HPA_CHANNELS.items():
            plane = iio.imread(shared / "hpa_scc_trainandgain/images" / f"{image_id}_{suffix}.png")
            h, w = plane.shape[0] // FACTOR, plane.shape[1] // FACTOR
            small = plane[: h * FACTOR, : w * FACTOR].reshape(h, FACTOR, w, FACTOR).mean(axis=(1, 3))
            name = f"hpa/{short}_{suffix}.png"
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            iio.imwrite(out / name, np.round(small).astype(np.uint8))
            rows.append({"plate": "HPA-SCC", "well": f"A{i + 1}", "field": "0", "channel": channel,
                         "channels": "", "label": "", "path": name})
        mask = iio.imread(shared / "hpa_scc_trainandgain/masks" / f"{image_id}_predictedmask.png")
        name = f"hpa/{short}_cells.png"
        iio.imwrite(out / name, mask[FACTOR // 2 :: FACTOR, FACTOR // 2 :: FACTOR].astype(np.uint8))
        rows.append({"plate": "HPA-SCC", "well": f"A{i + 1}", "field": "0", "channel": "", "channels": "",
                     "label": "cells", "path": name})
    _write_index(out / "hpa_index.csv", rows)

    sites = zarr.open_group(str(shared / "jump_rab30_mini/images.zarr"), mode="r")["images"][...]
    rows = []
    start = (sites.shape[-1] - CROP) // 2
    for site, (plate, well, field) in enumerate(JUMP_SITES):
        name = f"jump/{plate}_{well}_s{field}.tif"
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        crop = sites[site, :, start : start + CROP, start : start + CROP]
        tifffile.imwrite(out / name, crop, compression="zlib", photometric="minisblack")
        rows.append({"plate": plate, "well": well, "field": field, "channel": "",
                     "channels": ";".join(JUMP_CHANNELS), "label": "", "path": name})
    _write_index(out / "jump_index.csv", rows)


def _write_index(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).parent)
