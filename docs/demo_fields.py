"""Draw docs/demo_fields.png: one demo field per MoA, HPA-like and Cell Painting layouts.

Run from the repository root: ``python3 docs/demo_fields.py``. The fields are made by the same function
that ``make_demo_plate`` writes into plates (``synthesize_field``, plate 1 acquisition effects), with
each layout's channels scaled alike in every panel so brightness differences between compounds show.
Cell Painting panels show the 256-px window (centre or a corner) of a 512-px field with the most cells.
The last panel of each layout outlines the ground-truth ``cells`` (white) and ``nuclei`` (cyan) labels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from skimage.segmentation import find_boundaries

from subcell_scale.io.demo import CELLPAINTING, DMSO, HPA, PlateEffects, phenotypes, synthesize_field

# display colours (RGB) per channel, as the usual viewers show these stains
COLOURS = {
    # the markers dimmed, as the HPA shows them, so the protein pattern stands out
    "hpa": {"microtubules": (0.55, 0.0, 0.0), "er": (0.4, 0.4, 0.0), "dna": (0.0, 0.2, 0.7), "protein": (0.0, 1.0, 0.0)},
    "cellpainting": {"DNA": (0.0, 0.3, 1.0), "ER": (0.0, 0.9, 0.0), "RNA": (0.6, 0.6, 0.0), "AGP": (1.0, 0.0, 0.0),
                     "Mito": (0.8, 0.0, 0.8)},
}


def composite(image: np.ndarray, lows: np.ndarray, highs: np.ndarray, colours: list[tuple[float, ...]]) -> np.ndarray:
    rgb = np.zeros((*image.shape[1:], 3))
    for plane, lo, hi, colour in zip(image, lows, highs, colours):
        rgb += np.clip((plane - lo) / (hi - lo), 0.0, 1.0)[..., None] * np.asarray(colour)
    return np.clip(rgb, 0.0, 1.0)


def panels(layout, size: int, seed: int, crop: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    effects = PlateEffects.draw(layout, size, seed=seed, plate_index=0)
    table = phenotypes(layout)
    out = []
    for i, name in enumerate([DMSO] + [moa.compound(0)[0] for moa in layout.moas]):
        rng = np.random.default_rng([seed, 5, i])
        image, cells, nuclei = synthesize_field(layout, table[name], effects, rng, field_size=size,
                                                cells_per_field=layout.cells_per_field)
        moa = "DMSO (negcon)" if name == DMSO else next(m.name for m in layout.moas if name.startswith(m.code))
        # of the centre and the four corners, show the window with the most cell pixels
        starts = [((size - crop) // 2,) * 2] + [(y, x) for y in (0, size - crop) for x in (0, size - crop)]
        y, x = max(starts, key=lambda s: int((cells[s[0]:s[0] + crop, s[1]:s[1] + crop] > 0).sum()))
        window = (slice(y, y + crop), slice(x, x + crop))
        out.append((f"{name}: {moa}", image[(slice(None), *window)].astype(float), cells[window], nuclei[window]))
    return out


def main(out: Path) -> None:
    blocks = [(HPA, 512, 512, "HPA-like, 0.32 um/px: microtubules (red), ER (yellow), DNA (blue), protein (green)"),
              (CELLPAINTING, 512, 256, "Cell Painting, 0.598 um/px: DNA (blue), ER (green), RNA (olive), AGP (red), "
                                  "Mito (magenta); 256 px windows of 512 px fields")]
    n_cols = 4
    rows_per_block = [int(np.ceil((len(block[0].moas) + 2) / n_cols)) for block in blocks]
    fig, axes = plt.subplots(sum(rows_per_block), n_cols, figsize=(3.6 * n_cols, 3.9 * sum(rows_per_block)))
    row = 0
    for (layout, size, crop, title), n_rows in zip(blocks, rows_per_block):
        fields = panels(layout, size, seed=0, crop=crop)
        stack = np.stack([f[1] for f in fields])
        lows = np.percentile(stack, 1.0, axis=(0, 2, 3))
        highs = np.percentile(stack, 99.8, axis=(0, 2, 3))
        colours = [COLOURS[layout.name][c] for c in layout.channels]
        block_axes = axes[row:row + n_rows].ravel()
        for ax, (label, image, _, _) in zip(block_axes, fields):
            ax.imshow(composite(image, lows, highs, colours))
            ax.set_title(label, fontsize=10)
        _, image, cells, nuclei = fields[0]
        truth = composite(image, lows, highs, colours) * 0.6
        truth[find_boundaries(cells, mode="inner")] = (1.0, 1.0, 1.0)
        truth[find_boundaries(nuclei, mode="inner")] = (0.0, 1.0, 1.0)
        block_axes[len(fields)].imshow(truth)
        block_axes[len(fields)].set_title("DMSO: ground-truth cells / nuclei", fontsize=10)
        for ax in block_axes:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in block_axes[len(fields) + 1:]:
            ax.axis("off")
        block_axes[0].annotate(title, (0.0, 1.12), xycoords="axes fraction", fontsize=11, fontweight="bold")
        row += n_rows
    fig.subplots_adjust(left=0.01, right=0.99, top=0.97, bottom=0.01, wspace=0.04, hspace=0.22)
    fig.savefig(out, dpi=90)
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("demo_fields.png"))
