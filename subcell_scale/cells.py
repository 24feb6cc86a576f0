"""Single-cell crops for SubCell: one window per cell, at the model's pixel size, masked and normalised.

Geometry (see :class:`CropSpec`)
--------------------------------
- **Centre.** Each crop is centred on the cell's centroid rounded to the nearest pixel (``center=
  "centroid"``, default, as the JUMP crop tools do) or on the centre of its bounding box (``center=
  "bbox"``, as SubCell's training crops were). The centre pixel sits at index ``side // 2`` of the
  plate-scale window, whose first pixel is ``centre - side // 2``.
- **Size.** The crop side is given in micrometres (or in model pixels) and converted with the plate's
  pixel size to a window of ``round(crop_um / pixel_size)`` plate pixels per axis, then resized
  bilinearly (``torch.nn.functional.interpolate`` semantics, ``align_corners=False``, no antialias,
  like the reference's ``cv2.resize``) to ``out_size`` pixels. The default is the training geometry:
  71.68 um at 0.16 um/px = 448 px (HPA's 896-px crops at 0.08 um/px resized to 448).
  Cell Painting as SubCell's authors ran it on JUMP: ``CropSpec(crop_um=76.544, out_size=478,
  mask_mode="none", normalization="per_channel")`` (128 px at 0.598 um/px, x3.74).
- **Padding.** Pixels of the window outside the field are zeros (the reference's ``safe_crop``).
- **Mask.** With ``mask_mode="own_cell"`` the crop is multiplied by the cell's own mask, resized to
  the output grid (nearest, pixel-centre aligned) and dilated there by a ``dilation``-pixel square.
  The dilation is counted in model pixels (7 by default, as in training) and converted to output
  pixels when ``out_size`` differs from the model scale. Neighbouring cells and background beyond the
  dilated mask become 0. ``mask_mode="none"`` keeps the whole window (JUMP's reported setting).
- **Normalisation.** After masking, ``"global"`` min-max over (C, H, W) per crop and pass, eps 1e-6
  (training's ``MinMaxNormalize``, SubCellPortable's default); ``"per_channel"`` over (H, W) per channel
  (JUMP); ``"none"`` returns the raw intensities as float32.

Pixels stay in the plate's dtype (uint16) while cropping; they become float32 only to resize and
normalise. :func:`extract_cells` runs on numpy; :func:`extract_cells_torch` does the same on any torch
device after one transfer of the field's raw pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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
    "CELL_COLUMNS", "TRAINING_CROP_UM", "TRAINING_PIXEL_SIZE", "CropSpec", "cell_table", "extract_cells",
    "extract_cells_torch", "nearest_indices", "resolve_passes"
]

logger = logging.getLogger(__name__)

MaskMode = Literal["own_cell", "none"]
Normalization = Literal["global", "per_channel", "none"]
CenterMode = Literal["centroid", "bbox"]

TRAINING_CROP_UM = 71.68
"""Side of SubCell's training crops: 896 px at 0.08 um/px (= 448 px at 0.16 um/px)."""
TRAINING_PIXEL_SIZE = 0.16
"""Micrometres per pixel of the images SubCell was trained on (after the 896 -> 448 resize)."""

CELL_COLUMNS = (Obs.LABEL, Obs.AREA, Obs.CENTROID_Y, Obs.CENTROID_X,
                "bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x", "crop_center_y", "crop_center_x")
"""Columns of the cells table; bbox max is exclusive, crop centre is the pixel a crop is centred on."""


@dataclass(frozen=True)
class CropSpec:
    """How a cell becomes a model input: window size, output size, mask, normalisation.

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
        Side of the square dilating the own-cell mask, in model pixels (7 as in training).
    normalization
        ``"global"`` (default), ``"per_channel"`` or ``"none"``, see the module docstring.
    center
        ``"centroid"`` (default) or ``"bbox"``.
    eps
        Added to (max - min) when normalising, so an empty crop gives zeros, not NaN.
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

    def __post_init__(self) -> None:
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
        }
        for name, ok in checks.items():
            if not ok:
                msg = f"CropSpec.{name} must be a positive number, got {getattr(self, name)!r}"
                raise ConfigError(msg)
        choices = {"mask_mode": ("own_cell", "none"), "normalization": ("global", "per_channel", "none"),
                   "center": ("centroid", "bbox")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                msg = f"CropSpec.{name} must be one of {allowed}, got {getattr(self, name)!r}"
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
    def dilation_px(self) -> int:
        """Odd side of the dilation square in output pixels (``dilation`` model pixels rescaled)."""
        side = self.dilation * self.model_pixel_size / self.out_pixel_size
        return 2 * max(0, int(round((side - 1) / 2))) + 1

    def window(self, pixel_size: float | Sequence[float]) -> tuple[int, int]:
        """(y, x) side of the crop window in plate pixels for a plate of this pixel size."""
        py, px = pixel_size_yx(pixel_size)
        return max(1, int(round(self.side_um / py))), max(1, int(round(self.side_um / px)))

    def as_dict(self) -> dict[str, object]:
        """Resolved geometry for provenance (``uns["subcell_scale"]``)."""
        return {"crop_um": self.side_um, "model_pixel_size": self.model_pixel_size, "out_size": self.size,
                "out_pixel_size": self.out_pixel_size, "mask_mode": self.mask_mode,
                "dilation_model_px": int(self.dilation), "dilation_out_px": self.dilation_px,
                "normalization": self.normalization, "center": self.center, "eps": self.eps}


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


def cell_table(labels: np.ndarray, *, center: CenterMode = "centroid") -> pd.DataFrame:
    """One row per cell: label, area (px), centroid, bounding box and crop centre (field pixels).

    Sorted by label value; this is the row order of the crops :func:`extract_cells` returns. Work is
    per bounding box, so a field costs little beyond one pass to find the boxes.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        msg = f"labels must be (y, x), got shape {labels.shape}"
        raise PlateFormatError(msg)
    values, boxes, source, ids = _objects(labels)
    n = values.size
    area = np.zeros(n, np.int64)
    cy = np.zeros(n)
    cx = np.zeros(n)
    bbox = np.zeros((n, 4), np.int64)
    for k, (sy, sx) in enumerate(boxes):
        inside = source[sy, sx] == ids[k]
        ys, xs = np.nonzero(inside)
        area[k] = ys.size
        cy[k], cx[k] = ys.mean() + sy.start, xs.mean() + sx.start
        bbox[k] = (sy.start, sx.start, sy.stop, sx.stop)
    if center == "bbox":
        ry, rx = (bbox[:, 0] + bbox[:, 2] - 1) / 2.0, (bbox[:, 1] + bbox[:, 3] - 1) / 2.0
    else:
        ry, rx = cy, cx
    return pd.DataFrame({
        Obs.LABEL: values, Obs.AREA: area, Obs.CENTROID_Y: cy, Obs.CENTROID_X: cx,
        "bbox_min_y": bbox[:, 0], "bbox_min_x": bbox[:, 1], "bbox_max_y": bbox[:, 2], "bbox_max_x": bbox[:, 3],
        "crop_center_y": np.floor(ry + 0.5).astype(np.int64), "crop_center_x": np.floor(rx + 0.5).astype(np.int64),
    }, columns=list(CELL_COLUMNS))


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


def extract_cells(
    image: np.ndarray,
    labels: np.ndarray,
    pixel_size: float | Sequence[float],
    spec: CropSpec | None = None,
    *,
    channels: Sequence[int] | Sequence[Sequence[int]] | None = None,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Crop, resize, mask and normalise every labelled cell of one field (numpy, CPU).

    Parameters
    ----------
    image
        One field (c, y, x), any numeric dtype (uint16 stays uint16 until the resize).
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

    Returns
    -------
    crops
        float32 (N, C, S, S) for one pass, (N, P, C, S, S) for a list of passes; N cells sorted by label.
    cells
        :func:`cell_table` of the same cells, row i describing crop i.
    """
    from .models.preprocessing import crop_centered, dilate_mask, min_max_normalize, resize_bilinear

    spec = spec or CropSpec()
    image, labels = np.asarray(image), np.asarray(labels)
    _check_inputs(image.shape, labels)
    passes, multi = resolve_passes(channels, image.shape[0])
    union = sorted({i for p in passes for i in p})
    pass_index = np.array([[union.index(i) for i in p] for p in passes])
    table = cell_table(labels, center=spec.center)
    wy, wx = spec.window(pixel_size)
    size = spec.size
    n = len(table)
    crops = np.empty((n, len(passes), len(passes[0]), size, size), np.float32)
    source = image[union]
    rows_y, cols_x = nearest_indices(wy, size), nearest_indices(wx, size)
    centres = list(zip(table["crop_center_y"].tolist(), table["crop_center_x"].tolist(), strict=True))
    values = table[Obs.LABEL].to_numpy()
    step = _chunk(chunk_size, len(union), (wy, wx), size)
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        raw = np.stack([crop_centered(source, c, (wy, wx)) for c in centres[lo:hi]])  # plate dtype
        pixels = raw.astype(np.float32)
        if (wy, wx) != (size, size):
            pixels = np.asarray(resize_bilinear(pixels, (size, size)), dtype=np.float32)
        if spec.mask_mode == "own_cell":
            own = np.stack([crop_centered(labels, c, (wy, wx)) for c in centres[lo:hi]]) == values[lo:hi, None, None]
            own = own[:, rows_y][:, :, cols_x]
            pixels *= dilate_mask(own, size=spec.dilation_px).astype(np.float32)[:, None]
        in_order = len(passes) == 1 and list(pass_index[0]) == list(range(len(union)))
        stacked = pixels[:, None] if in_order else pixels[:, pass_index]
        if spec.normalization != "none":
            stacked = min_max_normalize(stacked, per_channel=spec.normalization == "per_channel", eps=spec.eps)
        crops[lo:hi] = stacked
    logger.debug("cropped %d cells: window %dx%d px -> %d px, %d pass(es)", n, wy, wx, size, len(passes))
    return (crops if multi else crops[:, 0]), table


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device``; read-only arrays (from zarr or pandas) are copied, as torch requires."""
    import torch

    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy()).to(device)


def extract_cells_torch(
    image: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    pixel_size: float | Sequence[float],
    spec: CropSpec | None = None,
    *,
    channels: Sequence[int] | Sequence[Sequence[int]] | None = None,
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, pd.DataFrame]:
    """:func:`extract_cells` on a torch device: the field's raw pixels cross to the device once.

    Cropping is one gather per chunk of cells from a zero-padded copy of the field, the resize is
    ``F.interpolate`` (bilinear, ``align_corners=False``), the mask dilation a max-pool, and the
    normalisation runs in place; only the cells table is computed on the CPU. Results match
    :func:`extract_cells` within float32 rounding (1e-5).

    Returns
    -------
    crops
        float32 tensor on ``device``, (N, C, S, S) or (N, P, C, S, S) as in :func:`extract_cells`.
    cells
        The cells table, as in :func:`extract_cells`.
    """
    import torch
    import torch.nn.functional as F

    spec = spec or CropSpec()
    labels = np.asarray(labels)
    device = torch.device(device) if device is not None else (
        image.device if isinstance(image, torch.Tensor) else torch.device("cpu"))
    shape = tuple(image.shape)
    _check_inputs(shape, labels)
    passes, multi = resolve_passes(channels, shape[0])
    union = sorted({i for p in passes for i in p})
    pass_index = torch.tensor([[union.index(i) for i in p] for p in passes], device=device)
    table = cell_table(labels, center=spec.center)
    wy, wx = spec.window(pixel_size)
    size = spec.size
    n = len(table)
    out = torch.empty((n, len(passes), len(passes[0]), size, size), dtype=torch.float32, device=device)
    if n == 0:
        return (out if multi else out[:, 0]), table

    if isinstance(image, torch.Tensor):
        field = image.to(device).to(torch.float32)[union]
    else:  # select channels on the host, then one transfer of raw (e.g. uint16) pixels
        field = _tensor(np.asarray(image)[union], device).to(torch.float32)
    padded = F.pad(field, (wx, wx, wy, wy))
    lab_host = labels if labels.dtype in (np.int32, np.int64) else labels.astype(np.int64)
    lab = F.pad(_tensor(lab_host, device), (wx, wx, wy, wy))
    rows_y, cols_x = _tensor(nearest_indices(wy, size), device), _tensor(nearest_indices(wx, size), device)
    starts_y = _tensor(table["crop_center_y"].to_numpy() - wy // 2 + wy, device)
    starts_x = _tensor(table["crop_center_x"].to_numpy() - wx // 2 + wx, device)
    values = _tensor(table[Obs.LABEL].to_numpy(), device)
    ar_y, ar_x = torch.arange(wy, device=device), torch.arange(wx, device=device)
    k = spec.dilation_px
    per_channel = spec.normalization == "per_channel"
    step = _chunk(chunk_size, len(union), (wy, wx), size)
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        iy = (starts_y[lo:hi, None] + ar_y)[:, :, None]
        ix = (starts_x[lo:hi, None] + ar_x)[:, None, :]
        pixels = padded[:, iy, ix].transpose(0, 1)  # (n, U, wy, wx)
        if (wy, wx) != (size, size):
            pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
        if spec.mask_mode == "own_cell":
            own = (lab[iy, ix] == values[lo:hi, None, None])[:, rows_y][:, :, cols_x].to(torch.float32)
            own = F.max_pool2d(own[:, None], kernel_size=k, stride=1, padding=k // 2)
            pixels = pixels * own
        stacked = pixels[:, pass_index]  # (n, P, C, S, S)
        if spec.normalization != "none":
            dims = (-2, -1) if per_channel else (-3, -2, -1)
            low = stacked.amin(dim=dims, keepdim=True)
            high = stacked.amax(dim=dims, keepdim=True)
            stacked = (stacked - low) / (high - low + spec.eps)
        out[lo:hi] = stacked
    return (out if multi else out[:, 0]), table
