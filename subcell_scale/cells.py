"""Single-cell crops for SubCell: one window per cell, at the model's pixel size, masked and normalised.

Geometry (see :class:`CropSpec`)
--------------------------------
- **Centre.** Each crop is centred on the cell's centroid rounded to a pixel (``center="centroid"``,
  default, as the JUMP crop tools do) or on the centre of its bounding box (``center="bbox"``, as
  SubCell's training crops were). ``center_rounding="half_up"`` (default) rounds halves up;
  ``"half_even"`` is ``np.round`` (halves to even), what the lab's JUMP crop generator does, and it
  rounds in the coordinates of the field padded by the edge rule's padding, as the generator does. The
  centre pixel sits at index ``side // 2`` of the plate-scale window, whose first pixel is
  ``centre - side // 2``.
- **Size.** The crop side is given in micrometres (or in model pixels) and converted with the plate's
  pixel size to a window of ``round(crop_um / pixel_size)`` plate pixels per axis, then resized
  bilinearly (``torch.nn.functional.interpolate`` semantics, ``align_corners=False``, no antialias,
  like the reference's ``cv2.resize``) to ``out_size`` pixels. The default is the training geometry:
  71.68 um at 0.16 um/px = 448 px (HPA's 896-px crops at 0.08 um/px resized to 448).
  Cell Painting as SubCell's authors ran it on JUMP: ``CropSpec(crop_um=76.544, out_size=478,
  mask_mode="none", normalization="per_channel")`` (128 px at 0.598 um/px, x3.74).
- **Padding.** Pixels of the window outside the field are zeros (the reference's ``safe_crop``).
- **Edge rule.** With ``edge_padding`` set (JUMP generator: 0.25), the field is thought of as padded
  by ``int(edge_padding * W)`` zero pixels per side, W the edge window (``edge_window_um`` in plate
  pixels; default the crop window), and a cell whose W-window would reach past that padded field is
  dropped (recorded under ``"edge"``). So a kept crop holds at most ``edge_padding`` of W as padding
  per side.
- **Mask.** With ``mask_mode="own_cell"`` the crop is multiplied by the cell's own mask dilated by a
  square of ``dilation`` pixels of ``dilation_pixel_size`` micrometres (default: model pixels).
  ``mask_resize="nearest"`` (default) resizes the mask to the output grid (nearest, pixel-centre
  aligned) and dilates it there; ``"bilinear"`` dilates it on the window's grid (plate pixels), then
  resizes it bilinearly like the image and keeps output pixels above 0.5: what SubCell's training
  crops did (7 x 7 at 0.08 um/px, then 896 -> 448 with the image). Neighbouring cells and background
  beyond the dilated mask become 0. ``mask_mode="none"`` keeps the whole window (JUMP's reported
  setting).
- **Intensities.** With any of ``plate_upper_percentile``, ``field_lower_percentile``,
  ``field_upper_percentile`` set, the field is first scaled to [0, 1] as the lab's JUMP crop generator
  did (:mod:`subcell_scale.intensity`): ``clip((x - field_lower) / min(plate_upper, field_upper), 0,
  1)`` per channel, and with ``quantization="uint8"`` truncated to ``k / 255`` levels (its uint8 crops,
  read back and divided by 255). The plate bound comes from a pass over the plate made when the run
  is planned, passed in as ``plate_upper``.
- **Normalisation.** After masking, ``"global"`` min-max over (C, H, W) per crop and pass, eps 1e-6
  (training's ``MinMaxNormalize``, SubCellPortable's default); ``"per_channel"`` over (H, W) per channel
  (JUMP); ``"none"`` returns the intensities as float32.

Pixels stay in the plate's dtype (uint16) while cropping unless intensities are scaled; they become
float32 to resize and normalise. :func:`extract_cells` runs on numpy; :func:`extract_cells_torch` does
the same on any torch device, all cells of a field in a few batched operations, and gives the same
crops (tested equal within 1e-5).
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from ._constants import Obs
from .errors import ConfigError, PlateFormatError
from .segment import pixel_size_yx

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "CELL_COLUMNS", "EDGE_REASON", "TRAINING_CROP_UM", "TRAINING_PIXEL_SIZE", "CropSpec", "cell_table",
    "extract_cells", "extract_cells_torch", "nearest_indices", "resolve_passes"
]

logger = logging.getLogger(__name__)

MaskMode = Literal["own_cell", "none"]
MaskResize = Literal["nearest", "bilinear"]
Normalization = Literal["global", "per_channel", "none"]
CenterMode = Literal["centroid", "bbox"]
Rounding = Literal["half_up", "half_even"]
Quantization = Literal["none", "uint8"]

TRAINING_CROP_UM = 71.68
"""Side of SubCell's training crops: 896 px at 0.08 um/px (= 448 px at 0.16 um/px)."""
TRAINING_PIXEL_SIZE = 0.16
"""Micrometres per pixel of the images SubCell was trained on (after the 896 -> 448 resize)."""
EDGE_REASON = "edge"
"""Drop reason of cells removed by the edge rule (beside :data:`subcell_scale.segment.DROP_REASONS`)."""

CELL_COLUMNS = (Obs.LABEL, Obs.AREA, Obs.CENTROID_Y, Obs.CENTROID_X,
                "bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x", "crop_center_y", "crop_center_x")
"""Columns of the cells table; bbox max is exclusive, crop centre is the pixel a crop is centred on."""


SWITCH_KEYS = ("dilation_pixel_size", "plate_upper_percentile", "field_lower_percentile", "field_upper_percentile",
               "edge_padding", "edge_window_um")
"""CropSpec fields whose None means "off"; False is accepted for them and stored as None."""


def _odd(side: float) -> int:
    """The odd integer nearest ``side`` (at least 1): the side of a centred square."""
    return 2 * max(0, int(round((side - 1) / 2))) + 1


@dataclass(frozen=True)
class CropSpec:
    """How a cell becomes a model input: window, output size, intensities, mask, normalisation.

    Attributes
    ----------
    crop_um
        Crop side in micrometres; default 71.68 (training geometry). Give this or ``crop_px``.
    crop_px
        Crop side in model pixels (``crop_um = crop_px * model_pixel_size``), handy when thinking in
        the reference's terms (448 at 0.16 um/px, or 640 at 0.08 um/px).
    model_pixel_size
        Micrometres per pixel the model expects (0.16 for training scale, 0.08 for the reference's
        640-px native-resolution crops).
    out_size
        Output side in pixels; default ``round(crop_um / model_pixel_size)``. Smaller values (e.g. 64
        in tests) shrink the input at the cost of detail; it need not be a multiple of 16 here, the
        model decides what it accepts.
    mask_mode
        ``"own_cell"`` (default) multiplies by the dilated own-cell mask; ``"none"`` keeps neighbours.
    dilation
        Side of the square dilating the own-cell mask, in pixels of ``dilation_pixel_size`` (7).
    normalization
        ``"global"`` (default), ``"per_channel"`` or ``"none"``, see the module docstring.
    center
        ``"centroid"`` (default) or ``"bbox"``.
    eps
        Added to (max - min) when normalising, so an empty crop gives zeros, not NaN.
    dilation_pixel_size
        Micrometres per pixel in which ``dilation`` is counted; None: ``model_pixel_size``. SubCell's
        training dilated by 7 px at the source 0.08 um/px (0.56 um).
    mask_resize
        ``"nearest"`` (default): the mask is resized to the output grid and dilated there;
        ``"bilinear"``: dilated on the window grid, resized bilinearly, kept above 0.5 (training).
    center_rounding
        ``"half_up"`` (default) or ``"half_even"`` (``np.round``, the JUMP generator).
    plate_upper_percentile
        Percentile of the plate's raw pixels (16-bit histogram, before illumination correction) giving
        the plate's upper bound per channel (JUMP generator: 99.99); None: no plate bound.
    field_lower_percentile, field_upper_percentile
        Percentiles of each (illumination-corrected) field giving its lower and upper bound per
        channel (JUMP generator: 0.05 and 99.95); None: lower 0, upper the plate bound alone.
    quantization
        ``"uint8"``: scaled intensities truncated to ``k / 255`` before the crop's min-max (JUMP
        generator); ``"none"`` (default). Needs scaled intensities.
    edge_padding
        Fraction of the edge window padded per side for the edge rule (JUMP generator: 0.25); None
        (default): no edge rule.
    edge_window_um
        Side of the window the edge rule is computed for, in micrometres; None: the crop's. The JUMP
        generator cut 192-px crops (114.8 um at 0.598 um/px), later centre-cropped to the 128 px used.

    The fields whose None means "off" also take False (stored as None), which run overrides can pass.
    """

    crop_um: float | None = None
    crop_px: int | None = None
    model_pixel_size: float = TRAINING_PIXEL_SIZE
    out_size: int | None = None
    mask_mode: MaskMode = "own_cell"
    dilation: int = 7
    normalization: Normalization = "global"
    center: CenterMode = "centroid"
    eps: float = 1e-6
    dilation_pixel_size: float | None = None
    mask_resize: MaskResize = "nearest"
    center_rounding: Rounding = "half_up"
    plate_upper_percentile: float | None = None
    field_lower_percentile: float | None = None
    field_upper_percentile: float | None = None
    quantization: Quantization = "none"
    edge_padding: float | None = None
    edge_window_um: float | None = None

    def __post_init__(self) -> None:
        for name in SWITCH_KEYS:  # False is "off" too, so that run overrides (which drop None) can say it
            if getattr(self, name) is False:
                object.__setattr__(self, name, None)
        if self.crop_um is not None and self.crop_px is not None:
            msg = f"give crop_um ({self.crop_um}) or crop_px ({self.crop_px}), not both"
            raise ConfigError(msg)
        checks = {
            "crop_um": self.crop_um is None or self.crop_um > 0,
            "crop_px": self.crop_px is None or (int(self.crop_px) == self.crop_px and self.crop_px > 0),
            "model_pixel_size": self.model_pixel_size > 0,
            "out_size": self.out_size is None or (int(self.out_size) == self.out_size and self.out_size > 0),
            "dilation": int(self.dilation) == self.dilation and self.dilation >= 1,
            "eps": self.eps >= 0,
            "dilation_pixel_size": self.dilation_pixel_size is None or self.dilation_pixel_size > 0,
            "edge_window_um": self.edge_window_um is None or self.edge_window_um > 0,
        }
        for name, ok in checks.items():
            if not ok:
                msg = f"CropSpec.{name} must be a positive number, got {getattr(self, name)!r}"
                raise ConfigError(msg)
        ranges = {"plate_upper_percentile": (0, 100), "field_lower_percentile": (0, 100),
                  "field_upper_percentile": (0, 100), "edge_padding": (0, 0.5)}
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                msg = f"CropSpec.{name} must be None or within [{low}, {high}], got {value!r}"
                raise ConfigError(msg)
        choices = {"mask_mode": ("own_cell", "none"), "normalization": ("global", "per_channel", "none"),
                   "center": ("centroid", "bbox"), "mask_resize": ("nearest", "bilinear"),
                   "center_rounding": ("half_up", "half_even"), "quantization": ("none", "uint8")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                msg = f"CropSpec.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                raise ConfigError(msg)
        if self.scales_intensity and self.field_upper_percentile is None and self.plate_upper_percentile is None:
            msg = ("CropSpec: scaling intensities needs an upper bound; set field_upper_percentile, "
                   "plate_upper_percentile or both")
            raise ConfigError(msg)
        if self.quantization != "none" and not self.scales_intensity:
            msg = (f"CropSpec.quantization={self.quantization!r} needs intensities scaled to [0, 1] first; set "
                   "plate_upper_percentile and/or field_lower_percentile / field_upper_percentile")
            raise ConfigError(msg)

    @property
    def side_um(self) -> float:
        """Crop side in micrometres."""
        if self.crop_um is not None:
            return float(self.crop_um)
        if self.crop_px is not None:
            return float(self.crop_px) * self.model_pixel_size
        return TRAINING_CROP_UM

    @property
    def size(self) -> int:
        """Output side in pixels."""
        if self.out_size is not None:
            return int(self.out_size)
        return max(1, int(round(self.side_um / self.model_pixel_size)))

    @property
    def out_pixel_size(self) -> float:
        """Micrometres per output pixel (the model pixel size unless ``out_size`` overrides it)."""
        return self.side_um / self.size

    @property
    def scales_intensity(self) -> bool:
        """Whether fields are scaled to [0, 1] by plate and field percentiles before cropping."""
        return any(v is not None for v in (self.plate_upper_percentile, self.field_lower_percentile,
                                           self.field_upper_percentile))

    @property
    def dilation_um(self) -> float:
        """Side of the dilation square in micrometres."""
        return self.dilation * (self.dilation_pixel_size or self.model_pixel_size)

    @property
    def dilation_px(self) -> int:
        """Odd side of the dilation square in output pixels (``mask_resize="nearest"``)."""
        return _odd(self.dilation_um / self.out_pixel_size)

    def dilation_window(self, pixel_size: float | Sequence[float]) -> tuple[int, int]:
        """(y, x) odd sides of the dilation square in plate pixels (``mask_resize="bilinear"``)."""
        py, px = pixel_size_yx(pixel_size)
        return _odd(self.dilation_um / py), _odd(self.dilation_um / px)

    def window(self, pixel_size: float | Sequence[float]) -> tuple[int, int]:
        """(y, x) side of the crop window in plate pixels for a plate of this pixel size."""
        py, px = pixel_size_yx(pixel_size)
        return max(1, int(round(self.side_um / py))), max(1, int(round(self.side_um / px)))

    def edge_geometry(self, pixel_size: float | Sequence[float]) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """The edge rule's (y, x) window and (y, x) padding in plate pixels; None without an edge rule."""
        if self.edge_padding is None:
            return None
        py, px = pixel_size_yx(pixel_size)
        side = self.side_um if self.edge_window_um is None else float(self.edge_window_um)
        wy, wx = max(1, round(side / py)), max(1, round(side / px))
        return (wy, wx), (int(self.edge_padding * wy), int(self.edge_padding * wx))

    def as_dict(self) -> dict[str, object]:
        """Resolved geometry and intensity handling for provenance (``uns["subcell_scale"]``)."""
        return {"crop_um": self.side_um, "model_pixel_size": self.model_pixel_size, "out_size": self.size,
                "out_pixel_size": self.out_pixel_size, "mask_mode": self.mask_mode,
                "dilation_model_px": int(self.dilation), "dilation_out_px": self.dilation_px,
                "dilation_pixel_size": self.dilation_pixel_size, "dilation_um": self.dilation_um,
                "mask_resize": self.mask_resize, "normalization": self.normalization, "center": self.center,
                "center_rounding": self.center_rounding, "eps": self.eps,
                "plate_upper_percentile": self.plate_upper_percentile,
                "field_lower_percentile": self.field_lower_percentile,
                "field_upper_percentile": self.field_upper_percentile, "quantization": self.quantization,
                "edge_padding": self.edge_padding, "edge_window_um": self.edge_window_um}


def _check_inputs(image_shape: tuple[int, ...], labels: np.ndarray) -> None:
    if len(image_shape) != 3:
        msg = f"extract_cells needs an image shaped (c, y, x), got shape {image_shape}"
        raise PlateFormatError(msg)
    if labels.shape != tuple(image_shape[1:]):
        msg = f"labels {labels.shape} do not match the image's (y, x) {tuple(image_shape[1:])}"
        raise PlateFormatError(msg)
    if not np.issubdtype(labels.dtype, np.integer):
        msg = f"labels must be integers, got dtype {labels.dtype}"
        raise PlateFormatError(msg)


def resolve_passes(channels: Sequence[int] | Sequence[Sequence[int]] | None, n_channels: int
                   ) -> tuple[list[list[int]], bool]:
    """Normalise ``channels`` to a list of passes, and whether the caller asked for several.

    ``None`` is one pass over every channel; a flat list of indices is one pass; a list of lists is one
    pass each (e.g. JUMP's [ER, DNA, Mito], [ER, DNA, AGP], [ER, DNA, RNA]). All passes must have the
    same number of channels, because they feed the same model.
    """
    if channels is None:
        return [list(range(n_channels))], False
    items = list(channels)
    if not items:
        msg = "channels is empty; give plate channel indices or a list of passes"
        raise ConfigError(msg)
    multi = all(isinstance(c, Sequence | np.ndarray) and not isinstance(c, str) for c in items)
    passes = [[int(i) for i in p] for p in items] if multi else [[int(i) for i in items]]
    widths = {len(p) for p in passes}
    if len(widths) != 1 or 0 in widths:
        msg = f"every pass must use the same, non-zero number of channels, got {passes}"
        raise ConfigError(msg)
    bad = sorted({i for p in passes for i in p if not 0 <= i < n_channels})
    if bad:
        msg = f"channel indices {bad} are out of range for an image with {n_channels} channels"
        raise ConfigError(msg)
    return passes, multi


def _objects(labels: np.ndarray) -> tuple[np.ndarray, list[tuple[slice, slice]], np.ndarray, np.ndarray]:
    """Label values present (sorted, no 0), their bounding boxes, the image the boxes index and the
    value each cell has in that image.

    Small label values are used as they are; huge, sparse ones are renumbered first so the per-label
    bookkeeping does not scale with the largest value.
    """
    from scipy import ndimage as ndi

    if labels.size and labels.min() < 0:
        msg = "label images must not hold negative values"
        raise PlateFormatError(msg)
    top = int(labels.max()) if labels.size else 0
    if top <= 4 * labels.size + 1024:
        source = labels if labels.dtype.kind == "i" else labels.astype(np.int64)
        objects = ndi.find_objects(source)
        values = np.array([i + 1 for i, s in enumerate(objects) if s is not None], dtype=np.int64)
        return values, [objects[v - 1] for v in values], source, values
    values, inverse = np.unique(labels, return_inverse=True)
    compact = inverse.reshape(labels.shape).astype(np.int32) + (0 if values[0] == 0 else 1)
    values = values[values != 0].astype(np.int64)
    return values, ndi.find_objects(compact), compact, np.arange(1, values.size + 1)


def _cell_sums(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label values present (sorted, no 0) and int64 (n, 7) sums per cell: area, sum of y, sum of x,
    bounding box min y, min x, max y, max x (max exclusive).

    Exact integers, so the torch twin (:func:`_cell_sums_torch`) gives the same table to the bit.
    """
    values, boxes, source, ids = _objects(labels)
    stats = np.zeros((values.size, 7), np.int64)
    for k, (sy, sx) in enumerate(boxes):
        ys, xs = np.nonzero(source[sy, sx] == ids[k])
        area = ys.size
        stats[k] = (area, int(ys.sum()) + sy.start * area, int(xs.sum()) + sx.start * area,
                    sy.start, sx.start, sy.stop, sx.stop)
    return values, stats


def _round(values: np.ndarray, rounding: Rounding, offset: int) -> np.ndarray:
    """Pixel coordinates rounded half up, or half to even in coordinates shifted by ``offset``."""
    if rounding == "half_even":
        return (np.round(values + offset) - offset).astype(np.int64)
    return np.floor(values + 0.5).astype(np.int64)


def _table(values: np.ndarray, stats: np.ndarray, *, center: CenterMode, rounding: Rounding,
           offset: tuple[int, int] = (0, 0)) -> pd.DataFrame:
    """The cells table from per-cell sums (see :func:`_cell_sums`)."""
    area = stats[:, 0]
    cy, cx = stats[:, 1] / area, stats[:, 2] / area
    if center == "bbox":
        ry, rx = (stats[:, 3] + stats[:, 5] - 1) / 2.0, (stats[:, 4] + stats[:, 6] - 1) / 2.0
    else:
        ry, rx = cy, cx
    return pd.DataFrame({
        Obs.LABEL: values, Obs.AREA: area, Obs.CENTROID_Y: cy, Obs.CENTROID_X: cx,
        "bbox_min_y": stats[:, 3], "bbox_min_x": stats[:, 4], "bbox_max_y": stats[:, 5], "bbox_max_x": stats[:, 6],
        "crop_center_y": _round(ry, rounding, offset[0]), "crop_center_x": _round(rx, rounding, offset[1]),
    }, columns=list(CELL_COLUMNS))


def cell_table(labels: np.ndarray, *, center: CenterMode = "centroid", rounding: Rounding = "half_up",
               ) -> pd.DataFrame:
    """One row per cell: label, area (px), centroid, bounding box and crop centre (field pixels).

    Sorted by label value; this is the row order of the crops :func:`extract_cells` returns (before
    the edge rule, which only removes rows). Work is per bounding box, so a field costs little beyond
    one pass to find the boxes.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        msg = f"labels must be (y, x), got shape {labels.shape}"
        raise PlateFormatError(msg)
    values, stats = _cell_sums(labels)
    return _table(values, stats, center=center, rounding=rounding)


def _field_table(values: np.ndarray, stats: np.ndarray, spec: CropSpec, pixel_size: float | Sequence[float],
                 shape: tuple[int, int], dropped: MutableMapping[str, list[int]] | None,
                 ) -> tuple[pd.DataFrame, np.ndarray]:
    """The cells a field gives crops for (the edge rule applied) and which rows of ``values`` they are.

    The edge rule is the JUMP generator's ``too_close_to_edge`` on the field padded by ``pad`` pixels:
    with the centre ``c`` in padded coordinates, a cell is dropped when ``c < W / 2`` or
    ``padded_size - c < W / 2`` on either axis.
    """
    geometry = spec.edge_geometry(pixel_size)
    pads = geometry[1] if geometry is not None else (0, 0)
    table = _table(values, stats, center=spec.center, rounding=spec.center_rounding, offset=pads)
    keep = np.ones(len(table), bool)
    if geometry is not None:
        for (side, pad, size), column in zip(zip(geometry[0], pads, shape, strict=True),
                                             ("crop_center_y", "crop_center_x"), strict=True):
            centre = table[column].to_numpy() + pad
            keep &= ~((centre < side / 2) | ((size + 2 * pad) - centre < side / 2))
        if dropped is not None:
            dropped[EDGE_REASON] = sorted({*dropped.get(EDGE_REASON, []),
                                           *(int(v) for v in table[Obs.LABEL].to_numpy()[~keep])})
    return table[keep].reset_index(drop=True), keep


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for a pixel-centre-aligned nearest resize, in exact integers."""
    return np.minimum(((2 * np.arange(n_out) + 1) * n_in) // (2 * n_out), n_in - 1)


def _chunk(chunk_size: int | None, n_channels: int, window: tuple[int, int], size: int,
           budget: float = 256e6) -> int:
    """Cells per chunk: the caller's choice, or what keeps the float32 windows and outputs near budget."""
    if chunk_size is not None:
        if int(chunk_size) < 1:
            msg = f"chunk_size must be at least 1, got {chunk_size}"
            raise ConfigError(msg)
        return int(chunk_size)
    per_cell = 4.0 * n_channels * (window[0] * window[1] + 2 * size * size)
    return max(1, min(1024, int(budget // per_cell)))


def _plate_bounds(spec: CropSpec, plate_upper: Sequence[float] | None, n_channels: int,
                  union: Sequence[int]) -> list[float] | None:
    """The plate upper bounds of the channels cropped, checked; None when the spec uses none."""
    if spec.plate_upper_percentile is None:
        return None
    if plate_upper is None:
        msg = (f"the crop spec clips at the plate's {spec.plate_upper_percentile} % percentile, but no "
               "plate_upper was given (see subcell_scale.intensity.plate_histogram / histogram_percentile)")
        raise ConfigError(msg)
    if len(plate_upper) != n_channels:
        msg = f"plate_upper has {len(plate_upper)} values for an image of {n_channels} channels"
        raise ConfigError(msg)
    return [float(plate_upper[i]) for i in union]


def _scaled_source(image: np.ndarray, union: Sequence[int], spec: CropSpec,
                   plate_upper: Sequence[float] | None) -> np.ndarray:
    """The channels cropped: as stored, or scaled to [0, 1] (and quantised) as the spec asks."""
    from .intensity import field_bounds, scale_field

    source = image[list(union)]
    bounds = _plate_bounds(spec, plate_upper, image.shape[0], union)
    if not spec.scales_intensity:
        return source
    field = source.astype(np.float32, copy=False)
    lower, upper = field_bounds(field, lower_percentile=spec.field_lower_percentile,
                                upper_percentile=spec.field_upper_percentile, plate_upper=bounds)
    return scale_field(field, lower, upper, spec.quantization)


def _own_masks(labels: np.ndarray, centres: Sequence[tuple[int, int]], values: np.ndarray, spec: CropSpec,
               window: tuple[int, int], size: int, pixel_size: float | Sequence[float]) -> np.ndarray:
    """float32 (n, S, S) own-cell masks of the given cells, dilated and resized as the spec says."""
    from scipy import ndimage as ndi

    from .models.preprocessing import crop_centered, dilate_mask, resize_bilinear

    own = np.stack([crop_centered(labels, c, window) for c in centres]) == values[:, None, None]
    if spec.mask_resize == "nearest":
        own = own[:, nearest_indices(window[0], size)][:, :, nearest_indices(window[1], size)]
        return dilate_mask(own, size=spec.dilation_px).astype(np.float32)
    ky, kx = spec.dilation_window(pixel_size)
    grown = ndi.maximum_filter(own.astype(np.float32), size=(1, ky, kx), mode="constant", cval=0.0)
    return (np.asarray(resize_bilinear(grown, (size, size))) > 0.5).astype(np.float32)


def extract_cells(
    image: np.ndarray,
    labels: np.ndarray,
    pixel_size: float | Sequence[float],
    spec: CropSpec | None = None,
    *,
    channels: Sequence[int] | Sequence[Sequence[int]] | None = None,
    chunk_size: int | None = None,
    plate_upper: Sequence[float] | None = None,
    dropped: MutableMapping[str, list[int]] | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Crop, resize, mask and normalise every labelled cell of one field (numpy, CPU).

    Parameters
    ----------
    image
        One field (c, y, x), any numeric dtype (uint16 stays uint16 until the resize), illumination
        corrected already if it is to be.
    labels
        (y, x) integer labels; every non-zero value is a cell (filter first with
        :func:`subcell_scale.segment.filter_cells`).
    pixel_size
        Plate micrometres per pixel, (y, x) or one number.
    spec
        Crop geometry and preprocessing; default :class:`CropSpec` () (training geometry).
    channels
        Plate channel indices in model order (one pass), or a list of such lists (one pass each).
        Default: every channel in plate order.
    chunk_size
        Cells processed together; bounds memory, does not change the result. Default: as many as
        keep the float32 working copies near 256 MB (13 cells of 4 x 896-px windows resized to 448,
        274 of 4 x 224-px windows resized to 64).
    plate_upper
        The plate's upper bound per image channel, needed when ``spec.plate_upper_percentile`` is set
        (the pipeline computes it when it plans a run).
    dropped
        If given, the labels the edge rule removes are added to it under ``"edge"``.

    Returns
    -------
    crops
        float32 (N, C, S, S) for one pass, (N, P, C, S, S) for a list of passes; N cells sorted by label.
    cells
        The cells table (:func:`cell_table` columns) of the same cells, row i describing crop i.
    """
    from .models.preprocessing import crop_centered, min_max_normalize, resize_bilinear

    spec = spec or CropSpec()
    image, labels = np.asarray(image), np.asarray(labels)
    _check_inputs(image.shape, labels)
    passes, multi = resolve_passes(channels, image.shape[0])
    union = sorted({i for p in passes for i in p})
    pass_index = np.array([[union.index(i) for i in p] for p in passes])
    values, stats = _cell_sums(labels)
    table, _ = _field_table(values, stats, spec, pixel_size, labels.shape, dropped)
    wy, wx = spec.window(pixel_size)
    size = spec.size
    n = len(table)
    crops = np.empty((n, len(passes), len(passes[0]), size, size), np.float32)
    source = _scaled_source(image, union, spec, plate_upper)
    centres = list(zip(table["crop_center_y"].tolist(), table["crop_center_x"].tolist(), strict=True))
    values = table[Obs.LABEL].to_numpy()
    in_order = len(passes) == 1 and list(pass_index[0]) == list(range(len(union)))
    step = _chunk(chunk_size, len(union), (wy, wx), size)
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        raw = np.stack([crop_centered(source, c, (wy, wx)) for c in centres[lo:hi]])  # source dtype
        pixels = raw.astype(np.float32)
        if (wy, wx) != (size, size):
            pixels = np.asarray(resize_bilinear(pixels, (size, size)), dtype=np.float32)
        if spec.mask_mode == "own_cell":
            pixels *= _own_masks(labels, centres[lo:hi], values[lo:hi], spec, (wy, wx), size, pixel_size)[:, None]
        stacked = pixels[:, None] if in_order else pixels[:, pass_index]
        if spec.normalization != "none":
            stacked = min_max_normalize(stacked, per_channel=spec.normalization == "per_channel", eps=spec.eps)
        crops[lo:hi] = stacked
    logger.debug("cropped %d cells: window %dx%d px -> %d px, %d pass(es)", n, wy, wx, size, len(passes))
    return (crops if multi else crops[:, 0]), table


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device``; read-only arrays (from zarr or pandas) are copied, as torch requires.

    To a GPU the copy goes from pinned memory without blocking the host: kernels queued after it on
    the same stream see the data, and the host goes on preparing the next ones meanwhile.
    """
    import torch

    array = np.ascontiguousarray(array)
    host = torch.from_numpy(array if array.flags.writeable else array.copy())
    if torch.device(device).type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def _cell_sums_torch(labels: np.ndarray, device: torch.device
                     ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_cell_sums` computed on ``device`` from one transfer of the labels.

    Returns the (y, x) id image on the device (label values, or 1..n when the values are too large to
    index by), the label values present, their sums (as :func:`_cell_sums`) and their ids. Cell pixels
    are found once (one device-to-host sync for their count), the sums are scatter-adds over them, and
    the small table comes back in one copy.
    """
    import torch

    if labels.size and labels.min() < 0:
        msg = "label images must not hold negative values"
        raise PlateFormatError(msg)
    top = int(labels.max()) if labels.size else 0
    host = labels if labels.dtype in (np.int32, np.int64) else labels.astype(np.int32 if top < 2**31 else np.int64)
    lab = _tensor(host, device)
    height, width = labels.shape
    if top < 2**16:
        ids, sparse_values = lab, None
    else:  # plate-wide ids: index by rank instead of value
        uniq, inverse = torch.unique(lab, sorted=True, return_inverse=True)
        uniq = uniq.cpu().numpy()
        ids = inverse.reshape(lab.shape) + (0 if uniq[0] == 0 else 1)
        sparse_values = uniq[uniq != 0].astype(np.int64)
        top = sparse_values.size
    flat = ids.reshape(-1)
    where = torch.nonzero(flat, as_tuple=True)[0]
    cid = flat[where].to(torch.int64)
    ys, xs = where // width, where % width
    m = top + 1
    zeros = torch.zeros(m, dtype=torch.int64, device=device)
    stats = torch.stack([
        zeros.index_add(0, cid, torch.ones_like(cid)), zeros.index_add(0, cid, ys), zeros.index_add(0, cid, xs),
        torch.full_like(zeros, height).scatter_reduce(0, cid, ys, "amin"),
        torch.full_like(zeros, width).scatter_reduce(0, cid, xs, "amin"),
        torch.full_like(zeros, -1).scatter_reduce(0, cid, ys, "amax") + 1,
        torch.full_like(zeros, -1).scatter_reduce(0, cid, xs, "amax") + 1,
    ], dim=1).cpu().numpy()
    present = np.flatnonzero(stats[1:, 0]) + 1
    values = present.astype(np.int64) if sparse_values is None else sparse_values[present - 1]
    return ids, values, stats[present], present


def extract_cells_torch(
    image: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    pixel_size: float | Sequence[float],
    spec: CropSpec | None = None,
    *,
    channels: Sequence[int] | Sequence[Sequence[int]] | None = None,
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
    plate_upper: Sequence[float] | None = None,
    dropped: MutableMapping[str, list[int]] | None = None,
) -> tuple[torch.Tensor, pd.DataFrame]:
    """:func:`extract_cells` on a torch device: the field's pixels and labels cross to the device once.

    All of a field's cells are cut in a few batched operations: the cells table from scatter-adds over
    the label image's cell pixels (one small copy back to the host, where the edge rule and the
    centres are the numpy path's code); the intensity scaling on the whole field (percentiles from one
    sort per channel on CUDA); per chunk of cells, the windows by one gather from a strided view of
    every window of the zero-padded field (``unfold``, no copy), one ``F.interpolate`` (bilinear,
    ``align_corners=False``), the masks by one gather of the label windows and a dilation made of
    shifted ORs, and the normalisation from per-channel minima and maxima, ``x - min`` written straight
    into the output slots and divided in place. Chunks bound memory only (1 GB of working copies on
    CUDA); there is no Python loop over cells and no device-to-host synchronisation after the table.
    Results match :func:`extract_cells` within float32 rounding (1e-5; equal in the tests on the CPU);
    the intensity scaling and quantisation give identical values.

    Returns
    -------
    crops
        float32 tensor on ``device``, (N, C, S, S) or (N, P, C, S, S) as in :func:`extract_cells`.
    cells
        The cells table, as in :func:`extract_cells`.
    """
    import torch
    import torch.nn.functional as F

    from .intensity import field_bounds_torch, scale_field_torch

    spec = spec or CropSpec()
    labels = np.asarray(labels)
    device = torch.device(device) if device is not None else (
        image.device if isinstance(image, torch.Tensor) else torch.device("cpu"))
    shape = tuple(image.shape)
    _check_inputs(shape, labels)
    passes, multi = resolve_passes(channels, shape[0])
    union = sorted({i for p in passes for i in p})
    bounds = _plate_bounds(spec, plate_upper, shape[0], union)
    ids, values, stats, cell_ids = _cell_sums_torch(labels, device)
    table, keep = _field_table(values, stats, spec, pixel_size, labels.shape, dropped)
    wy, wx = spec.window(pixel_size)
    size = spec.size
    n, n_passes, width = len(table), len(passes), len(passes[0])
    out = torch.empty((n, n_passes, width, size, size), dtype=torch.float32, device=device)
    if n == 0:
        return (out if multi else out[:, 0]), table

    if isinstance(image, torch.Tensor):
        field = image.to(device)[union].to(torch.float32)
    else:  # select channels on the host, then one transfer of the stored (e.g. uint16) pixels
        field = _tensor(np.asarray(image)[union], device).to(torch.float32)
    if spec.scales_intensity:
        lower, upper = field_bounds_torch(field, lower_percentile=spec.field_lower_percentile,
                                          upper_percentile=spec.field_upper_percentile, plate_upper=bounds)
        field = scale_field_torch(field, lower, upper, spec.quantization)
    # Every window of the field zero-padded as far as the crops reach, as a strided view (no copy): a
    # chunk of crops is then one gather indexed by the cells' window origins.
    start_y = table["crop_center_y"].to_numpy() - wy // 2
    start_x = table["crop_center_x"].to_numpy() - wx // 2
    top, left = max(0, -int(start_y.min())), max(0, -int(start_x.min()))
    bottom, right = max(0, int(start_y.max()) + wy - shape[1]), max(0, int(start_x.max()) + wx - shape[2])
    padded = F.pad(field, (left, right, top, bottom))
    windows = padded.unfold(1, wy, 1).unfold(2, wx, 1).permute(1, 2, 0, 3, 4)  # (Y, X, U, wy, wx)
    id_windows = F.pad(ids, (left, right, top, bottom)).unfold(0, wy, 1).unfold(1, wx, 1)  # (Y, X, wy, wx)
    origin = torch.from_numpy(np.stack([start_y + top, start_x + left, cell_ids[keep]]).astype(np.int64)).to(device)
    rows, cols = _tensor(nearest_indices(wy, size), device), _tensor(nearest_indices(wx, size), device)
    slots = [union.index(i) for p in passes for i in p]  # output slot (pass, channel) -> cropped channel
    select = torch.tensor(slots, device=device).view(n_passes, width)
    per_channel = spec.normalization == "per_channel"
    budget = 1e9 if device.type == "cuda" else 256e6
    step = _chunk(chunk_size, len(union), (wy, wx), size, budget=budget)
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        k = hi - lo
        oy, ox, cells = origin[0, lo:hi], origin[1, lo:hi], origin[2, lo:hi]
        pixels = windows[oy, ox]  # (k, U, wy, wx)
        if (wy, wx) != (size, size):
            pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
        if spec.mask_mode == "own_cell":
            mask = _own_masks_torch(id_windows, oy, ox, cells, spec, rows, cols, size, pixel_size)
            pixels.mul_(mask)  # pixels is a fresh gather or resize, never a view of the field
        slot_view = out[lo:hi].view(k, n_passes * width, size, size)
        if spec.normalization == "none":
            for slot, channel in enumerate(slots):  # a few strided copies, whatever the number of cells
                slot_view[:, slot].copy_(pixels[:, channel])
            continue
        low, high = torch.aminmax(pixels.reshape(k, len(union), -1), dim=-1)  # one pass over the pixels
        low, high = low[:, select], high[:, select]  # (k, P, C): per channel, then per pass if global
        if not per_channel:
            low, high = low.amin(dim=-1, keepdim=True), high.amax(dim=-1, keepdim=True)
        span = high - low
        span = span + spec.eps if spec.eps else torch.where(span == 0, torch.ones_like(span), span)
        low = low.expand(k, n_passes, width).reshape(k, -1, 1, 1)
        for slot, channel in enumerate(slots):  # (x - min) written straight into the output slot
            torch.sub(pixels[:, channel], low[:, slot], out=slot_view[:, slot])
        slot_view.div_(span.expand(k, n_passes, width).reshape(k, -1, 1, 1))
    return (out if multi else out[:, 0]), table


def _own_masks_torch(id_windows: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, cells: torch.Tensor,
                     spec: CropSpec, rows: torch.Tensor, cols: torch.Tensor, size: int,
                     pixel_size: float | Sequence[float]) -> torch.Tensor:
    """float32 (k, 1, S, S) own-cell masks of a chunk of cells, as :func:`_own_masks` makes them."""
    import torch
    import torch.nn.functional as F

    k = int(cells.shape[0])
    if spec.mask_resize == "nearest":  # only the label pixels the output grid samples
        wy, wx = id_windows.shape[-2:]
        if size * size < wy * wx:
            own = id_windows[oy[:, None, None], ox[:, None, None], rows[:, None], cols[None, :]] == cells[:, None, None]
        else:  # upscaling: compare the (smaller) label windows, then repeat their rows and columns
            inside = (id_windows[oy, ox] == cells[:, None, None]).view(k, wy * wx)
            own = inside.index_select(1, (rows[:, None] * wx + cols).view(-1)).view(k, size, size)
        own = _dilate_torch(own, (spec.dilation_px, spec.dilation_px))
        return own.view(k, 1, size, size).to(torch.float32)
    own = _dilate_torch(id_windows[oy, ox] == cells[:, None, None], spec.dilation_window(pixel_size))
    grown = own.unsqueeze(1).to(torch.float32)
    if tuple(grown.shape[-2:]) != (size, size):
        grown = F.interpolate(grown, size=(size, size), mode="bilinear", align_corners=False)
    return (grown > 0.5).to(torch.float32)


def _dilate_torch(mask: torch.Tensor, sides: tuple[int, int]) -> torch.Tensor:
    """Dilation of (..., H, W) boolean masks by a (y, x) rectangle of odd sides, pixels beyond the border
    not counted (like ``grey_dilation`` of a crop): the OR of shifted copies, one axis after the other
    (a rectangle's maximum is separable), a few whole-batch operations whatever the number of cells."""
    import torch

    out = mask
    for axis, side in ((-2, sides[0]), (-1, sides[1])):
        source, out = out, out.clone()
        n = source.shape[axis]
        for shift in range(1, min(side // 2, n - 1) + 1):
            torch.logical_or(out.narrow(axis, 0, n - shift), source.narrow(axis, shift, n - shift),
                             out=out.narrow(axis, 0, n - shift))
            torch.logical_or(out.narrow(axis, shift, n - shift), source.narrow(axis, 0, n - shift),
                             out=out.narrow(axis, shift, n - shift))
    return out
