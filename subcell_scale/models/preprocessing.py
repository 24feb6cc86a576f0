"""The reference SubCell preprocessing, as small array functions the pipeline calls.

- channel selection: which plate channel feeds which model slot (:func:`resolve_channels`);
- masking: the cell's own mask dilated by 7 px (:func:`dilate_mask`, :func:`mask_cell`);
- cropping and resizing: zero-padded centred crops (:func:`crop_centered`) and bilinear resizing with
  ``align_corners=False`` (:func:`resize_bilinear`, the same grid as the training-time ``cv2.resize``);
- normalisation: per-item min-max over all channels (:func:`min_max_normalize`), the reference default.

Each function takes numpy arrays (and :func:`min_max_normalize` also torch tensors), with leading batch
dimensions allowed where stated.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ChannelMismatchError, ConfigError
from .registry import MICROTUBULES, NUCLEUS, PROTEIN, SLOTS, ER, VARIANTS, Variant, get_variant

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

REFERENCE_EPS = 1e-6
"""Min-max epsilon of training and of SubCellPortable 2024-10 .. 2025-08 (later releases used 1e-8)."""

CELL_MASK_DILATION = 7
"""Side of the square structuring element the reference dilates a cell's own mask with."""

# Common plate channel names for each model slot (compared after lower-casing and dropping
# everything but letters and digits).
CHANNEL_ALIASES: dict[str, tuple[str, ...]] = {
    NUCLEUS: ("nucleus", "nuclei", "nuclear", "dna", "dapi", "hoechst", "h33342", "draq5", "blue"),
    MICROTUBULES: ("microtubules", "microtubule", "mt", "tubulin", "alphatubulin", "atubulin", "tub", "red"),
    ER: ("er", "endoplasmicreticulum", "calreticulin", "cona", "concanavalina", "pdi", "yellow"),
    PROTEIN: ("protein", "gfp", "egfp", "antibody", "ab", "poi", "target", "green"),
}


def min_max_normalize(x: np.ndarray | torch.Tensor, *, per_channel: bool = False, eps: float = REFERENCE_EPS,
                      ) -> np.ndarray | torch.Tensor:
    """Scale each item to [0, 1] the way SubCell was trained and is run.

    Parameters
    ----------
    x
        ``(..., C, H, W)``: one image or a batch. numpy arrays or torch tensors; integer input is
        computed in float64 (numpy) and returned as float32.
    per_channel
        ``False`` (default): one min and max over ``(C, H, W)`` of each item, as in training and every
        SubCellPortable release but 2025-10/11. ``True``: min and max of each channel over ``(H, W)``,
        the 2025-10/11 behaviour (use ``eps=0`` to match it exactly).
    eps
        Added to ``max - min``. 1e-6 as in training; SubCellPortable >= 2025-08 uses 1e-8. A constant
        item (``max == min``) becomes zeros even with ``eps=0``, instead of NaN.

    Returns
    -------
    The same kind of array, float32 (float64 input stays float64).
    """
    if x.ndim < 3:
        msg = f"min_max_normalize expects (..., C, H, W), got shape {tuple(x.shape)}"
        raise ValueError(msg)
    dims = (-2, -1) if per_channel else (-3, -2, -1)
    if isinstance(x, np.ndarray):
        out_dtype = np.float64 if x.dtype == np.float64 else np.float32
        work = x.astype(np.float64) if not np.issubdtype(x.dtype, np.floating) else x
        lo = work.min(axis=dims, keepdims=True)
        span = work.max(axis=dims, keepdims=True) - lo
        out = (work - lo) / (span + eps) if eps else (work - lo) / np.where(span == 0, 1, span)
        return out.astype(out_dtype, copy=False)
    import torch

    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    work = x if x.is_floating_point() else x.double()
    lo = work.amin(dim=dims, keepdim=True)
    span = work.amax(dim=dims, keepdim=True) - lo
    out = (work - lo) / (span + eps) if eps else (work - lo) / torch.where(span == 0, torch.ones_like(span), span)
    return out.to(out_dtype)


def dilate_mask(mask: np.ndarray, size: int = CELL_MASK_DILATION) -> np.ndarray:
    """Grow a boolean mask ``(..., H, W)`` by a ``size`` x ``size`` square (the reference's grey_dilation).

    The reference dilates the cell's own mask so that its membrane signal is not cut off by masking.
    """
    from scipy import ndimage

    if size < 1:
        msg = f"dilation size must be >= 1, got {size}"
        raise ValueError(msg)
    mask = np.asarray(mask).astype(bool, copy=False)
    if mask.ndim < 2:
        msg = f"dilate_mask expects (..., H, W), got shape {mask.shape}"
        raise ValueError(msg)
    if size == 1:
        return mask.copy()
    footprint = np.zeros((1,) * (mask.ndim - 2) + (size, size), dtype=bool)
    footprint[...] = True
    return ndimage.grey_dilation(mask.astype(np.uint8), footprint=footprint).astype(bool)


def mask_cell(image: np.ndarray, labels: np.ndarray, label: int, *, dilation: int = CELL_MASK_DILATION,
              ) -> np.ndarray:
    """Zero every pixel of ``image`` ``(C, H, W)`` outside cell ``label``'s dilated mask (the reference masking)."""
    if labels.shape != image.shape[-2:]:
        msg = f"labels shape {labels.shape} does not match image {image.shape[-2:]}"
        raise ValueError(msg)
    keep = dilate_mask(labels == label, dilation) if dilation > 1 else labels == label
    return image * keep.astype(image.dtype)


def crop_centered(image: np.ndarray, center: tuple[float, float], size: int | tuple[int, int]) -> np.ndarray:
    """A ``size`` window of ``image`` ``(..., H, W)`` centred on ``center`` (y, x), zero-padded outside.

    The window starts at ``round(center) - size // 2``, like the reference ``safe_crop`` around a
    bounding-box centre.
    """
    sy, sx = (size, size) if isinstance(size, int) else size
    h, w = image.shape[-2:]
    y0 = int(round(center[0])) - sy // 2
    x0 = int(round(center[1])) - sx // 2
    out = np.zeros((*image.shape[:-2], sy, sx), dtype=image.dtype)
    ys, ye = max(y0, 0), min(y0 + sy, h)
    xs, xe = max(x0, 0), min(x0 + sx, w)
    if ys < ye and xs < xe:
        out[..., ys - y0:ye - y0, xs - x0:xe - x0] = image[..., ys:ye, xs:xe]
    return out


def resize_bilinear(x: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize ``(..., H, W)`` to ``size`` with torch's bilinear, ``align_corners=False``, no antialiasing.

    This is the pixel grid of ``cv2.resize(..., INTER_LINEAR)`` used to make the training crops.
    Integer input is returned as float32; float input keeps its dtype.
    """
    import torch
    import torch.nn.functional as F

    x = np.asarray(x)
    if x.ndim < 2:
        msg = f"resize_bilinear expects (..., H, W), got shape {x.shape}"
        raise ValueError(msg)
    out_hw = (size, size) if isinstance(size, int) else tuple(size)
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float32
    if x.shape[-2:] == out_hw:
        return x.astype(dtype, copy=True)
    lead = x.shape[:-2]
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=dtype)).reshape(-1, 1, *x.shape[-2:])
    out = F.interpolate(t, size=out_hw, mode="bilinear", align_corners=False, antialias=False)
    return out.reshape(*lead, *out_hw).numpy()


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _slot_of(key: str) -> str | None:
    """Model slot named by ``key`` (a slot name or one of its aliases), or None."""
    k = _norm(key)
    for slot, aliases in CHANNEL_ALIASES.items():
        if k == _norm(slot) or k in aliases:
            return slot
    return None


def _auto_match(slot: str, plate_channels: Sequence[str], taken: set[int]) -> list[int]:
    names = [_norm(c) for c in plate_channels]
    aliases = CHANNEL_ALIASES[slot]
    exact = [i for i, n in enumerate(names) if n in aliases and i not in taken]
    if exact:
        return exact
    # then names that start or end with an alias of 3+ letters ("DAPI_405", "anti-tubulin", "Hoechst33342")
    return [i for i, n in enumerate(names) if i not in taken
            and any(len(a) >= 3 and (n.startswith(a) or n.endswith(a)) for a in aliases)]


def _plate_index(name: Any, plate_channels: Sequence[str], slot: str, context: str) -> int:
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        if 0 <= int(name) < len(plate_channels):
            return int(name)
        msg = f"channel_map: index {name} for {slot!r} is out of range; {context}"
        raise ChannelMismatchError(msg)
    if name in plate_channels:
        return list(plate_channels).index(name)
    folded = [i for i, c in enumerate(plate_channels) if str(c).lower() == str(name).lower()]
    if len(folded) == 1:
        return folded[0]
    msg = f"channel_map: plate channel {name!r} (for {slot!r}) is not on the plate; {context}"
    raise ChannelMismatchError(msg)


def resolve_channels(plate_channels: Sequence[str], model_channels: Sequence[str] | str | Variant,
                     channel_map: Mapping[str, str | int | Sequence[str | int]] | None = None,
                     ) -> list[int] | list[list[int]]:
    """Which plate channels feed the model, in model order.

    Parameters
    ----------
    plate_channels
        The plate's channel names, in the plate's order.
    model_channels
        The model's slots in input order (``model.channels``), or a variant name / :class:`Variant`.
    channel_map
        Explicit choices, model slot -> plate channel name (or index), e.g. ``{"protein": "GFP",
        "nucleus": "DAPI"}``; keys may also be aliases (``"DNA"``, ``"MT"``, ``"ER"``). A list of plate
        channels for one slot means one model pass per listed channel (embeddings concatenated), the
        reference's multi-pass mode. Slots not in the map are matched automatically,
        case-insensitively: DNA/DAPI/Hoechst/nucleus -> nucleus; tubulin/MT/microtubules ->
        microtubules; ER/calreticulin/ConA -> er; protein/GFP/antibody -> protein.

    Returns
    -------
    ``list[int]``: one plate index per model slot; or, in multi-pass mode, ``list[list[int]]``: one such
    list per pass.

    Raises
    ------
    ChannelMismatchError
        A slot has no plate channel, or several plausible ones; the message names the slot, the variant
        and the plate's channels.
    """
    variant_name = None
    if isinstance(model_channels, (str, Variant)):
        variant = get_variant(model_channels)
        variant_name, slots = variant.name, list(variant.channels)
    else:
        slots = list(model_channels)
        variant_name = next((v.name for v in VARIANTS.values() if list(v.channels) == slots), None)
    unknown_slots = [s for s in slots if s not in SLOTS]
    if unknown_slots:
        msg = f"unknown model channel(s) {unknown_slots}; model channels are {list(SLOTS)}"
        raise ConfigError(msg)
    plate_channels = [str(c) for c in plate_channels]
    model_desc = f"variant {variant_name}" if variant_name else "the model"
    context = (f"{model_desc} needs ({', '.join(slots)}); the plate has channels {plate_channels}")

    explicit: dict[str, list[int] | int] = {}
    for key, value in (channel_map or {}).items():
        slot = _slot_of(key)
        if slot is None or slot not in slots:
            msg = f"channel_map key {key!r} is not a channel of {model_desc} ({', '.join(slots)})"
            raise ChannelMismatchError(msg)
        if isinstance(value, (list, tuple)):
            if not value:
                msg = f"channel_map: empty list for {slot!r}"
                raise ConfigError(msg)
            explicit[slot] = [_plate_index(v, plate_channels, slot, context) for v in value]
        else:
            explicit[slot] = _plate_index(value, plate_channels, slot, context)

    multi = [s for s, v in explicit.items() if isinstance(v, list)]
    if len(multi) > 1:
        msg = f"channel_map: only one model channel may list several plate channels (one pass each), got {multi}"
        raise ConfigError(msg)

    taken = {i for v in explicit.values() for i in (v if isinstance(v, list) else [v])}
    chosen: dict[str, list[int] | int] = dict(explicit)
    for slot in slots:
        if slot in chosen:
            continue
        hits = _auto_match(slot, plate_channels, taken)
        if not hits:
            msg = (f"no plate channel for model channel {slot!r}: {context}; "
                   f"map it explicitly, e.g. channel_map={{'{slot}': '<plate channel>'}}")
            raise ChannelMismatchError(msg)
        if len(hits) > 1:
            names = [plate_channels[i] for i in hits]
            msg = (f"several plate channels could be {slot!r} ({names}): {context}; choose with "
                   f"channel_map={{'{slot}': '{names[0]}'}}")
            raise ChannelMismatchError(msg)
        chosen[slot] = hits[0]
        taken.add(hits[0])

    if multi:
        passes = []
        for index in chosen[multi[0]]:  # type: ignore[union-attr]
            passes.append([index if s == multi[0] else chosen[s] for s in slots])
        logger.info("channels: %d passes for %r", len(passes), multi[0])
        return passes  # type: ignore[return-value]
    result = [int(chosen[s]) for s in slots]  # type: ignore[arg-type]
    logger.info("channels: %s", ", ".join(f"{plate_channels[i]}->{s}" for i, s in zip(result, slots)))
    return result
