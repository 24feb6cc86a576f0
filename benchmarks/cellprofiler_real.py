"""Our CellProfiler view against CellProfiler itself, on a real Cell Painting site.

The site (JUMP plate BR00143976, well C03, site 3: its images in ``images/``, CellProfiler's outline
overlays in ``outlines/`` and a parquet of its measurements, given with ``--site``) comes with
CellProfiler's outlines of its cells and nuclei and CellProfiler's own measurements of 5 cells.
Masks are rebuilt from the outlines (the regions the outlines enclose, each grown over its own
outline by one pixel), each of the 5 cells found under its ``Location_Center``, and measured with
:func:`subcell_scale.cellprofiler.measure_cells` on the raw pixels / 65535. Printed per feature group
(shape: AreaShape, Zernike, Feret; intensity: per channel): the median relative difference and the
share of features within 1 % and 5 %. CellProfiler's intensities are of illumination-corrected images
(``Corr*``), ours of raw ones, so intensities differ by each channel's illumination function at the
cell: the script shows the ratio per channel (a constant per channel and cell means the same numbers
up to that correction).

    python benchmarks/cellprofiler_real.py --site PATH [--out results.csv]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

CHANNELS = {"ch2": "ER", "ch3": "AGP", "ch4": "Mito", "ch5": "DNA", "ch6": "RNA"}
"""This plate's channel files (README of the site): brightfield ch1 is left out."""


def masks_from_outlines(path: Path) -> np.ndarray:
    """Instance labels from a CellProfiler outline overlay: each region the outlines enclose, grown by
    two pixels over its outline (CellProfiler draws outlines on the object's own border pixels)."""
    from PIL import Image
    from scipy import ndimage
    from skimage.segmentation import expand_labels

    outline = np.asarray(Image.open(path))[..., 1] > 0
    inside, _ = ndimage.label(~outline)
    sizes = np.bincount(inside.ravel())
    inside[np.isin(inside, np.flatnonzero(sizes > 0.2 * inside.size))] = 0  # the background region
    return expand_labels(inside, distance=1).astype(np.int32)


def compare(site: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-feature comparison (cell, compartment, group, feature, ours, cellprofiler) and intensity ratios."""
    from PIL import Image

    from subcell_scale.cellprofiler import cellprofiler_pixels, measure_cells

    reference = pd.read_parquet(site / "BR00143976_shrunken.parquet")
    files = {name: next((site / "images").glob(f"*-{ch}sk1*.tiff")) for ch, name in CHANNELS.items()}
    raw = np.stack([np.asarray(Image.open(p)) for p in files.values()])
    pixels = cellprofiler_pixels(raw)
    rows, ratios = [], []
    for compartment in ("Cells", "Nuclei"):
        labels = masks_from_outlines(site / "outlines" / f"{compartment}Outlines_BR00143976_C03_3.tiff")
        x = reference[f"{compartment}_Location_Center_X"].to_numpy()
        y = reference[f"{compartment}_Location_Center_Y"].to_numpy()
        found = labels[np.round(y).astype(int), np.round(x).astype(int)]
        keep = np.where(np.isin(labels, found[found > 0]), labels, 0)
        ours = measure_cells(pixels, keep, list(CHANNELS.values()),
                             ("sizeshape", "zernike", "feret", "intensity"))
        for cell, label in enumerate(found):
            if label == 0:
                continue
            mine = ours.loc[int(label)]
            for name, value in mine.items():
                group, column = _cellprofiler_column(compartment, str(name))
                if column in reference.columns:
                    rows.append({"cell": cell, "compartment": compartment, "group": group, "feature": name,
                                 "ours": float(value), "cellprofiler": float(reference[column].iloc[cell])})
            for channel in CHANNELS.values():
                ratio = (reference[f"{compartment}_Intensity_MeanIntensity_Corr{channel}"].iloc[cell]
                         / mine[f"Intensity_MeanIntensity__{channel}"])
                ratios.append({"cell": cell, "compartment": compartment, "channel": channel, "ratio": float(ratio)})
    return pd.DataFrame(rows), pd.DataFrame(ratios)


def _cellprofiler_column(compartment: str, name: str) -> tuple[str, str]:
    """Our (cp_measure's) column as CellProfiler names it, and its group."""
    if "__" in name:
        feature, channel = name.split("__", 1)
        return "intensity", f"{compartment}_{feature}_Corr{channel}"
    if name.startswith("Zernike"):
        return "zernike", f"{compartment}_AreaShape_{name}"
    if "Feret" in name:
        return "feret", f"{compartment}_AreaShape_{name}"
    return "sizeshape", f"{compartment}_AreaShape_{name}"


def agreement(table: pd.DataFrame) -> pd.DataFrame:
    """Per compartment and group: values compared, median absolute and relative difference, share
    within 1 % / 5 % (Zernike magnitudes are small: their absolute difference says more)."""
    scale = np.maximum(np.abs(table["cellprofiler"]), 1e-3)
    table = table.assign(abs=(table["ours"] - table["cellprofiler"]).abs())
    table = table.assign(rel=table["abs"] / scale)
    return table.groupby(["compartment", "group"]).agg(
        values=("rel", "size"), median_abs_diff=("abs", "median"), median_rel_diff=("rel", "median"),
        within_1pct=("rel", lambda r: float((r <= 0.01).mean())),
        within_5pct=("rel", lambda r: float((r <= 0.05).mean()))).round(4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, required=True, help="the site's folder (images/, outlines/, parquet)")
    parser.add_argument("--out", type=Path, default=None, help="write the per-feature table (CSV)")
    args = parser.parse_args()
    table, ratios = compare(args.site)
    print(agreement(table).to_string())
    print("\nshape features furthest from CellProfiler (median over cells):")
    shape = table[table["group"] != "intensity"]
    worst = shape.assign(rel=(shape["ours"] - shape["cellprofiler"]).abs() / shape["cellprofiler"].abs().clip(1e-3))
    print(worst.groupby("feature")["rel"].median().sort_values(ascending=False).head(8).round(4).to_string())
    print("\nCellProfiler's corrected mean intensity / ours (raw), per channel: mean and CV over cells")
    summary = ratios.groupby(["compartment", "channel"])["ratio"].agg(["mean", "std"])
    summary["cv"] = summary["std"] / summary["mean"]
    print(summary[["mean", "cv"]].round(3).to_string())
    if args.out is not None:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
