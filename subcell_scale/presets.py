"""Named protocols: every parameter of a published way of running SubCell, overridable by keyword.

Two presets ship:

``"hpa"``
    SubCell as it was trained on the Human Protein Atlas: the ``all_channels`` (microtubules, ER,
    nucleus, protein) MAE variant, a 71.68 um window centred on the cell's bounding box, resized to
    448 px (0.16 um/px, HPA's 896-px crops at 0.08 um/px halved), other cells masked out with the
    cell's own mask dilated by 7 model pixels, one global min-max over (C, H, W) per crop. Any variant
    can be chosen by name (``variant=...``). The documented alternative is the reference analysis
    geometry: masked 640-px crops at the native 0.08 um/px, i.e. ``crop_um=51.2,
    model_pixel_size=0.08`` (``out_size=640``).

``"jump-cellpainting"``
    SubCell on JUMP Cell Painting as its authors ran it: the ER-DNA-Protein MAE variant, three passes
    per cell — [ER, DNA, Mito], [ER, DNA, AGP], [ER, DNA, RNA] — whose embeddings are concatenated
    (3 x 1536 = 4608, var names ``subcell_Mito_0000`` ...); a 76.544 um window (128 px at
    0.598 um/px) centred on the rounded centroid, rescaled bilinearly to 478 px (x3.74, about the
    0.16 um/px training scale), per-channel min-max over the whole crop, neighbours not masked; the
    model reads the first 464 px of each side (29 x 29 patches of 16), as the reference ViT does. Wells
    are profiled as the median of cells per field, then the mean of fields per well; profiles are
    PCA-cor sphered on the DMSO (negative control) wells, then standardised per plate; evaluation uses
    the JUMP designs (see ``evaluation`` below).

Every pixel quantity is derived from micrometres and the plate's own pixel size, so a 40x plate gets
the same physical crop as a 20x plate (a larger window in plate pixels, the same model input).

Parameters (keys of a preset; all can be overridden)
----------------------------------------------------
variant
    Published SubCell variant used when ``embed_plate`` is given no model.
channel_map
    Model slot -> plate channel name, or a list of names for one pass per name; unmapped slots are
    matched by name (:func:`subcell_scale.models.preprocessing.resolve_channels`).
crop_um, model_pixel_size, out_size
    Crop side in micrometres, the pixel size the model sees, and the output side in pixels (default
    ``round(crop_um / model_pixel_size)``; a smaller ``out_size`` keeps the physical crop).
mask_mode, dilation, normalization, center
    As in :class:`subcell_scale.cells.CropSpec`.
illumination
    Flat-field correction applied to every field before segmentation and cropping: None (off),
    ``"estimate"`` (one flat field per plate and channel computed from the plate itself, the 10th
    percentile over fields, smoothed; see :func:`subcell_scale.illumination.estimate_flatfield`) or the
    path of a ``.npy`` flat field (c, y, x) such as the Broad's illumination functions.
label_name
    Label image of the plate holding the cells (``"cells"``).
min_area_um2, max_area_um2, drop_border
    Cells filtered out before cropping (:func:`subcell_scale.segment.filter_cells`); each is recorded
    as dropped with its reason.
segmentation
    Parameters of :func:`subcell_scale.segment.segment_field`, used when the plate has no labels.
aggregation
    Keyword arguments of :func:`subcell_scale.profiles.aggregate` (``by``, ``operation``,
    ``per_field``: with it, cells -> field with ``operation``, then the mean of fields per well).
feature_select
    Keyword arguments of ``profiles.feature_select``, or None for no feature selection.
postprocessing
    Ordered list of keyword arguments of :func:`subcell_scale.profiles.normalize` (``method``,
    ``reference``: a pandas query on obs selecting the rows a step is fitted on, ``by``: the column
    fitted separately, None for all plates together, ``spherize_method``, ...).
evaluation
    ``replicate`` and ``moa``: copairs ``average_precision`` arguments (``pos_sameby``, ``pos_diffby``,
    ``neg_sameby``, ``neg_diffby``); ``nn``: ``nn_accuracy`` arguments (``label_col``,
    ``exclude_sameby``, ``k``); ``exclude_queries``: a pandas query on obs for rows that are never
    queries (the negative controls, as in JUMP) but stay in the pool of negatives.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ChannelMismatchError, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .io import Plate

log = logging.getLogger(__name__)

PRESET_REPORT = "preset.json"
"""File written into the output directory with the effective parameters of a run."""

NEGCON_QUERY = "control_type == 'negcon'"

_COMMON: dict[str, Any] = {
    "illumination": None,
    "label_name": "cells",
    "min_area_um2": 20.0,
    "max_area_um2": 10_000.0,
    "drop_border": True,
    "segmentation": {},
}

PRESETS: dict[str, dict[str, Any]] = {
    "hpa": {
        "description": "SubCell at its HPA training geometry: 71.68 um crops at 0.16 um/px (448 px), "
                       "other cells masked, global min-max",
        "variant": "all_channels_MAE-CellS-ProtS-Pool",
        "channel_map": None,
        "crop_um": 71.68,
        "model_pixel_size": 0.16,
        "out_size": None,
        "mask_mode": "own_cell",
        "dilation": 7,
        "normalization": "global",
        "center": "bbox",
        **_COMMON,
        "aggregation": {"by": ["plate", "well"], "operation": "median", "per_field": False},
        "postprocessing": [{"method": "standardize", "reference": NEGCON_QUERY, "by": "plate"}],
        "feature_select": None,
        "evaluation": {
            "replicate": {"pos_sameby": ["compound"], "pos_diffby": [], "neg_sameby": [],
                          "neg_diffby": ["compound"]},
            "moa": {"pos_sameby": ["moa"], "pos_diffby": ["compound"], "neg_sameby": [], "neg_diffby": ["moa"]},
            "nn": {"label_col": "moa", "exclude_sameby": ["compound"], "k": 1},
            "exclude_queries": NEGCON_QUERY,
        },
        "alternatives": {
            "reference-640": {"crop_um": 51.2, "model_pixel_size": 0.08, "out_size": 640,
                              "note": "masked 640-px crops at the native 0.08 um/px, as in the SubCell "
                                      "paper analysis and the SubCellPortable README"},
        },
    },
    "jump-cellpainting": {
        "description": "SubCell on JUMP Cell Painting as its authors ran it: ER-DNA-Protein MAE, passes "
                       "[ER,DNA,Mito] [ER,DNA,AGP] [ER,DNA,RNA] concatenated, 76.5 um crops rescaled to "
                       "478 px, per-channel min-max, unmasked",
        "variant": "ER-DNA-Protein_MAE-CellS-ProtS-Pool",
        "channel_map": {"er": "ER", "nucleus": "DNA", "protein": ["Mito", "AGP", "RNA"]},
        "crop_um": 128 * 0.598,
        "model_pixel_size": 0.16,
        "out_size": 478,
        "mask_mode": "none",
        "dilation": 7,
        "normalization": "per_channel",
        "center": "centroid",
        **_COMMON,
        "aggregation": {"by": ["plate", "well"], "operation": "median", "per_field": True},
        "postprocessing": [
            {"method": "spherize", "spherize_method": "PCA-cor", "reference": NEGCON_QUERY, "by": None,
             "spherize_epsilon": 1e-6},
            {"method": "standardize", "reference": "all", "by": "plate"},
        ],
        "feature_select": None,
        "evaluation": {
            "replicate": {"pos_sameby": ["compound"], "pos_diffby": ["plate"], "neg_sameby": ["plate"],
                          "neg_diffby": ["compound"]},
            "moa": {"pos_sameby": ["moa"], "pos_diffby": ["compound", "plate"], "neg_sameby": [],
                    "neg_diffby": ["moa"]},
            "nn": {"label_col": "moa", "exclude_sameby": ["compound", "plate"], "k": 1},
            "exclude_queries": NEGCON_QUERY,
        },
        "alternatives": {},
    },
}
"""Defaults of every preset, by name (see the module docstring for what each key means)."""

DEFAULT_PRESET = "hpa"

_NOT_OVERRIDABLE = ("description", "alternatives")
CROP_KEYS = ("crop_um", "model_pixel_size", "out_size", "mask_mode", "dilation", "normalization", "center")
"""Preset keys that are :class:`~subcell_scale.cells.CropSpec` fields."""


def preset_names() -> list[str]:
    """Names accepted by ``preset=`` and ``--preset``."""
    return list(PRESETS)


def get_preset(name: str | None) -> dict[str, Any]:
    """A deep copy of the named preset's defaults (``None``: the default, ``"hpa"``).

    Raises
    ------
    ConfigError
        Unknown name; the message lists the known ones.
    """
    key = DEFAULT_PRESET if name is None else str(name).lower()
    if key not in PRESETS:
        msg = f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}"
        raise ConfigError(msg)
    return copy.deepcopy(PRESETS[key])


def resolve_preset(name: str | None, plate: Plate | None = None, *,
                   model_channels: Sequence[str] | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Effective parameters of a preset for one plate, after overrides.

    Parameters
    ----------
    name
        A preset name (``"hpa"``, ``"jump-cellpainting"``) or None for the default.
    plate
        The plate the parameters are for; its pixel size turns micrometres into plate pixels and its
        channel names are matched to the model's slots. Without it only the plate-independent part
        is returned.
    model_channels
        The model's slots in input order (or its variant name) when a model other than the preset's
        variant is used.
    **overrides
        Any preset key (see the module docstring); ``None`` values are ignored, so callers can pass
        optional arguments through unchanged.

    Returns
    -------
    dict
        The preset's keys with overrides applied, plus ``preset`` (the name), ``overridden`` (keys
        changed from the preset), ``crop`` (the resolved :class:`~subcell_scale.cells.CropSpec`
        geometry) and, with a plate, ``plate``: its name, path, pixel size, channels, the plate
        channel indices fed to the model (one list per pass), ``pass_names``, ``channel_mapping``
        (plate channel -> model slot, per pass) and ``crop_window_px`` (crop side in plate pixels).

    Raises
    ------
    ConfigError
        Unknown preset or parameter, or a value the crop geometry rejects.
    ChannelMismatchError
        The plate lacks a channel the preset (or channel map) needs; raised before any work starts,
        naming the channel, the preset and the plate.
    """
    params = get_preset(name)
    preset_name = DEFAULT_PRESET if name is None else str(name).lower()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    allowed = sorted(k for k in params if k not in _NOT_OVERRIDABLE)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        msg = f"preset {preset_name!r}: unknown parameter(s) {unknown}; parameters are {allowed}"
        raise ConfigError(msg)
    overridden = sorted(k for k, v in overrides.items() if params.get(k) != v)
    if "crop_um" in overridden and "out_size" not in overrides and params["out_size"] is not None:
        # a new physical crop at the preset's model scale, not a squeezed one
        params["out_size"] = None
    params.update(copy.deepcopy(overrides))
    params["preset"] = preset_name
    params["overridden"] = overridden
    params.pop("alternatives", None)
    spec = crop_spec(params)
    params["crop"] = spec.as_dict()
    if plate is not None:
        params["plate"] = plate_parameters(params, plate, model_channels=model_channels)
    return params


def crop_spec(params: Mapping[str, Any]):
    """The :class:`~subcell_scale.cells.CropSpec` of resolved parameters."""
    from .cells import CropSpec

    return CropSpec(crop_um=float(params["crop_um"]), model_pixel_size=float(params["model_pixel_size"]),
                    out_size=None if params["out_size"] is None else int(params["out_size"]),
                    mask_mode=params["mask_mode"], dilation=int(params["dilation"]),
                    normalization=params["normalization"], center=params["center"])


def plate_parameters(params: Mapping[str, Any], plate: Plate, *,
                     model_channels: Sequence[str] | str | None = None) -> dict[str, Any]:
    """The plate-dependent part of the parameters: channel indices per pass and the crop window."""
    from .models.preprocessing import resolve_channels
    from .models.registry import get_variant

    model = params["variant"] if model_channels is None else model_channels
    slots = list(get_variant(model).channels) if isinstance(model, str) else list(model)
    names = [str(c) for c in plate.channel_names]
    try:
        resolved = resolve_channels(names, model, params.get("channel_map"))
    except ChannelMismatchError as exc:
        missing = _missing_channels(params.get("channel_map"), names)
        what = f"channel(s) {missing} " if missing else ""
        msg = (f"preset {params['preset']!r} needs {what}that plate {plate.name!r} ({plate.path}) lacks: {exc}")
        raise ChannelMismatchError(msg) from exc
    multi = bool(resolved) and isinstance(resolved[0], list)
    passes = [list(p) for p in resolved] if multi else [list(resolved)]
    pass_names = _pass_names(passes, names) if multi else []
    spec = crop_spec(params)
    wy, wx = spec.window(plate.pixel_size)
    return {
        "name": plate.name,
        "path": str(plate.path),
        "pixel_size": [float(v) for v in plate.pixel_size],
        "channels": names,
        "model_channels": slots,
        "passes": passes,
        "multi_pass": multi,
        "pass_names": pass_names,
        "channel_mapping": [{names[i]: slot for i, slot in zip(p, slots, strict=True)} for p in passes],
        "crop_window_px": [wy, wx],
        "rescale": float(spec.size) / float(wx),
    }


def _missing_channels(channel_map: Mapping[str, Any] | None, names: Sequence[str]) -> list[str]:
    lowered = {n.lower() for n in names}
    wanted: list[str] = []
    for value in (channel_map or {}).values():
        wanted.extend(value if isinstance(value, list | tuple) else [value])
    return [str(w) for w in wanted if isinstance(w, str) and w.lower() not in lowered]


def _pass_names(passes: list[list[int]], names: Sequence[str]) -> list[str]:
    """One name per pass: the plate channel that differs between passes (``Mito``, ``AGP``, ``RNA``)."""
    varying = [j for j in range(len(passes[0])) if len({p[j] for p in passes}) > 1]
    out = ["-".join(names[p[j]] for j in varying) or f"pass{k}" for k, p in enumerate(passes)]
    if len(set(out)) != len(out):
        out = [f"pass{k}" for k in range(len(passes))]
    return out


def report_lines(params: Mapping[str, Any]) -> list[str]:
    """Human-readable summary of effective parameters, for logs and the run report."""
    crop = params["crop"]
    lines = [f"preset {params['preset']}: {params['description']}",
             f"model variant: {params['variant']}",
             f"crop: {crop['crop_um']:.2f} um -> {crop['out_size']} px at {crop['out_pixel_size']:.4f} um/px "
             f"(model scale {crop['model_pixel_size']} um/px), centre {crop['center']}, mask {crop['mask_mode']}, "
             f"normalisation {crop['normalization']}",
             f"cells kept: area {params['min_area_um2']}-{params['max_area_um2']} um2, "
             f"border cells {'dropped' if params['drop_border'] else 'kept'}; label image {params['label_name']!r}"]
    plate = params.get("plate")
    if plate:
        mapping = "; ".join(", ".join(f"{k}->{v}" for k, v in m.items()) for m in plate["channel_mapping"])
        lines.append(f"plate {plate['name']}: {plate['pixel_size'][1]} um/px, crop window "
                     f"{plate['crop_window_px'][1]} px (x{plate['rescale']:.3f}), "
                     f"{len(plate['passes'])} pass(es): {mapping}")
    agg = params["aggregation"]
    lines.append("aggregation: " + (f"{agg['operation']} per field, then mean per well"
                                    if agg.get("per_field") else f"{agg['operation']} per well"))
    steps = ", then ".join(f"{s['method']}{' ' + s['spherize_method'] if 'spherize_method' in s else ''} "
                           f"fitted on {s['reference']}" + (f" per {s['by']}" if s.get("by") else "")
                           for s in params["postprocessing"])
    lines.append(f"post-processing: {steps or 'none'}")
    if params["overridden"]:
        lines.append(f"overridden: {', '.join(params['overridden'])}")
    return lines


def write_preset_report(out: str | os.PathLike, params: Mapping[str, Any] | list[Mapping[str, Any]]) -> Path:
    """Write ``preset.json`` (effective parameters and report lines) into ``out``; returns its path.

    ``params`` is one resolved preset or a list (one per plate of a run).
    """
    from .store import atomic_write_bytes

    items = list(params) if isinstance(params, list) else [params]
    body = {"parameters": items, "lines": [line for p in items for line in report_lines(p)]}
    path = Path(out) / PRESET_REPORT
    atomic_write_bytes(path, json.dumps(body, indent=1, default=str).encode())
    return path
