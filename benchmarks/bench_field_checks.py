"""What the integrity checks of a field read cost, as ratios to reading the field itself.

Usage: python3 benchmarks/bench_field_checks.py [--repeats N]

Writes a JUMP-sized field (5 channels x 1080 x 1080 uint16, Opera Phenix size, 256 px chunks: 125
chunk files, plus a "cells" label image) with PlateWriter into a temporary folder, then times:

- ``read_field`` with ``missing_chunks="raise"`` (every chunk checked against one listing of the
  array) against ``missing_chunks="fill"`` (zarr alone);
- ``field_fingerprint`` (one listing of the image and of the label array) against ``read_field``;
- ``label_names`` (labels listing, image listing and a look at the labels group on disk) against
  ``read_field``.

Best of N runs each; the ratios are printed. Local disk only: on object storage a listing is one
request per 1000 keys, against one request per chunk for the read.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from subcell_scale.io import PlateWriter, field_fingerprint, open_plate


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(repeats: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(100, 4000, (5, 1080, 1080), dtype=np.uint16)
    labels = np.zeros((1080, 1080), np.uint32)
    labels[100:300, 100:300] = 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.zarr"
        with PlateWriter(path, name="bench", channel_names=["AGP", "DNA", "ER", "Mito", "RNA"], pixel_size=0.6,
                         chunks=(1, 256, 256), levels=1) as writer:
            writer.write_field("A01", "0", image, labels={"cells": labels})
        checked, filled = open_plate(path), open_plate(path, missing_chunks="fill")
        t_fill = _best(lambda: filled.read_field("A01", "0"), repeats)
        t_raise = _best(lambda: checked.read_field("A01", "0"), repeats)
        t_print = _best(lambda: field_fingerprint(checked, "A01", "0", labels="cells"), repeats)
        t_names = _best(lambda: checked.label_names("A01", "0"), repeats)
    print(f"read_field, fill values:       {t_fill * 1e3:8.1f} ms")
    print(f"read_field, chunks checked:    {t_raise * 1e3:8.1f} ms   ratio {t_raise / t_fill:.3f}")
    print(f"field_fingerprint:             {t_print * 1e3:8.1f} ms   ratio to read {t_print / t_fill:.3f}")
    print(f"label_names:                   {t_names * 1e3:8.1f} ms   ratio to read {t_names / t_fill:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    main(parser.parse_args().repeats)
