"""Do the screen-geometry synthetic fields look like real ones? Side-by-side statistics and a montage.

Run::

    python benchmarks/synthetic_vs_real.py --realdata DIR --out /tmp/compare

Real fields from public data, each set in a folder of ``DIR`` named as here: the two JUMP sites of
``jump_rab30_mini`` (384-px crops, cpg0016), the Opera Phenix Cell Painting field of
``cellpainting_pca_BR00143976`` (1080 px) and the five HPA fields of ``hpa_scc_trainandgain``
(2048-3072 px, with the HPA segmenter's cell masks); pixel sizes are taken as 0.598 and 0.08 um/px
(neither is stated in those files). Synthetic: fields of
``make_demo_plate(geometry="jump")`` and ``geometry="hpa"`` (DMSO / nuclear-import wells).

The same measurements on both, all from the images (no ground truth needed): nuclei per 100 x 100 um
and their equivalent diameter (Otsu on the smoothed DNA image, touching nuclei not split), the fraction
of the field the cytoplasm covers (Otsu on the ER image), the pixel correlation of the ER and RNA images
inside it (Cell Painting), the 99th percentile of DNA over the background median (exposure), and for
HPA the cells per field and their diameter from the masks (ground truth for the synthetic fields).
The montage puts the same physical area of real and synthetic fields next to each other, channel by
channel, each scaled between its 0.5th and 99.8th percentiles.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CP = ("DNA", "ER", "RNA", "AGP", "Mito")
HPA = ("microtubules", "er", "dna", "protein")


def cellpainting_stats(image: np.ndarray, pixel_size: float) -> dict[str, float]:
    """Image statistics of a (DNA, ER, RNA, AGP, Mito) field."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    dna = ndi.gaussian_filter(image[0].astype(np.float32), 1.0 / pixel_size)
    nuclei, _ = ndi.label(dna > threshold_otsu(dna))
    areas = np.bincount(nuclei.ravel())[1:] * pixel_size**2
    areas = areas[areas > 20.0]
    er = ndi.gaussian_filter(image[1].astype(np.float32), 1.0 / pixel_size)
    cytoplasm = er > threshold_otsu(er)
    field_um2 = image.shape[1] * image.shape[2] * pixel_size**2
    return {
        "nuclei per 100x100 um": len(areas) / field_um2 * 1e4,
        "nucleus diameter um": float(np.median(2.0 * np.sqrt(areas / np.pi))),
        "cytoplasm cover": float(cytoplasm.mean()),
        "ER-RNA correlation": float(np.corrcoef(image[1][cytoplasm], image[2][cytoplasm])[0, 1]),
        "DNA p99 / background": float(np.percentile(image[0], 99) / np.median(image[0][~cytoplasm])),
    }


def hpa_stats(image: np.ndarray, cells: np.ndarray, pixel_size: float) -> dict[str, float]:
    """Statistics of a (microtubules, er, dna, protein) field and its cell mask."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    dna = ndi.gaussian_filter(image[2].astype(np.float32), 1.0 / pixel_size)
    nuclei, _ = ndi.label(dna > threshold_otsu(dna))
    n_areas = np.bincount(nuclei.ravel())[1:] * pixel_size**2
    n_areas = n_areas[n_areas > 20.0]
    c_areas = np.bincount(cells.ravel())[1:] * pixel_size**2
    c_areas = c_areas[c_areas > 0]
    return {
        "cells per field": float(len(c_areas)),
        "cells per 100x100 um": len(c_areas) / (cells.size * pixel_size**2) * 1e4,
        "cell diameter um": float(np.median(2.0 * np.sqrt(c_areas / np.pi))),
        "nucleus diameter um": float(np.median(2.0 * np.sqrt(n_areas / np.pi))),
        "cell cover": float((cells > 0).mean()),
    }


def real_cellpainting(root: Path) -> dict[str, np.ndarray]:
    import zarr
    from PIL import Image

    fields = {}
    mini = zarr.open_array(str(root / "jump_rab30_mini" / "images.zarr" / "images"), mode="r")[...]
    order = [1, 2, 4, 0, 3]  # stored as AGP, DNA, ER, Mito, RNA
    for site in range(mini.shape[0]):
        fields[f"JUMP cpg0016 site {site} (384 px)"] = mini[site][order]
    phenix = root / "cellpainting_pca_BR00143976" / "images"
    files = {"DNA": 5, "ER": 2, "RNA": 6, "AGP": 3, "Mito": 4}
    fields["Phenix BR00143976 C03-3"] = np.stack(
        [np.array(Image.open(phenix / f"r03c03f03p01-ch{files[c]}sk1fk1fl1.tiff")) for c in CP])
    return fields


def real_hpa(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from PIL import Image

    folder = root / "hpa_scc_trainandgain"
    ids = sorted({p.name.split("_")[0] for p in (folder / "images").glob("*.png")})
    out = {}
    for image_id in ids:
        image = np.stack([np.array(Image.open(folder / "images" / f"{image_id}_{c}.png"))
                          for c in ("red", "yellow", "blue", "green")])
        out[f"HPA {image_id[:8]}"] = (image, np.array(Image.open(folder / "masks" / f"{image_id}_predictedmask.png")))
    return out


def synthetic(geometry: str, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from subcell_scale.io.demo import PlateEffects, layout_for, phenotypes, synthesize_field

    layout = layout_for(geometry)
    compound = "DMSO" if geometry == "jump" else "NUC-1"
    effects = PlateEffects.draw(layout, layout.field_size, seed=0, plate_index=0)
    fields = []
    for i in range(n):
        image, cells, _ = synthesize_field(layout, phenotypes(layout)[compound], effects,
                                           np.random.default_rng([0, 2, 0, 0, i]), field_size=layout.field_size,
                                           cells_per_field=layout.cells_per_field)
        fields.append((image, cells))
    return fields


def table(rows: dict[str, dict[str, float]]) -> None:
    keys = list(next(iter(rows.values())))
    width = max(len(k) for k in keys)
    print(" " * (width + 2) + "".join(f"{name[:22]:>24s}" for name in rows))
    for key in keys:
        print(f"  {key:{width}s}" + "".join(f"{r[key]:24.2f}" for r in rows.values()))


def montage(tiles: list[list[np.ndarray]], path: Path) -> None:
    from PIL import Image

    def scaled(plane: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(plane, (0.5, 99.8))
        return (np.clip((plane.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)

    rows = [np.concatenate([scaled(t) for t in row], axis=1) for row in tiles]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    print(f"  montage: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realdata", required=True, help="folder holding the real fields' folders (see above)")
    parser.add_argument("--out", default=None, help="folder for montage PNGs (default: none)")
    parser.add_argument("--fields", type=int, default=2, help="synthetic fields per geometry (default: 2)")
    args = parser.parse_args()
    root = Path(args.realdata)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)

    print("Cell Painting (0.598 um/px)")
    real = real_cellpainting(root)
    fake = synthetic("jump", args.fields)
    rows = {name: cellpainting_stats(image, 0.598) for name, image in real.items()}
    rows |= {f"synthetic jump {i}": cellpainting_stats(image, 0.598) for i, (image, _) in enumerate(fake)}
    table(rows)
    if out:
        crop = slice(0, 384)
        montage([[image[c, crop, crop] for c in range(5)] for image in (*real.values(), fake[0][0])],
                out / "cellpainting_real_vs_synthetic.png")

    print("\nHPA confocal (0.08 um/px)")
    real_h = real_hpa(root)
    fake_h = synthetic("hpa", args.fields)
    rows = {name: hpa_stats(image, cells, 0.08) for name, (image, cells) in real_h.items()}
    rows |= {f"synthetic hpa {i}": hpa_stats(image, cells, 0.08) for i, (image, cells) in enumerate(fake_h)}
    table(rows)
    if out:
        crop = slice(0, 1024)
        montage([[image[c, crop, crop][::2, ::2] for c in range(4)] for image, _ in
                 (*list(real_h.values())[:2], fake_h[0])], out / "hpa_real_vs_synthetic.png")


if __name__ == "__main__":
    main()
