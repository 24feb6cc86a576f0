"""How long opening a 384-well x 9-field plate takes, against ome-zarr-py's plate reader.

Usage: python3 benchmarks/bench_open_plate.py [--plate DIR] [--version 0.5|0.4]

Writes the plate once with PlateWriter (tiny 1-channel fields: opening reads metadata, not pixels)
into DIR (default: a temporary folder; an existing plate there is reused), then times in this run:

- ``open_plate``: plate metadata only (what every pipeline call pays);
- listing every well's fields (well metadata read on demand, cached afterwards);
- channel names, pixel size and one field's pixels;
- ome-zarr-py ``Reader`` on the plate root (it builds the stitched viewer pyramid, reading every
  well), as the peer baseline; the ratio is printed.

Then writing a demo-sized plate (24 wells x 2 fields x 4 channels x 512 px, uint16, two levels,
"cells" and "nuclei" labels) with PlateWriter, against ome-zarr-py's ``write_image`` +
``write_labels`` for the same fields and metadata.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from subcell_scale.io import PlateWriter, open_plate
from subcell_scale.io.wells import row_name

ROWS, COLUMNS, FIELDS = 16, 24, 9


def write_plate(path: Path, version: str) -> float:
    start = time.perf_counter()
    image = np.zeros((1, 64, 64), np.uint16)
    with PlateWriter(path, name="bench-384", channel_names=["DNA"], pixel_size=0.65, version=version,
                     rows=ROWS, columns=COLUMNS, field_count=FIELDS, levels=1) as writer:
        for r in range(ROWS):
            for c in range(1, COLUMNS + 1):
                for f in range(FIELDS):
                    writer.write_field(f"{row_name(r)}{c:02d}", f, image)
    return time.perf_counter() - start


def demo_fields(n_wells: int = 24, n_fields: int = 2, size: int = 512) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
    """Smooth cell-like images with noise (compressible like real data) and square label images."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for w in range(n_wells):
        for f in range(n_fields):
            labels = np.zeros((size, size), np.int32)
            image = rng.poisson(100, size=(4, size, size)).astype(np.uint16)
            for cell in range(1, 11):
                cy, cx = rng.integers(40, size - 40, size=2)
                blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 20.0**2))
                image += (blob * rng.integers(500, 3000, size=(4, 1, 1))).astype(np.uint16)
                labels[max(cy - 25, 0) : cy + 25, max(cx - 25, 0) : cx + 25] = cell
            out.append((f"{row_name(w // 6)}{w % 6 + 1:02d}", f, image, labels))
    return out


def write_with_ome_zarr(path: Path, fields: list, version: str) -> None:
    """The same plate written field by field with ome-zarr-py's high-level writers."""
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image, write_labels, write_plate_metadata, write_well_metadata
    from ome_zarr_models.common.omero import Omero

    fmt = FormatV05() if version == "0.5" else FormatV04()
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    omero = Omero.model_validate({"channels": [
        {"label": c, "color": "FFFFFF", "window": {"min": 0, "max": 65535, "start": 0, "end": 4000}}
        for c in ("microtubules", "er", "dna", "protein")]})
    wells: dict[str, list[str]] = {}
    for well, field, image, labels in fields:
        group = root.require_group(well[0]).require_group(str(int(well[1:]))).require_group(str(field))
        wells.setdefault(f"{well[0]}/{int(well[1:])}", []).append(str(field))
        kwargs = {"axes": "cyx", "scale": {"c": 1.0, "y": 0.32, "x": 0.32}, "scale_factors": [2], "fmt": fmt,
                  "storage_options": {"chunks": (1, 256, 256)}}
        write_image(image=image, group=group, omero=omero, **kwargs)
        for name in ("cells", "nuclei"):
            write_labels(labels=labels[None], group=group, name=name, scaler=None, **kwargs)
    for well_path, field_paths in wells.items():
        row, column = well_path.split("/")
        write_well_metadata(root[row][column], [{"path": p} for p in field_paths], fmt=fmt)
    write_plate_metadata(root, list("ABCDEFGH"), [str(i) for i in range(1, 13)], list(wells), fmt=fmt)


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plate", type=Path, default=None, help="folder to keep the plate in (reused if present)")
    parser.add_argument("--version", choices=("0.4", "0.5"), default="0.5")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    folder = args.plate or Path(tempfile.mkdtemp(prefix="bench-open-plate-"))
    path = folder / f"bench-384-{args.version}.zarr"
    if (path / ("zarr.json" if args.version == "0.5" else ".zattrs")).exists():
        print(f"reusing {path}")
    else:
        print(f"writing {ROWS * COLUMNS} wells x {FIELDS} fields to {path} ...")
        print(f"  written in {write_plate(path, args.version):.1f} s")

    t_open, plate = timed(lambda: open_plate(path))
    t_fields, n_fields = timed(lambda: sum(len(plate.fields(w)) for w in plate.wells))
    t_again, _ = timed(lambda: sum(len(plate.fields(w)) for w in plate.wells))
    t_meta, _ = timed(lambda: (plate.channel_names, plate.pixel_size))
    t_first, _ = timed(lambda: plate.read_field(plate.wells[-1], plate.fields(plate.wells[-1])[-1]))
    t_read, _ = timed(lambda: plate.read_field(plate.wells[0], plate.fields(plate.wells[0])[0]))

    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    fmt = FormatV05() if args.version == "0.5" else FormatV04()
    t_reader, _ = timed(lambda: list(Reader(parse_url(str(path), fmt=fmt))()))

    print(f"plate: {len(plate.wells)} wells, {n_fields} fields, NGFF {plate.version}")
    print(f"open_plate (metadata only)          {t_open * 1000:8.1f} ms")
    print(f"fields of every well (first time)   {t_fields * 1000:8.1f} ms")
    print(f"fields of every well (cached)       {t_again * 1000:8.1f} ms")
    print(f"channel names + pixel size          {t_meta * 1000:8.1f} ms")
    print(f"read a field's pixels (first call)  {t_first * 1000:8.1f} ms  (includes codec and dask start-up)")
    print(f"read another field's pixels         {t_read * 1000:8.1f} ms")
    print(f"open + every well's fields          {(t_open + t_fields) * 1000:8.1f} ms  (target < 2000 ms)")
    print(f"ome-zarr-py Reader on the plate     {t_reader * 1000:8.1f} ms")
    print(f"ratio Reader / open_plate           {t_reader / t_open:8.0f} x")
    print(f"ratio Reader / (open + all fields)  {t_reader / (t_open + t_fields):8.1f} x")

    fields = demo_fields()

    def with_writer() -> None:
        with PlateWriter(folder / "demo-writer.zarr", name="demo", channel_names=["microtubules", "er", "dna", "protein"],
                         pixel_size=0.32, version=args.version, rows=8, columns=12, field_count=2) as writer:
            for well, field, image, labels in fields:
                writer.write_field(well, field, image, labels={"cells": labels, "nuclei": labels})

    for old in ("demo-writer.zarr", "demo-ome-zarr.zarr"):  # removing old output is not part of writing
        shutil.rmtree(folder / old, ignore_errors=True)
    cpu = time.process_time()
    t_writer, _ = timed(with_writer)
    cpu_writer, cpu = time.process_time() - cpu, time.process_time()
    t_ome, _ = timed(lambda: write_with_ome_zarr(folder / "demo-ome-zarr.zarr", fields, args.version))
    cpu_ome = time.process_time() - cpu
    print("write 24 wells x 2 fields x 4 ch x 512 px + 2 labels (wall, and CPU of all threads):")
    print(f"  PlateWriter                       {t_writer:8.1f} s  {cpu_writer:6.1f} s CPU")
    print(f"  ome-zarr-py write_image/labels    {t_ome:8.1f} s  {cpu_ome:6.1f} s CPU")
    print(f"  ratio ome-zarr-py / PlateWriter   {t_ome / t_writer:8.1f} x  {cpu_ome / cpu_writer:6.1f} x CPU")


if __name__ == "__main__":
    main()
