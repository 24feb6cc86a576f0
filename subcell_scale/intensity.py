"""Intensity scaling of the lab's public JUMP crop generator: plate and field percentiles, uint8 levels.

SubCell's JUMP benchmark read uint8 crops; the generator that is public (CellProfiling/subcell-analysis,
``preprocess/JUMP_preprocess``, "same as Broad's DeepProfiler"; see ``docs/protocols.md``) makes them so:

1. **Plate bound.** Per plate and channel, a histogram of the raw pixels of every field (65,536 unit
   bins, i.e. 16-bit values), taken *before* illumination correction. The upper bound is the first bin
   whose cumulative share exceeds 99.99 % (DeepProfiler's illumination statistics): an integer.
2. **Field bounds.** Per field and channel, *after* illumination correction: numpy's linear percentiles
   0.05 % (lower) and 99.95 % (upper) of the float32 field.
3. **Scaling.** ``clip((x - field_lower) / min(plate_upper, field_upper), 0, 1)``: divided by the upper
   bound, not by ``upper - lower``.
4. **Quantisation.** ``uint8(scaled * 255)``, truncating; the crops are read back as ``level / 255``.

The numpy functions follow the generator's arithmetic (a float32 field, bounds in float64, the scaled
field stored as float32); the torch twins compute the same numbers on any device, bit for bit: the order
statistics are the same values and the interpolation between them is done in the same precision, in the
same order of operations as ``numpy.percentile``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal

import numpy as np

from .errors import ConfigError, PlateFormatError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .io import Plate

__all__ = [
    "HISTOGRAM_BINS", "field_bounds", "field_bounds_torch", "field_histogram", "histogram_percentile",
    "plate_histogram", "scale_field", "scale_field_torch",
]

logger = logging.getLogger(__name__)

Quantization = Literal["none", "uint8"]

HISTOGRAM_BINS = 65536
"""Unit bins of the plate histogram: every 16-bit value has its own bin (DeepProfiler's ``bits=16``)."""


def field_histogram(field: np.ndarray) -> np.ndarray:
    """Per-channel counts of a field's pixel values in unit bins ``[k, k + 1)``, k = 0 .. 65535.

    The same counts as ``np.histogram(channel, bins=65536, range=(0, 65536))``: values outside the range
    are not counted, and 65536 itself falls in the last bin.

    Returns
    -------
    int64 (c, 65536)
    """
    field = np.asarray(field)
    if field.ndim != 3:
        msg = f"a plate histogram needs fields shaped (c, y, x), got shape {field.shape}"
        raise PlateFormatError(msg)
    out = np.zeros((field.shape[0], HISTOGRAM_BINS), np.int64)
    for c, channel in enumerate(field):
        values = channel.ravel()
        if np.issubdtype(values.dtype, np.unsignedinteger) and values.dtype.itemsize <= 2:
            out[c] = np.bincount(values, minlength=HISTOGRAM_BINS)
        else:
            out[c] = np.histogram(values, bins=HISTOGRAM_BINS, range=(0, HISTOGRAM_BINS))[0]
    return out


def plate_histogram(plate: Plate, *, threads: int | None = None) -> np.ndarray:
    """Histogram (c, 65536) of the raw pixels of every field of ``plate``, summed over fields.

    Fields are read by a few threads (decoding releases the GIL); the sum does not depend on the order.
    This is one pass over the whole plate: for a JUMP plate of ~3,500 fields, about as much reading as
    the run itself.
    """
    sites = [(w, f) for w in plate.wells for f in plate.fields(w)]
    if not sites:
        msg = f"plate {plate.name} ({plate.path}) has no fields to compute intensity statistics from"
        raise PlateFormatError(msg)
    workers = threads if threads is not None else min(8, os.cpu_count() or 1)
    logger.info("plate %s: histogram of %d fields for the plate percentile", plate.name, len(sites))
    total = np.zeros((len(plate.channel_names), HISTOGRAM_BINS), np.int64)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for counts in pool.map(lambda site: field_histogram(plate.read_field(*site)), sites):
            if counts.shape != total.shape:
                msg = f"plate {plate.name}: a field has {counts.shape[0]} channels, the plate {total.shape[0]}"
                raise PlateFormatError(msg)
            total += counts
    return total


def histogram_percentile(histogram: np.ndarray, percentile: float) -> np.ndarray:
    """Per channel, the first bin whose cumulative share of pixels exceeds ``percentile`` %.

    The generator's rule (``argmax(cumsum(counts / counts.sum()) > p)``, p written as a fraction: 99.99 %
    is 0.9999) returns a bin index, i.e. an integer pixel value; float64 (c,).
    """
    histogram = np.asarray(histogram)
    if histogram.ndim != 2:
        msg = f"histogram must be (c, bins), got shape {histogram.shape}"
        raise ConfigError(msg)
    if not 0 <= percentile < 100:
        msg = f"percentile must be in [0, 100), got {percentile}"
        raise ConfigError(msg)
    fraction = round(percentile / 100, 12)  # 99.99 -> 0.9999 exactly, as the generator writes it
    out = np.zeros(histogram.shape[0])
    for c, counts in enumerate(histogram):
        total = counts.sum()
        if total == 0:
            msg = f"channel {c} has no pixels in the histogram"
            raise PlateFormatError(msg)
        out[c] = np.argmax(np.cumsum(counts / total) > fraction)
    return out


def _check_bounds_args(field_shape: tuple[int, ...], lower_percentile: float | None,
                       upper_percentile: float | None, plate_upper: Sequence[float] | None) -> None:
    if len(field_shape) != 3:
        msg = f"intensity scaling needs a field shaped (c, y, x), got shape {field_shape}"
        raise PlateFormatError(msg)
    for name, value in (("lower", lower_percentile), ("upper", upper_percentile)):
        if value is not None and not 0 <= value <= 100:
            msg = f"field {name} percentile must be in [0, 100], got {value}"
            raise ConfigError(msg)
    if plate_upper is not None and len(plate_upper) != field_shape[0]:
        msg = f"plate_upper has {len(plate_upper)} values for a field of {field_shape[0]} channels"
        raise ConfigError(msg)
    if upper_percentile is None and plate_upper is None:
        msg = "intensity scaling needs an upper bound: a field upper percentile, a plate upper bound or both"
        raise ConfigError(msg)


def field_bounds(field: np.ndarray, *, lower_percentile: float | None, upper_percentile: float | None,
                 plate_upper: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bound per channel of one (illumination-corrected) field, float64 (c,) each.

    Parameters
    ----------
    field
        float32 (c, y, x); other dtypes are converted to float32 first, as the generator reads them.
    lower_percentile
        Percentile of the field giving the lower bound (0.05); None: 0.
    upper_percentile
        Percentile of the field giving the upper bound (99.95); None: the plate bound alone.
    plate_upper
        Plate bound per channel (:func:`histogram_percentile`); the upper bound is the smaller of the
        two. None: the field's alone.
    """
    field = np.asarray(field)
    _check_bounds_args(field.shape, lower_percentile, upper_percentile, plate_upper)
    flat = field.reshape(field.shape[0], -1).astype(np.float32, copy=False)
    wanted = [q for q in (lower_percentile, upper_percentile) if q is not None]
    # a list of q keeps numpy's interpolation in float64, as the generator's two-value call does
    values = np.percentile(flat, np.asarray(wanted, np.float64), axis=1) if wanted else np.zeros((0, len(flat)))
    lower = values[0] if lower_percentile is not None else np.zeros(len(flat))
    upper = values[-1] if upper_percentile is not None else np.full(len(flat), np.inf)
    if plate_upper is not None:
        upper = np.minimum(np.asarray(plate_upper, np.float64), upper)
    return lower.astype(np.float64), upper.astype(np.float64)


def scale_field(field: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                quantization: Quantization = "none") -> np.ndarray:
    """``clip((field - lower) / upper, 0, 1)`` per channel, as float32; with ``"uint8"`` truncated to
    ``k / 255`` levels (the value a crop saved as uint8 has once read back and divided by 255).

    A channel whose upper bound is not positive (an empty channel) becomes 0.
    """
    field = np.asarray(field)
    lower = np.asarray(lower, np.float64)[:, None, None]
    upper = np.asarray(upper, np.float64)[:, None, None]
    shifted = field.astype(np.float32, copy=False).astype(np.float64) - lower
    ratio = np.divide(shifted, upper, out=np.zeros_like(shifted), where=upper > 0)
    scaled = np.clip(ratio, 0, 1).astype(np.float32)
    if quantization == "uint8":
        levels = (scaled * np.float32(255)).astype(np.uint8)
        scaled = levels.astype(np.float32) / np.float32(255)
    elif quantization != "none":
        msg = f"quantization must be 'none' or 'uint8', got {quantization!r}"
        raise ConfigError(msg)
    return scaled


def _order_statistics(flat: torch.Tensor, ranks: Sequence[int], *, use_sort: bool | None = None) -> torch.Tensor:
    """Values of the given 0-based ranks along the last axis of (c, n): (len(ranks), c).

    CUDA sorts each row once (a segmented radix sort, fastest there); on the CPU one introselect
    (``np.partition``) finds every rank without a full sort. Both give the same values.
    """
    import torch

    use_sort = flat.device.type != "cpu" if use_sort is None else use_sort
    if use_sort:
        index = torch.as_tensor(list(ranks), device=flat.device, dtype=torch.long)
        return torch.sort(flat, dim=-1).values.index_select(-1, index).T
    unique = sorted(set(ranks))
    selected = np.partition(flat.detach().cpu().numpy(), unique, axis=-1)[:, list(ranks)]
    return torch.from_numpy(np.ascontiguousarray(selected.T)).to(flat.device)


def _percentiles_torch(flat: torch.Tensor, percentiles: Sequence[float], *, use_sort: bool | None = None,
                       ) -> torch.Tensor:
    """numpy's linear ``percentile`` of float32 rows (c, n), float64 (len(percentiles), c), bit for bit.

    numpy interpolates between the two neighbouring order statistics a, b with weight t: the difference
    ``b - a`` in the input's precision, then ``a + d * t`` (or ``b - d * (1 - t)`` when t >= 0.5) in
    float64; the indices and weights depend on n only and are computed here exactly as numpy does.
    """
    import torch

    n = int(flat.shape[-1])
    virtual = (n - 1) * np.true_divide(np.asarray(percentiles, np.float64), 100)
    previous = np.floor(virtual)
    following = previous + 1
    above, below = virtual >= n - 1, virtual < 0
    previous[above], following[above] = n - 1, n - 1
    previous[below], following[below] = 0, 0
    gamma = virtual - np.floor(virtual)
    ranks = [int(v) for v in previous] + [int(v) for v in following]
    stats = _order_statistics(flat, ranks, use_sort=use_sort)
    a, b = stats[: len(percentiles)], stats[len(percentiles):]
    diff = (b - a).to(torch.float64)
    t = torch.as_tensor(gamma, dtype=torch.float64, device=flat.device)[:, None]
    low_side = a.to(torch.float64) + diff * t
    high_side = b.to(torch.float64) - diff * (1 - t)
    return torch.where(t >= 0.5, high_side, low_side)


def field_bounds_torch(field: torch.Tensor, *, lower_percentile: float | None, upper_percentile: float | None,
                       plate_upper: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`field_bounds` of a float32 (c, y, x) tensor, on its device: float64 (c,) tensors."""
    import torch

    _check_bounds_args(tuple(field.shape), lower_percentile, upper_percentile, plate_upper)
    flat = field.reshape(field.shape[0], -1).to(torch.float32)
    c, device = flat.shape[0], flat.device
    wanted = [q for q in (lower_percentile, upper_percentile) if q is not None]
    values = _percentiles_torch(flat, wanted) if wanted else None
    lower = values[0] if lower_percentile is not None else torch.zeros(c, dtype=torch.float64, device=device)
    upper = (values[-1] if upper_percentile is not None
             else torch.full((c,), float("inf"), dtype=torch.float64, device=device))
    if plate_upper is not None:
        upper = torch.minimum(torch.as_tensor(list(plate_upper), dtype=torch.float64, device=device), upper)
    return lower, upper


def scale_field_torch(field: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                      quantization: Quantization = "none") -> torch.Tensor:
    """:func:`scale_field` on a (c, y, x) tensor, on its device: float32, the same values."""
    import torch

    lower = lower.to(torch.float64)[:, None, None]
    upper = upper.to(torch.float64)[:, None, None]
    shifted = field.to(torch.float32).to(torch.float64) - lower
    positive = upper > 0
    ratio = torch.where(positive, shifted / torch.where(positive, upper, torch.ones_like(upper)),
                        torch.zeros_like(shifted))
    scaled = ratio.clamp_(0, 1).to(torch.float32)
    if quantization == "uint8":
        scaled = (scaled * 255).to(torch.uint8).to(torch.float32) / 255
    elif quantization != "none":
        msg = f"quantization must be 'none' or 'uint8', got {quantization!r}"
        raise ConfigError(msg)
    return scaled
