"""Synthetic fluorescence fields: cell layouts, organelle patterns and a camera model.

The demo plates need cells that a segmenter, a crop extractor and a ViT can treat like real ones, while
every answer is known: which pixels belong to which cell and nucleus, and which protein pattern each
well was given. Everything here is pure numpy/scipy on in-memory arrays, and every random draw comes from
the ``numpy.random.Generator`` passed in, so a seed fixes the pixels exactly.

Geometry is built once per field (:func:`layout_cells`): star-shaped cells compete for pixels by their
normalised radius, which gives touching cells with shared straight-ish borders, each with one nucleus
inside. Channels are then painted from per-field maps (nucleus, cytoplasm thickness, membrane, reticular
and chromatin textures, random-walk filaments, Gaussian puncta), and :func:`acquire` turns the noise-free
signal into camera counts with vignetting, shot and read noise.

Two painters draw the small demo fields (:func:`hpa_field`, :func:`cellpainting_field`); two more draw
fields that look like real screens at their real scale, for plate-scale benchmarks:
:func:`jump_field` (JUMP's widefield Cell Painting at about 0.6 um/px) and :func:`hpa_confocal_field`
(the HPA Cell Atlas' confocal fields at 0.08 um/px).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.fft as sfft
from scipy import ndimage as ndi

from ..errors import ConfigError

HPA_CHANNELS = ("microtubules", "er", "dna", "protein")
CELLPAINTING_CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")

HPA_PATTERNS = (
    "baseline",
    "nucleoplasm",
    "nucleoli",
    "nuclear_speckles",
    "cytosol",
    "endoplasmic_reticulum",
    "golgi",
    "plasma_membrane",
    "mitochondria",
    "vesicles",
)
"""Protein patterns of the HPA-like layout; ``baseline`` is the diffuse cytosolic + nuclear DMSO look."""

CELLPAINTING_PATTERNS = (
    "baseline",
    "mito_fragmentation",
    "er_stress",
    "actin_rearrangement",
    "nucleolar_stress",
    "nuclear_enlargement",
    "golgi_dispersal",
)
"""Phenotypes of the Cell Painting layout; ``baseline`` is the untreated (DMSO) look."""


@dataclass(frozen=True)
class Phenotype:
    """What a well's compound does to its cells.

    Parameters
    ----------
    pattern
        One of :data:`HPA_PATTERNS` or :data:`CELLPAINTING_PATTERNS`.
    strength
        How completely the cells show the pattern (0 = baseline look, 1 = full effect); compounds of one
        MoA share the pattern and differ in strength, intensity and size.
    intensity
        Multiplies the affected channel's brightness.
    size
        Multiplies the length scale of the pattern's structures (puncta, tubules, reticulum, rim width).
    """

    pattern: str = "baseline"
    strength: float = 1.0
    intensity: float = 1.0
    size: float = 1.0


@dataclass(frozen=True)
class CellLayout:
    """Ground-truth geometry of one field.

    Row ``i`` of every per-cell array describes the cell whose label value is ``i + 1``.

    Attributes
    ----------
    labels
        int32 (y, x) whole-cell instance labels, 0 = background.
    nuclei
        int32 (y, x) nucleus labels carrying the value of the cell they sit in.
    cell_rho
        float32 (y, x) normalised radius inside the owning cell (0 at its centre, 1 at its outline;
        1 on background); used for the thinning of the cytoplasm towards the cell edge.
    nucleus_rho
        float32 (y, x) radius normalised by the owning cell's nucleus outline (< 1 inside the nucleus);
        large on background.
    centres, nucleus_centres, centrosomes
        (n, 2) float (y, x) pixel positions.
    radii, nucleus_radii
        (n,) mean radii in pixels.
    """

    labels: np.ndarray
    nuclei: np.ndarray
    cell_rho: np.ndarray
    nucleus_rho: np.ndarray
    centres: np.ndarray
    radii: np.ndarray
    nucleus_centres: np.ndarray
    nucleus_radii: np.ndarray
    centrosomes: np.ndarray

    @property
    def n_cells(self) -> int:
        return int(self.radii.shape[0])


# ----------------------------------------------------------------------------------------------------
# geometry


@dataclass(frozen=True)
class _Outline:
    """A star-shaped outline r(theta) = R (1 + e cos 2(theta - phi) + sum_k a_k cos(k theta + p_k))."""

    centre: np.ndarray
    radius: float
    elongation: float
    orientation: float
    harmonics: np.ndarray  # (k, 3): order, amplitude, phase

    def extent(self) -> float:
        return self.radius * (1.0 + self.elongation + float(np.abs(self.harmonics[:, 1]).sum())) + 2.0

    def rho(self, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """Distance from the centre divided by the outline radius in that direction (float32)."""
        dy = (yy - self.centre[0]).astype(np.float32)
        dx = (xx - self.centre[1]).astype(np.float32)
        d2 = np.maximum(dx * dx + dy * dy, np.float32(1e-12))
        # cos 2(theta - phi) from the coordinates directly: no trigonometry per pixel
        c2, s2 = np.float32(np.cos(2.0 * self.orientation)), np.float32(np.sin(2.0 * self.orientation))
        r = 1.0 + np.float32(self.elongation) * (((dx * dx - dy * dy) * c2 + 2.0 * dx * dy * s2) / d2)
        if len(self.harmonics):
            # cos(k theta + p) = Re(z**k exp(ip)) with z the unit direction as a complex number
            z = (dx + 1j * dy).astype(np.complex64) / np.sqrt(d2)
            power, current = z, 1
            for order, amplitude, phase in self.harmonics:
                while current < order:
                    power, current = power * z, current + 1
                r += np.float32(amplitude) * (power * np.complex64(np.exp(1j * phase))).real
        return np.sqrt(d2) / (np.float32(self.radius) * r)


def _random_outline(rng: np.random.Generator, centre: np.ndarray, radius: float, elongation: float,
                    orientation: float, roughness: float) -> _Outline:
    orders = np.arange(3, 10, dtype=float)
    amplitudes = rng.normal(0.0, roughness, orders.size) / (orders - 2.0)
    phases = rng.uniform(0.0, 2.0 * np.pi, orders.size)
    return _Outline(np.asarray(centre, dtype=float), float(radius), float(elongation), float(orientation),
                    np.stack([orders, amplitudes, phases], axis=1))


def _bbox(shape: tuple[int, int], centre: np.ndarray, extent: float) -> tuple[slice, slice]:
    y0 = max(int(np.floor(centre[0] - extent)), 0)
    x0 = max(int(np.floor(centre[1] - extent)), 0)
    y1 = max(min(int(np.ceil(centre[0] + extent)) + 1, shape[0]), y0)
    x1 = max(min(int(np.ceil(centre[1] + extent)) + 1, shape[1]), x0)
    return slice(y0, y1), slice(x0, x1)


def _grid(bb: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """Open (y, x) coordinate grids of a box, like ``np.ogrid`` at a fraction of its cost."""
    return (np.arange(bb[0].start, bb[0].stop, dtype=np.float32)[:, None],
            np.arange(bb[1].start, bb[1].stop, dtype=np.float32)[None, :])


def _place_centres(rng: np.random.Generator, shape: tuple[int, int], radii: np.ndarray,
                   touching: float) -> tuple[list[int], np.ndarray]:
    """Place cell centres inside the field; about ``touching`` of them next to an earlier cell.

    Centres keep 0.78 (r_i + r_j) apart, so two outlines overlap and the competition in
    :func:`layout_cells` draws a shared border between them without cutting into either nucleus.
    A cell that finds no room in 80 tries is left out.
    """
    centres = np.zeros((len(radii), 2))
    placed_r = np.zeros(len(radii))
    kept: list[int] = []
    high = np.array(shape, dtype=float) - 1.0
    for i, r in enumerate(radii):
        k = len(kept)
        for _ in range(80):
            if k and rng.random() < touching:
                j = int(rng.integers(k))
                angle = rng.uniform(0.0, 2.0 * np.pi)
                c = centres[j] + (r + placed_r[j]) * rng.uniform(0.8, 0.95) * np.array([np.sin(angle), np.cos(angle)])
            else:
                c = rng.uniform((0.0, 0.0), high)
            if not (0.0 <= c[0] <= high[0] and 0.0 <= c[1] <= high[1]):
                continue
            gaps = np.hypot(centres[:k, 0] - c[0], centres[:k, 1] - c[1]) - 0.78 * (r + placed_r[:k])
            if k == 0 or gaps.min() >= 0.0:
                centres[k], placed_r[k] = c, r
                kept.append(i)
                break
    return kept, centres[:len(kept)].copy()


def layout_cells(shape: tuple[int, int], n_cells: int, rng: np.random.Generator, *,
                 radius_px: tuple[float, float], nucleus_fraction: tuple[float, float] = (0.33, 0.45),
                 elongation: tuple[float, float] = (0.0, 0.45), roughness: float = 0.1,
                 touching: float = 0.5, spread: float = 1.0) -> CellLayout:
    """Lay out up to ``n_cells`` cells with one nucleus each in a field of ``shape``.

    Parameters
    ----------
    shape
        (y, x) field size in pixels.
    n_cells
        Cells asked for; fewer come back when the field is too crowded to place them all.
    rng
        Source of every random draw.
    radius_px
        Range of mean cell radii in pixels (uniform).
    nucleus_fraction
        Range of nucleus radius as a fraction of the cell radius.
    elongation
        Range of the second-harmonic elongation of the outline (0 = round).
    roughness
        Scale of the higher harmonics that make outlines irregular.
    touching
        Fraction of cells placed right next to an earlier one, so segmenters meet touching cells.
    spread
        Outline radius over the radius used to place the cell: above 1, cells reach into their
        neighbours' space and share borders with most of them, as in a confluent monolayer (the
        nuclei keep their size).

    Returns
    -------
    CellLayout
        Labels 1..n in placement order; every cell contains exactly one nucleus carrying its label and
        its centre lies inside the field (cells may be cut by the field border).
    """
    shape = (int(shape[0]), int(shape[1]))
    radii_all = np.sort(rng.uniform(radius_px[0], radius_px[1], n_cells))[::-1]
    kept, centres = _place_centres(rng, shape, radii_all, touching)
    radii = radii_all[kept]
    n = len(kept)

    cells: list[_Outline] = []
    nuclei: list[_Outline] = []
    centrosomes = np.zeros((n, 2))
    for i in range(n):
        elong = rng.uniform(*elongation)
        orient = rng.uniform(0.0, np.pi)
        cell = _random_outline(rng, centres[i], radii[i] * spread, elong, orient, roughness)
        n_radius = radii[i] * rng.uniform(*nucleus_fraction)
        off_angle = rng.uniform(0.0, 2.0 * np.pi)
        direction = np.array([np.sin(off_angle), np.cos(off_angle)])
        offset = radii[i] * rng.uniform(0.0, 0.12) * direction
        nucleus = _Outline(centres[i] + offset, float(n_radius), 0.6 * elong + rng.uniform(0.0, 0.08),
                           orient + rng.normal(0.0, 0.2), np.zeros((0, 3)))
        # the centrosome sits just outside the nucleus, on the side with more cytoplasm
        c_angle = off_angle + np.pi + rng.normal(0.0, 0.5)
        centrosomes[i] = nucleus.centre + 1.15 * n_radius * np.array([np.sin(c_angle), np.cos(c_angle)])
        cells.append(cell)
        nuclei.append(nucleus)

    best = np.full(shape, np.inf, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.int32)
    boxes = []
    for i, cell in enumerate(cells):
        bb = _bbox(shape, cell.centre, cell.extent())
        boxes.append(bb)
        rho = cell.rho(*_grid(bb)).astype(np.float32)
        take = (rho < 1.0) & (rho < best[bb])
        best[bb][take] = rho[take]
        labels[bb][take] = i + 1

    nucleus_rho = np.full(shape, 10.0, dtype=np.float32)
    nuc_labels = np.zeros(shape, dtype=np.int32)
    keep = np.zeros(n, dtype=bool)
    for i, (nucleus, bb) in enumerate(zip(nuclei, boxes)):
        own = labels[bb] == i + 1
        seed_px = tuple(np.clip(np.round(nucleus.centre).astype(int), 0, np.array(shape) - 1))
        if labels[seed_px] != i + 1:
            labels[bb][own] = 0
            continue
        own = _component_at(own, (seed_px[0] - bb[0].start, seed_px[1] - bb[1].start))
        labels[bb][(labels[bb] == i + 1) & ~own] = 0
        rho_n = nucleus.rho(*_grid(bb))
        nucleus_rho[bb][own] = rho_n[own]
        # the nucleus only needs its own, smaller box to find its connected part
        nb = _bbox(shape, nucleus.centre, nucleus.radius * (1.0 + nucleus.elongation) + 2.0)
        inner = (slice(nb[0].start - bb[0].start, nb[0].stop - bb[0].start),
                 slice(nb[1].start - bb[1].start, nb[1].stop - bb[1].start))
        inside = _component_at(own[inner] & (rho_n[inner] < 1.0), (seed_px[0] - nb[0].start, seed_px[1] - nb[1].start))
        nuc_labels[nb][inside] = i + 1
        keep[i] = True
        if not (labels[tuple(np.clip(np.round(centrosomes[i]).astype(int), 0, np.array(shape) - 1))] == i + 1):
            centrosomes[i] = nucleus.centre

    # renumber 1..m in placement order so that row i of the tables is label i + 1
    lookup = np.zeros(n + 1, dtype=np.int32)
    lookup[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    labels = lookup[labels]
    nuc_labels = lookup[nuc_labels]
    cell_rho = np.where(labels > 0, best, np.float32(1.0)).astype(np.float32)
    nucleus_rho = np.where(labels > 0, nucleus_rho, np.float32(10.0)).astype(np.float32)
    return CellLayout(
        labels=labels,
        nuclei=nuc_labels,
        cell_rho=cell_rho,
        nucleus_rho=nucleus_rho,
        centres=np.array([c.centre for c in cells]).reshape(-1, 2)[keep],
        radii=radii[keep],
        nucleus_centres=np.array([c.centre for c in nuclei]).reshape(-1, 2)[keep],
        nucleus_radii=np.array([c.radius for c in nuclei])[keep],
        centrosomes=centrosomes[keep],
    )


def _component_at(mask: np.ndarray, point: tuple[int, int]) -> np.ndarray:
    """The connected part of ``mask`` that contains ``point`` (empty when the point is outside it)."""
    components, count = ndi.label(mask)
    if count <= 1:
        return mask if mask[point] else np.zeros_like(mask)
    value = components[point]
    return components == value if value else np.zeros_like(mask)


# ----------------------------------------------------------------------------------------------------
# painting helpers


class _Painter:
    """Per-field maps shared by the channel painters, each computed once and only when asked for.

    Some structures are drawn per pixel (point densities, random-walk steps), tuned at the demo
    plates' pixel size. ``tuned_pixel_size`` names that size when painting at another one: ``fine``
    (tuned size over this one) then scales densities and steps, so structures keep their size and
    number per square micrometre. It is exactly 1.0 without it, leaving the demo plates unchanged.

    ``contact_um`` thins the cytoplasm over that distance from every outline, the borders shared with
    neighbours included: in a confluent monolayer cells are flat where they meet, so each contact shows
    as a dim line, as it does in real fields (the demo's mostly separate cells do without).
    """

    def __init__(self, layout: CellLayout, pixel_size: float, rng: np.random.Generator, *,
                 tuned_pixel_size: float | None = None, contact_um: float | None = None) -> None:
        self.layout = layout
        self.um = 1.0 / pixel_size  # pixels per micrometre
        self.fine = 1.0 if tuned_pixel_size is None else tuned_pixel_size / pixel_size
        self.contact_um = contact_um
        self.rng = rng
        self.shape = layout.labels.shape
        self._textures: dict[float, np.ndarray] = {}

    # masks ---------------------------------------------------------------------------------------
    @cached_property
    def cell(self) -> np.ndarray:
        return (self.layout.labels > 0).astype(np.float32)

    @cached_property
    def nucleus(self) -> np.ndarray:
        return (self.layout.nuclei > 0).astype(np.float32)

    @cached_property
    def cytoplasm(self) -> np.ndarray:
        return self.cell - self.nucleus

    @cached_property
    def thickness(self) -> np.ndarray:
        """Cytoplasm height profile: thick around the nucleus, thin at the cell edge."""
        rho = self.layout.cell_rho
        height = self.cell * np.sqrt(np.clip(1.0 - rho * rho, 0.04, 1.0))
        if self.contact_um:
            inside = ndi.distance_transform_edt(~self.boundary & (self.layout.labels > 0)).astype(np.float32)
            height *= 1.0 - 0.75 * np.exp(-inside / np.float32(self.contact_um * self.um))
        return height.astype(np.float32)

    @cached_property
    def perinuclear(self) -> np.ndarray:
        """Distance from the nucleus outline in units of nucleus radii (0 inside the nucleus)."""
        return np.clip(self.layout.nucleus_rho - 1.0, 0.0, None) * self.cell

    @cached_property
    def boundary(self) -> np.ndarray:
        """Pixels on a cell outline: next to background or another cell."""
        lab = self.layout.labels
        edge = np.zeros(self.shape, dtype=bool)
        edge[1:, :] |= lab[1:, :] != lab[:-1, :]
        edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
        return edge & (lab > 0)

    def membrane(self, width_um: float) -> np.ndarray:
        """A ring along every cell outline, ``width_um`` wide, peak about 1."""
        sigma = max(width_um * self.um / 2.0, 0.5)
        ring = ndi.gaussian_filter(self.boundary.astype(np.float32), sigma, truncate=3.0)
        return np.clip(ring * (2.5 * sigma), 0.0, 1.0) * self.cell

    def per_cell(self, values: np.ndarray) -> np.ndarray:
        """Paint one value per cell onto its pixels (0 on background)."""
        return np.concatenate([[0.0], np.asarray(values, dtype=np.float32)]).astype(np.float32)[self.layout.labels]

    def expression(self, spread: float) -> np.ndarray:
        """Cell-to-cell expression level: log-normal per cell with median 1."""
        return self.per_cell(np.exp(self.rng.normal(0.0, spread, self.layout.n_cells)))

    # textures ------------------------------------------------------------------------------------
    @cached_property
    def _white_spectrum(self) -> np.ndarray:
        return sfft.rfft2(self.rng.standard_normal(self.shape, dtype=np.float32))

    @cached_property
    def _freq2(self) -> np.ndarray:
        fy = sfft.fftfreq(self.shape[0]).astype(np.float32)[:, None]
        fx = sfft.rfftfreq(self.shape[1]).astype(np.float32)[None, :]
        return fy * fy + fx * fx

    def texture(self, scale_um: float) -> np.ndarray:
        """Band-pass noise with structures about ``scale_um`` across, zero mean and unit spread.

        All textures of a field filter one white-noise spectrum (a difference of Gaussians applied in
        Fourier space), so each costs a single inverse FFT; a scale asked for twice is reused.
        """
        if scale_um not in self._textures:
            self._textures[scale_um] = self._band(scale_um)
        return self._textures[scale_um]

    def _band(self, scale_um: float) -> np.ndarray:
        s = max(scale_um * self.um / 2.5, 0.6)
        f2 = self._freq2 * np.float32(-2.0 * np.pi * np.pi * s * s)
        transfer = np.exp(f2) - np.exp(f2 * np.float32(1.7 * 1.7))
        band = sfft.irfft2(self._white_spectrum * transfer, s=self.shape)
        return band / (band.std() + np.float32(1e-6))

    def reticulum(self, scale_um: float) -> np.ndarray:
        """A network of thin tubules: the zero set of band-pass noise."""
        t = self.texture(scale_um)
        return np.exp(-0.5 * (t / 0.45) ** 2)

    @cached_property
    def nucleoli(self) -> np.ndarray:
        """Soft nucleolar discs, 1-4 per nucleus, inside the inner part of the nucleus."""
        return self.nucleolar_discs(count=(1, 5), radius_um=(0.9, 1.7))

    def nucleolar_discs(self, *, count: tuple[int, int], radius_um: tuple[float, float]) -> np.ndarray:
        """``count`` (low, high exclusive) discs per nucleus with radii drawn from ``radius_um``."""
        out = np.zeros(self.shape, dtype=np.float32)
        lay = self.layout
        for i in range(lay.n_cells):
            k = int(self.rng.integers(*count))
            angles = self.rng.uniform(0.0, 2.0 * np.pi, k)
            dists = lay.nucleus_radii[i] * np.sqrt(self.rng.uniform(0.0, 0.35, k))
            radii = self.rng.uniform(*radius_um, k) * self.um
            for a, d, r in zip(angles, dists, radii):
                c = lay.nucleus_centres[i] + d * np.array([np.sin(a), np.cos(a)])
                bb = _bbox(self.shape, c, r + 2.0)
                yy, xx = _grid(bb)
                disc = np.clip(r + 0.5 - np.hypot(yy - c[0], xx - c[1]), 0.0, 1.0).astype(np.float32)
                np.maximum(out[bb], disc, out=out[bb])
        return out * self.nucleus

    # point and filament structures ---------------------------------------------------------------
    def splat(self, points: np.ndarray, sigma_px: float, weights: np.ndarray | None = None) -> np.ndarray:
        """Gaussian spots of width ``sigma_px`` at ``points`` (m, 2); an isolated spot peaks at ``weight``."""
        h, w = self.shape
        p = np.round(points).astype(np.int64)
        ok = (p[:, 0] >= 0) & (p[:, 0] < h) & (p[:, 1] >= 0) & (p[:, 1] < w)
        wts = np.ones(len(p), dtype=np.float64) if weights is None else np.asarray(weights, dtype=np.float64)
        img = np.bincount(p[ok, 0] * w + p[ok, 1], weights=wts[ok], minlength=h * w).reshape(h, w)
        sigma_px = max(sigma_px, 0.5)
        return (ndi.gaussian_filter(img.astype(np.float32), sigma_px, truncate=3.0)
                * np.float32(2.0 * np.pi * sigma_px * sigma_px))

    def stamp(self, points: np.ndarray, sigma_px: float, weights: np.ndarray) -> np.ndarray:
        """Like :meth:`splat` for a handful of points: each Gaussian is drawn on its own small box."""
        out = np.zeros(self.shape, dtype=np.float32)
        for point, weight in zip(points, weights):
            bb = _bbox(self.shape, point, 3.0 * sigma_px + 1.0)
            yy, xx = _grid(bb)
            out[bb] += np.float32(weight) * np.exp(
                -((yy - point[0]) ** 2 + (xx - point[1]) ** 2) / (2.0 * sigma_px * sigma_px)).astype(np.float32)
        return out

    def sample(self, density: np.ndarray) -> np.ndarray:
        """Points drawn pixel by pixel with probability ``density`` (clipped to [0, 1]), jittered."""
        hit = self.rng.random(self.shape, dtype=np.float32) < density
        pts = np.argwhere(hit).astype(np.float64)
        return pts + self.rng.uniform(-0.5, 0.5, pts.shape)

    def owner(self, points: np.ndarray) -> np.ndarray:
        p = np.clip(np.round(points).astype(np.int64), 0, np.array(self.shape) - 1)
        return self.layout.labels[p[:, 0], p[:, 1]]

    def walks(self, starts: np.ndarray, *, steps: int, step_px: float, wiggle: float,
              angles: np.ndarray | None = None, stay_in: np.ndarray | None = None) -> np.ndarray:
        """Random-walk filaments from ``starts``; each stops when it leaves its own cell.

        ``wiggle`` is the standard deviation of the direction change per step (radians); ``stay_in``
        (bool map) additionally stops walks that leave it. All steps of all walks are drawn at once
        (cumulative sums of turns and moves), then each walk is cut at its first step outside.
        Returns every visited point (m, 2).
        """
        n = len(starts)
        if n == 0 or steps <= 0:
            return np.zeros((0, 2))
        h, w = self.shape
        start = np.asarray(starts, dtype=np.float64)
        heading0 = self.rng.uniform(0.0, 2.0 * np.pi, n) if angles is None else np.asarray(angles, dtype=np.float64)
        heading = heading0 + np.cumsum(self.rng.normal(0.0, wiggle, (steps, n)), axis=0)
        pos = np.empty((steps + 1, n, 2))
        pos[0] = start
        pos[1:, :, 0] = start[:, 0] + step_px * np.cumsum(np.sin(heading), axis=0)
        pos[1:, :, 1] = start[:, 1] + step_px * np.cumsum(np.cos(heading), axis=0)
        inside = (pos[..., 0] >= 0) & (pos[..., 0] <= h - 1) & (pos[..., 1] >= 0) & (pos[..., 1] <= w - 1)
        idx = np.round(np.clip(pos, 0, [h - 1, w - 1])).astype(np.intp)
        own = self.layout.labels[idx[0, :, 0], idx[0, :, 1]]
        ok = inside & (self.layout.labels[idx[..., 0], idx[..., 1]] == own) & (own > 0)
        if stay_in is not None:
            ok &= stay_in[idx[..., 0], idx[..., 1]]
        alive = np.logical_and.accumulate(ok, axis=0)
        return pos[alive]

    def per_cell_points(self, centres: np.ndarray, counts: np.ndarray, spread_px: np.ndarray) -> np.ndarray:
        """Gaussian clouds of ``counts[i]`` points around ``centres[i]`` with spread ``spread_px[i]``."""
        idx = np.repeat(np.arange(len(centres)), counts)
        return centres[idx] + self.rng.normal(0.0, 1.0, (idx.size, 2)) * np.asarray(spread_px)[idx, None]


def _unit(img: np.ndarray, q: float = 99.5) -> np.ndarray:
    """Scale so that the ``q`` percentile of the non-zero pixels is 1 (structures keep their contrast)."""
    nz = img[img > 0]
    if nz.size == 0:
        return img.astype(np.float32)
    return (img / np.float32(np.percentile(nz, q) + 1e-6)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# HPA-like layout: microtubules, ER, DNA, protein


def _hpa_dna(p: _Painter) -> np.ndarray:
    chromatin = p.texture(1.5)
    content = p.per_cell(np.exp(p.rng.normal(0.0, 0.2, p.layout.n_cells)))
    edge = np.clip((1.0 - p.layout.nucleus_rho) * 6.0, 0.0, 1.0)
    dna = p.nucleus * content * (0.75 + 0.18 * chromatin) * (0.7 + 0.3 * edge) * (1.0 - 0.65 * p.nucleoli)
    return np.clip(dna, 0.0, None)


def _hpa_microtubules(p: _Painter) -> np.ndarray:
    lay = p.layout
    per_cell = np.maximum((lay.radii / p.um * 4.0).astype(int), 30)
    starts = np.repeat(lay.centrosomes, per_cell, axis=0)
    jitter = p.rng.normal(0.0, 0.4 * p.um, starts.shape)
    steps = int(np.ceil(2.0 * lay.radii.max() / 1.5)) if lay.n_cells else 0
    pts = p.walks(starts + jitter, steps=steps, step_px=1.5, wiggle=0.1)
    fibres = _unit(p.splat(pts, 0.3 * p.um, np.full(len(pts), 0.5)))
    mtoc = p.stamp(lay.centrosomes, 0.8 * p.um, np.full(lay.n_cells, 1.2))
    diffuse = 0.18 * p.thickness
    over_nucleus = 1.0 - 0.55 * p.nucleus
    return (np.minimum(fibres, 1.6) * p.cell * over_nucleus + mtoc + diffuse) * p.expression(0.25)


def _er_map(p: _Painter, *, scale_um: float = 0.9, reach: float = 0.9, rim: float = 0.4) -> np.ndarray:
    """Reticular ER, dense around the nucleus and thinning out towards the cell edge, plus the envelope."""
    net = p.reticulum(scale_um)
    envelope = np.exp(-p.perinuclear / reach) * p.thickness * (1.0 - p.nucleus)
    nuclear_rim = np.exp(-0.5 * ((p.layout.nucleus_rho - 1.0) / 0.05) ** 2) * p.cell
    sheets = 0.25 * envelope
    return (0.85 * net + 0.15) * envelope + sheets + rim * nuclear_rim


def _hpa_er(p: _Painter) -> np.ndarray:
    return _er_map(p) * p.expression(0.25)


def _hpa_protein(p: _Painter, ph: Phenotype) -> np.ndarray:
    lay = p.layout
    s = ph.size
    n = lay.n_cells
    nucleoplasm = p.nucleus * (0.85 + 0.15 * p.texture(0.9)) * (1.0 - 0.8 * p.nucleoli)
    cytosol = p.thickness * (1.0 - p.nucleus) * (0.9 + 0.1 * p.texture(1.5))
    baseline = 0.55 * cytosol + 0.35 * nucleoplasm
    pattern = ph.pattern
    if pattern == "baseline":
        img = baseline
    elif pattern == "nucleoplasm":
        img = nucleoplasm
    elif pattern == "nucleoli":
        img = p.nucleolar_discs(count=(1, 5), radius_um=(0.9 * s, 1.7 * s)) + 0.06 * nucleoplasm
    elif pattern == "nuclear_speckles":
        inner = p.nucleus * (lay.nucleus_rho < 0.85)
        pts = p.sample(inner * (22.0 / (np.pi * (lay.nucleus_radii.mean() * 0.85) ** 2 + 1.0)))
        img = np.minimum(p.splat(pts, 0.45 * s * p.um), 1.5) * p.nucleus + 0.12 * nucleoplasm
    elif pattern == "cytosol":
        img = cytosol
    elif pattern == "endoplasmic_reticulum":
        img = _er_map(p, reach=0.9 * s)
    elif pattern == "golgi":
        towards = lay.centrosomes + 0.3 * (lay.centrosomes - lay.nucleus_centres)
        counts = p.rng.integers(12, 24, n)
        pts = p.per_cell_points(towards, counts, np.full(n, 1.6 * s * p.um))
        pts = pts[p.owner(pts) > 0]
        img = (np.minimum(p.splat(pts, 0.55 * p.um, np.full(len(pts), 0.8)), 1.5) * (1.0 - 0.7 * p.nucleus)
               + 0.05 * cytosol)
    elif pattern == "plasma_membrane":
        img = p.membrane(0.9 * s) + 0.08 * cytosol
    elif pattern == "mitochondria":
        # a perinuclear network of branched tubules
        density = 0.02 / p.fine**2 * np.exp(-p.perinuclear / 1.5) * (1.0 - p.nucleus) * p.cell
        starts = p.sample(density)
        pts = p.walks(starts, steps=max(int(3.5 * s * p.um / p.fine), 2), step_px=p.fine, wiggle=0.3,
                      stay_in=p.cytoplasm > 0)
        img = np.minimum(p.splat(pts, 0.3 * p.um, np.full(len(pts), 0.45)), 1.5) + 0.04 * cytosol
    elif pattern == "vesicles":
        density = 0.0035 / p.fine**2 * p.thickness * (1.0 - p.nucleus)
        pts = p.sample(density)
        img = np.minimum(p.splat(pts, 0.35 * s * p.um), 1.5) + 0.05 * cytosol
    else:
        msg = f"unknown HPA protein pattern {pattern!r}; expected one of {', '.join(HPA_PATTERNS)}"
        raise ConfigError(msg)
    mixed = ph.strength * _unit(img) + (1.0 - ph.strength) * _unit(baseline)
    return mixed * ph.intensity * p.expression(0.45)


def hpa_field(layout: CellLayout, phenotype: Phenotype, pixel_size: float,
              rng: np.random.Generator) -> np.ndarray:
    """Noise-free HPA-like signal (4, y, x) float32 in channel order :data:`HPA_CHANNELS`.

    Microtubules radiate from the centrosome, the ER is a perinuclear reticulum with the nuclear envelope,
    DNA is textured with nucleolar holes, and the protein channel follows ``phenotype``. Values are
    relative brightness (structures about 1); :func:`acquire` turns them into counts.
    """
    p = _Painter(layout, pixel_size, rng)
    channels = [_hpa_microtubules(p), _hpa_er(p), _hpa_dna(p), _hpa_protein(p, phenotype)]
    return _optics(np.stack(channels).astype(np.float32), sigma_px=0.2 * p.um, haze=0.0)


# ----------------------------------------------------------------------------------------------------
# HPA Cell Atlas confocal fields (0.08 um/px): the same channels and protein patterns at full resolution

_HPA_TUNED_PIXEL_SIZE = 0.32
"""Pixel size at which the HPA-like painters' per-pixel densities and steps were tuned."""


def _confocal_microtubules(p: _Painter) -> np.ndarray:
    """A dense mesh of long, gently curving filaments over the cytoplasm, thinning over the nucleus."""
    density = 0.03 / p.fine**2 * p.thickness * (1.0 - 0.9 * p.nucleus)
    pts = p.walks(p.sample(density), steps=int(15.0 * p.um / p.fine), step_px=p.fine, wiggle=0.12)
    fibres = _unit(p.splat(pts, 0.1 * p.um, np.full(len(pts), 0.3)))
    diffuse = 0.15 * p.thickness * (1.0 - 0.5 * p.nucleus)
    return (np.minimum(fibres, 1.6) * (1.0 - 0.7 * p.nucleus) + diffuse) * p.expression(0.25)


def _confocal_er(p: _Painter) -> np.ndarray:
    """Tubular reticulum densest around the nucleus, a faint cytoplasmic floor and a thin envelope."""
    envelope = np.exp(-p.perinuclear / 1.4) * p.thickness * (1.0 - p.nucleus)
    rim = np.exp(-0.5 * ((p.layout.nucleus_rho - 1.0) / 0.03) ** 2) * p.cell
    floor = 0.12 * p.thickness * (1.0 - 0.8 * p.nucleus)
    return ((0.8 * p.reticulum(0.9) + 0.2) * envelope + floor + 0.3 * rim) * p.expression(0.25)


def _confocal_dna(p: _Painter) -> np.ndarray:
    """Finely granular chromatin over a coarser modulation, a brighter periphery, nucleolar holes."""
    chromatin = 0.12 * p.texture(0.6) + 0.1 * p.texture(2.0)
    content = p.per_cell(np.exp(p.rng.normal(0.0, 0.2, p.layout.n_cells)))
    edge = np.clip((1.0 - p.layout.nucleus_rho) * 8.0, 0.0, 1.0)
    dna = p.nucleus * content * (0.7 + chromatin) * (0.75 + 0.25 * edge) * (1.0 - 0.7 * p.nucleoli)
    return np.clip(dna, 0.0, None)


def hpa_confocal_field(layout: CellLayout, phenotype: Phenotype, pixel_size: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Noise-free HPA Cell Atlas-like confocal signal (4, y, x) float32, channel order :data:`HPA_CHANNELS`.

    Made to look like the HPA's 63x confocal fields at about 0.08 um/px: a dense microtubule mesh, a
    fine tubular ER, granular chromatin, and the protein patterns of :func:`hpa_field` drawn at the
    same physical density, with a sharp (diffraction-limited, 0.1 um) point-spread function.
    """
    p = _Painter(layout, pixel_size, rng, tuned_pixel_size=_HPA_TUNED_PIXEL_SIZE, contact_um=1.5)
    channels = [_confocal_microtubules(p), _confocal_er(p), _confocal_dna(p), _hpa_protein(p, phenotype)]
    return _optics(np.stack(channels).astype(np.float32), sigma_px=0.1 * p.um, haze=0.0)


# ----------------------------------------------------------------------------------------------------
# Cell Painting layout: DNA, ER, RNA, AGP, Mito


def _cp_dna(p: _Painter, ph: Phenotype) -> np.ndarray:
    chromatin = p.texture(1.4)
    content = np.exp(p.rng.normal(0.0, 0.2, p.layout.n_cells))
    if ph.pattern == "nuclear_enlargement":
        content = content * (1.0 + 0.5 * ph.strength * ph.intensity)
    dna = p.nucleus * p.per_cell(content) * (0.8 + 0.15 * chromatin) * (1.0 - 0.5 * p.nucleoli)
    return np.clip(dna, 0.0, None)


def _cp_er(p: _Painter, ph: Phenotype) -> np.ndarray:
    er = _er_map(p, scale_um=1.4, reach=0.8, rim=0.5)
    if ph.pattern == "er_stress":
        k = ph.strength
        swollen = _er_map(p, scale_um=2.6 * ph.size, reach=1.6 * ph.size, rim=0.9)
        er = (1.0 - k) * er + k * (1.0 + 0.8 * ph.intensity) * swollen
    return er * p.expression(0.25)


def _cp_rna(p: _Painter, ph: Phenotype) -> np.ndarray:
    nucleoli = p.nucleoli
    cyto = 0.35
    if ph.pattern == "nucleolar_stress":
        k = ph.strength
        fragments = p.nucleolar_discs(count=(5, 10), radius_um=(0.5 * ph.size, 0.9 * ph.size))
        nucleoli = (1.0 - k) * nucleoli + k * (1.0 + 0.3 * ph.intensity) * fragments
        cyto = 0.35 * (1.0 - 0.6 * k)
    return (1.2 * nucleoli + 0.25 * p.nucleus + cyto * p.thickness * (1.0 - p.nucleus)) * p.expression(0.2)


def _cp_agp(p: _Painter, ph: Phenotype) -> np.ndarray:
    lay = p.layout
    n = lay.n_cells
    cortex = 0.6 * p.membrane(1.0)
    golgi_spread = 1.3
    fibres_amp = 0.3
    if ph.pattern == "golgi_dispersal":
        golgi_spread = 1.3 + 3.0 * ph.strength * ph.size
    if ph.pattern == "actin_rearrangement":
        fibres_amp = 0.3 + 1.0 * ph.strength * ph.intensity
        cortex = cortex * (1.0 - 0.5 * ph.strength)
    towards = lay.centrosomes + 0.3 * (lay.centrosomes - lay.nucleus_centres)
    pts = p.per_cell_points(towards, np.full(n, 12), np.full(n, golgi_spread * p.um))
    golgi = np.minimum(p.splat(pts[p.owner(pts) > 0], 0.6 * p.um, None), 1.5)
    # stress fibres: straight filaments with one direction per cell
    starts = p.sample(0.004 * p.cell * (1.0 - p.nucleus))
    direction = p.per_cell(p.rng.uniform(0.0, np.pi, n))
    idx = np.round(starts).astype(np.int64)
    heading = direction[idx[:, 0], idx[:, 1]] + p.rng.normal(0.0, 0.1, len(idx)) if len(idx) else np.zeros(0)
    both = np.concatenate([heading, heading + np.pi])
    pts = p.walks(np.concatenate([starts, starts]), steps=int(6 * p.um), step_px=1.0, wiggle=0.02, angles=both)
    fibres = _unit(p.splat(pts, 0.3 * p.um, np.full(len(pts), 0.4)))
    return (cortex + 0.9 * golgi + fibres_amp * np.minimum(fibres, 1.5) + 0.12 * p.thickness) * p.expression(0.25)


def _cp_mito(p: _Painter, ph: Phenotype) -> np.ndarray:
    """A perinuclear network of tubules; uncouplers break it into short, rounder fragments."""
    length_um, clustering, amplitude = 4.0, 1.2, 1.0
    if ph.pattern == "mito_fragmentation":
        k = ph.strength
        length_um = (1.0 - k) * length_um + k * 0.5 * ph.size
        clustering = 1.2 - 0.5 * k
        amplitude = 1.0 + 0.5 * k * ph.intensity
    steps = max(int(round(length_um * p.um)), 1)
    density = 0.03 * np.exp(-p.perinuclear / clustering) * p.cytoplasm
    starts = p.sample(density)
    pts = p.walks(starts, steps=steps, step_px=1.0, wiggle=0.35, stay_in=p.cytoplasm > 0)
    mito = np.minimum(p.splat(pts, 0.3 * p.um, np.full(len(pts), 0.5)), 1.5)
    return (amplitude * mito + 0.05 * p.thickness) * p.expression(0.3)


def _check_cellpainting_pattern(phenotype: Phenotype) -> None:
    if phenotype.pattern not in CELLPAINTING_PATTERNS:
        msg = (f"unknown Cell Painting phenotype {phenotype.pattern!r}; expected one of "
               f"{', '.join(CELLPAINTING_PATTERNS)}")
        raise ConfigError(msg)


def cellpainting_field(layout: CellLayout, phenotype: Phenotype, pixel_size: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Noise-free Cell Painting signal (5, y, x) float32 in order :data:`CELLPAINTING_CHANNELS`.

    DNA (Hoechst) with nucleolar holes, ER (concanavalin A) reticulum, RNA (SYTO 14) bright in nucleoli,
    AGP (phalloidin + WGA) cortex, Golgi and stress fibres, Mito (MitoTracker) perinuclear tubules; the
    phenotype alters the stains a compound class is known to change.
    """
    _check_cellpainting_pattern(phenotype)
    p = _Painter(layout, pixel_size, rng)
    channels = [_cp_dna(p, phenotype), _cp_er(p, phenotype), _cp_rna(p, phenotype), _cp_agp(p, phenotype),
                _cp_mito(p, phenotype)]
    return _optics(np.stack(channels).astype(np.float32), sigma_px=0.45 * p.um, haze=0.08)


# ----------------------------------------------------------------------------------------------------
# JUMP Cell Painting fields (widefield, 20x, about 0.6 um/px)

JUMP_CROSSTALK = ((1, 2, 0.8), (2, 1, 0.6))
"""(to, from, fraction) of signal bleeding between channels: concanavalin A and SYTO 14 are excited and
seen in each other's channel, so JUMP's ER and RNA images look alike, nucleoli in the ER image
included (their pixel correlation inside cells is 0.84-0.95 on real JUMP and Phenix fields)."""


def jump_field(layout: CellLayout, phenotype: Phenotype, pixel_size: float,
               rng: np.random.Generator) -> np.ndarray:
    """Noise-free JUMP-like Cell Painting signal (5, y, x) float32, order :data:`CELLPAINTING_CHANNELS`.

    The stains of :func:`cellpainting_field` (and its phenotypes), with what JUMP's widefield fields
    add: ConA and SYTO 14 filling the whole cytoplasm with a granular texture and a perinuclear
    enrichment, nucleoplasmic RNA, a perinuclear mitochondrial cloud, diffuse AGP, the ER/RNA
    crosstalk of :data:`JUMP_CROSSTALK`, and a softer point-spread function with more haze.
    """
    _check_cellpainting_pattern(phenotype)
    p = _Painter(layout, pixel_size, rng, contact_um=1.5)
    near = np.exp(-p.perinuclear / 0.9) * p.cytoplasm * p.thickness
    grain = np.clip(1.0 + 0.35 * p.texture(0.7), 0.0, None)
    er_fill = 0.45 * p.thickness * (0.6 + 0.4 * p.reticulum(1.0)) * (1.0 - 0.7 * p.nucleus)
    er = (er_fill + 0.35 * _cp_er(p, phenotype) + 0.35 * near) * p.expression(0.25)
    rna = _cp_rna(p, phenotype) + (0.45 * p.nucleus + 0.2 * p.thickness * (1.0 - p.nucleus)) * grain
    agp = _cp_agp(p, phenotype) + 0.15 * p.thickness * grain * p.expression(0.3)
    mito = _cp_mito(p, phenotype) + 0.45 * near * grain * p.expression(0.3)
    signal = np.stack([_cp_dna(p, phenotype), er, rna, agp, mito]).astype(np.float32)
    mixed = signal.copy()
    for to, source, fraction in JUMP_CROSSTALK:
        mixed[to] += np.float32(fraction) * signal[source]
    return _optics(mixed, sigma_px=0.6 * p.um, haze=0.12)


def _optics(signal: np.ndarray, *, sigma_px: float, haze: float) -> np.ndarray:
    """Blur each channel by the point-spread function; widefield adds out-of-focus haze.

    The haze is a wide blur, computed on a 4x smaller image (it is smooth anyway) and interpolated
    back, at a fraction of the cost of a full-size wide Gaussian.
    """
    out = ndi.gaussian_filter(signal, (0.0, sigma_px, sigma_px), truncate=3.0)
    if haze:
        f = 4
        c, h, w = signal.shape
        hh, ww = -(-h // f) * f, -(-w // f) * f
        padded = signal if (hh, ww) == (h, w) else np.pad(signal, ((0, 0), (0, hh - h), (0, ww - w)), mode="edge")
        small = padded.reshape(c, hh // f, f, ww // f, f).mean(axis=(2, 4))
        small = ndi.gaussian_filter(small, (0.0, 8 * sigma_px / f, 8 * sigma_px / f), truncate=2.0)
        out *= np.float32(1.0 - haze)
        out += np.float32(haze) * _upsample_linear(small, f, (h, w))
    return out.astype(np.float32, copy=False)


def _upsample_linear(small: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of (c, y, x) by ``factor`` to ``shape`` (pixel centres aligned)."""
    out = small
    for axis, size in ((1, shape[0]), (2, shape[1])):
        n = small.shape[axis]
        t = (np.arange(size) + 0.5) / factor - 0.5
        i0 = np.clip(np.floor(t).astype(np.intp), 0, n - 1)
        i1 = np.minimum(i0 + 1, n - 1)
        wt = np.clip(t - i0, 0.0, 1.0).astype(np.float32)
        wshape = (1, size, 1) if axis == 1 else (1, 1, size)
        out = np.take(out, i0, axis=axis) * (1.0 - wt).reshape(wshape) + np.take(out, i1, axis=axis) * wt.reshape(wshape)
    return out


# ----------------------------------------------------------------------------------------------------
# acquisition


def vignetting(shape: tuple[int, int], rng: np.random.Generator, *, strength: tuple[float, float] = (0.15, 0.35)
               ) -> np.ndarray:
    """A smooth radial fall-off of illumination (1 at its off-centre peak), float32 (y, x)."""
    h, w = shape
    cy, cx = rng.uniform(0.4, 0.6) * h, rng.uniform(0.4, 0.6) * w
    yy, xx = np.ogrid[:h, :w]
    r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (0.25 * (h * h + w * w))
    return (1.0 - rng.uniform(*strength) * r2).astype(np.float32)


def acquire(signal: np.ndarray, rng: np.random.Generator, *, photons: float, gain: float = 1.0,
            offset: float = 100.0, background: float = 0.02, read_noise: float = 4.0,
            illumination: np.ndarray | None = None) -> np.ndarray:
    """Camera counts (uint16) from a noise-free signal.

    Expected photons are ``photons * gain * illumination * (signal + background)``. Shot noise has the
    Poisson variance (equal to the expected count) and is drawn in its Gaussian limit together with the
    Gaussian read noise (``read_noise`` counts), one normal draw per pixel: with the background every
    pixel expects tens of photons or more, where the two distributions agree, and this is several times
    faster than Poisson sampling. ``offset`` is the camera's dark level.
    """
    expected = signal + np.float32(background)
    if illumination is not None:
        expected *= illumination
    expected *= np.float32(photons * gain)
    np.maximum(expected, 0.0, out=expected)
    noise = rng.standard_normal(expected.shape, dtype=np.float32)
    noise *= np.sqrt(expected + np.float32(read_noise * read_noise))
    expected += noise
    expected += np.float32(offset + 0.5)  # + 0.5: the cast below truncates, so this rounds
    np.clip(expected, 0, np.iinfo(np.uint16).max, out=expected)
    return expected.astype(np.uint16)
