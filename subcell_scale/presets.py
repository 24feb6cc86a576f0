"""Named protocols: every parameter of a published way of running SubCell, overridable by keyword.

This module holds the presets as data and is the only reader of them (:func:`get_preset`, and
:func:`get_chain` and :func:`get_design` for the parts that ``profiles.postprocess`` and
``metrics.evaluate_profiles`` take by preset name); :meth:`subcell_scale.params.RunParams.resolve`
turns one, with overrides, into the typed parameters a run uses.

Two presets ship:

``"hpa"``
    SubCell as it was trained on the Human Protein Atlas: the ``all_channels`` (microtubules, ER,
    nucleus, protein) MAE variant, a 71.68 um window centred on the cell's bounding box, resized to
    448 px (0.16 um/px, HPA's 896-px crops at 0.08 um/px halved), other cells masked out with the
    cell's own mask dilated as training did (a 7 x 7 square at the source 0.08 um/px, then resized
    bilinearly with the image and rounded: subcell-analysis ``preprocess/convert2mds.py``), one global
    min-max over (C, H, W) per crop. Any variant can be chosen by name (``variant=...``). The
    documented alternative is the reference analysis geometry: masked 640-px crops at the native
    0.08 um/px, i.e. ``crop_um=51.2, model_pixel_size=0.08`` (``out_size=640``).

``"jump-cellpainting"``
    SubCell on JUMP Cell Painting as its authors ran it: the ER-DNA-Protein MAE variant, three passes
    per cell — [ER, DNA, Mito], [ER, DNA, AGP], [ER, DNA, RNA] — whose embeddings are concatenated
    (3 x 1536 = 4608, var names ``subcell_Mito_0000`` ...); a 76.544 um window (128 px at
    0.598 um/px) centred on the rounded centroid, rescaled bilinearly to 478 px (x3.74, about the
    0.16 um/px training scale), per-channel min-max over the whole crop, neighbours not masked; the
    model reads the first 464 px of each side (29 x 29 patches of 16), as the reference ViT does.
    Intensities as the lab's public JUMP crop generator made its uint8 crops (subcell-analysis
    ``preprocess/JUMP_preprocess``, see ``docs/protocols.md``): each field clipped per channel at its
    0.05 % and the smaller of the plate's 99.99 % (raw 16-bit histogram) and its own 99.95 %
    percentile, divided by that upper bound, truncated to uint8 levels before the crop's min-max;
    centres rounded half to even; cells whose 192-px (114.8 um) crop would reach past the field padded
    by 48 px are dropped (``"edge"``). Its illumination correction (the Broad's functions) is the
    ``illumination`` key: ``illumination="path/{plate}_Illum{channel}.npy"``. Wells
    are profiled as the median of cells per field, then the mean of fields per well. Post-processing
    and evaluation are those of the SubCell JUMP benchmark (zwefers/subcell_jump_analysis), each cell
    type on its own (``scripts/postprocess.py`` L7-10, L179): PCA-cor sphering fitted on the DMSO
    wells, eps 1e-6, computed as the pycytominer releases of the benchmark did (SVD of the raw DMSO
    rows, ``spherize_variant="legacy"``; ``utils/postprocess_utils.py`` L115-125), then
    standardisation per plate fitted on all its wells (L100-113), no feature selection
    (``configs/BEST_POSTPROC_CONFIGS.yaml`` L3). Evaluation (``scripts/compute_map.py``): DMSO wells
    removed (L277); replicate mAP with the same compound on another plate as positives and other
    compounds on the same plate as negatives (L82-92); multilabel MoA mAP with another compound on
    another plate as positives and the same plate, no shared MoA, as negatives, usable MoAs only
    (L113-131); null size 10000, threshold 0.05, seed 42 (L91, L130, L230-234); MoA k-NN accuracy
    for k = 1..50 skipping the same plate or compound, a neighbour matching when its usable-MoA list
    is identical to the query's (L202-220), every query counted (L163-173); compound k-NN accuracy
    skipping the same plate (L189). ``docs/protocols.md`` lists every step with its reference and the
    differences that remain.

A third named chain, ``"jump-recipe"`` (:data:`CHAINS`), is the JUMP consortium's post-processing
(broadinstitute/jump-profiling-recipe): variant features, per-plate MAD robustize, rank inverse
normal transform, feature selection, Harmony on ``batch``; use it with
``subcell_scale.profiles.postprocess(profiles, preset="jump-recipe")`` or ``postprocess="jump-recipe"``
in a run.

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
mask_mode, dilation, dilation_pixel_size, mask_resize, normalization, center, center_rounding
    Mask, normalisation and centre, as in :class:`subcell_scale.cells.CropSpec`.
plate_upper_percentile, field_lower_percentile, field_upper_percentile, quantization
    Intensity scaling before cropping (:mod:`subcell_scale.intensity`); None (``False`` in an
    override) / ``"none"`` switch each off (all off: intensities as stored).
edge_padding, edge_window_um
    The edge rule (cells whose window would reach past the padded field are dropped, recorded as
    ``"edge"``); None (``False`` in an override): off.
illumination
    Flat-field correction applied to every field before segmentation and cropping: None (off),
    ``"estimate"`` (one flat field per plate and channel computed from the plate itself, the 10th
    percentile over fields, smoothed; see :func:`subcell_scale.illumination.estimate_flatfield`), the
    path of a ``.npy`` flat field (c, y, x), a path template with ``{plate}`` and ``{channel}`` (the
    Broad's illumination functions: ``"{plate}_Illum{channel}.npy"``), a list of 2-D ``.npy`` paths in
    plate channel order or a mapping channel name -> path.
label_name
    Label image of the plate holding the cells (``"cells"``).
nonfinite
    What a field holding NaN or infinite pixels becomes: ``"fail"`` (the field fails, its message counts
    them) or ``"zero"`` (they are read as 0 and each cell's count of them is kept in
    ``obs["nonfinite_pixels"]``).
min_area_um2, max_area_um2, drop_border
    Cells filtered out before cropping (:func:`subcell_scale.segment.filter_cells`); each is recorded
    as dropped with its reason.
segmentation
    Parameters of :func:`subcell_scale.segment.segment_field`, used when the plate has no labels.
aggregation
    Keyword arguments of :func:`subcell_scale.profiles.aggregate` (``by``, ``operation``,
    ``per_field``: with it, cells -> field with ``operation``, then the mean of fields per well).
postprocess
    The chain of :func:`subcell_scale.profiles.postprocess`: a list of steps (``{"step": "normalize",
    "method": ..., "reference": <pandas query on obs>, "by": <column fitted separately>, ...}``), run
    separately per ``obs["cell_type"]`` when present; or the name of a chain in :data:`CHAINS`.
cellprofiler
    CellProfiler measurements of each kept cell, in the same pass (``obsm["cellprofiler"]``): False (off),
    True (the cheap default feature groups), ``"all"`` or a list of cp_measure feature groups
    (:mod:`subcell_scale.cellprofiler`). Profiles and metrics are then made for SubCell, CellProfiler
    and both together, side by side.
design
    Fields of :class:`subcell_scale.metrics.EvaluationDesign` for
    :func:`subcell_scale.metrics.evaluate_profiles` (pair rules, negative controls, usable MoAs,
    null size, threshold, seed, k-NN rules).
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ConfigError

__all__ = ["CHAINS", "DEFAULT_PRESET", "NEGCON_QUERY", "PRESETS", "get_chain", "get_design", "get_preset",
           "preset_names"]

NEGCON_QUERY = "control_type == 'negcon'"

_COMMON: dict[str, Any] = {
    "illumination": None,
    "label_name": "cells",
    "min_area_um2": 20.0,
    "max_area_um2": 10_000.0,
    "drop_border": True,
    "nonfinite": "fail",
    "segmentation": {},
    "cellprofiler": False,
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
        "dilation_pixel_size": 0.08,
        "mask_resize": "bilinear",
        "normalization": "global",
        "center": "bbox",
        "center_rounding": "half_up",
        "plate_upper_percentile": None,
        "field_lower_percentile": None,
        "field_upper_percentile": None,
        "quantization": "none",
        "edge_padding": None,
        "edge_window_um": None,
        **_COMMON,
        "aggregation": {"by": ["plate", "well"], "operation": "median", "per_field": False},
        # not a published evaluation: DMSO-standardised wells, replicates and MoAs retrieved across the run
        "postprocess": [{"step": "normalize", "method": "standardize", "reference": NEGCON_QUERY, "by": "plate"}],
        "design": {
            "replicate_rules": {"pos_sameby": ["compound"], "pos_diffby": [], "neg_sameby": [],
                                "neg_diffby": ["compound"]},
            "moa_rules": {"pos_sameby": ["moa"], "pos_diffby": ["compound"], "neg_sameby": [],
                          "neg_diffby": ["moa"]},
            "moa_nn_exclude": ["compound"], "compound_nn_exclude": ["plate"], "negcon_in_pool": True,
            "nn_match": "any", "seed": 0,
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
        "dilation_pixel_size": None,
        "mask_resize": "nearest",
        "normalization": "per_channel",
        "center": "centroid",
        "center_rounding": "half_even",
        "plate_upper_percentile": 99.99,
        "field_lower_percentile": 0.05,
        "field_upper_percentile": 99.95,
        "quantization": "uint8",
        "edge_padding": 0.25,
        "edge_window_um": 192 * 0.598,
        **_COMMON,
        # JUMP nuclei (~17-22 um) are cut in two at the default 5 um split distance: F1 0.69 -> 0.96 against
        # the ground truth of JUMP-geometry demo plates (benchmarks/bench_segment.py --geometry jump)
        "segmentation": {"nucleus_min_distance_um": 10.0},
        "aggregation": {"by": ["plate", "well"], "operation": "median", "per_field": True},
        "postprocess": [
            {"step": "normalize", "method": "spherize", "spherize_method": "PCA-cor", "reference": NEGCON_QUERY,
             "by": None, "spherize_epsilon": 1e-6, "spherize_center": True, "spherize_variant": "legacy"},
            {"step": "normalize", "method": "standardize", "reference": "all", "by": "plate"},
        ],
        "design": {},  # the SubCell JUMP benchmark's: the defaults of EvaluationDesign
        "alternatives": {},
    },
}
"""Defaults of every preset, by name (see the module docstring for what each key means)."""

CHAINS: dict[str, list[dict[str, Any]]] = {
    "jump-recipe": [
        {"step": "select_variant_features", "reference": NEGCON_QUERY, "by": "plate"},
        {"step": "normalize", "method": "mad_robustize", "reference": NEGCON_QUERY, "by": "plate",
         "mad_scale": 1.0, "mad_robustize_epsilon": 0.0},
        {"step": "rank_inverse_normal"},
        {"step": "feature_select", "operation": ["variance_threshold", "correlation_threshold", "drop_na_columns"],
         "na_cutoff": 0.0},
        {"step": "harmony", "batch": "batch", "nclust": 300, "max_iter_harmony": 20},
    ],
}
"""Post-processing chains by name, beyond the presets' own (``docs/protocols.md``, ``jump-recipe``)."""

DEFAULT_PRESET = "hpa"


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


def get_chain(name: str) -> list[dict[str, Any]]:
    """A deep copy of a post-processing chain: a preset's ``postprocess`` or one of :data:`CHAINS`.

    Raises
    ------
    ConfigError
        Neither a preset nor a chain has that name; the message lists both.
    """
    key = str(name).lower()
    if key in CHAINS:
        return copy.deepcopy(CHAINS[key])
    if key in PRESETS:
        chain = PRESETS[key]["postprocess"]
        return get_chain(chain) if isinstance(chain, str) else copy.deepcopy(chain)
    msg = f"unknown post-processing chain {name!r}; presets: {', '.join(PRESETS)}; chains: {', '.join(CHAINS)}"
    raise ConfigError(msg)


def get_design(name: str) -> dict[str, Any]:
    """A deep copy of a preset's evaluation design (fields of :class:`subcell_scale.metrics.EvaluationDesign`)."""
    return dict(get_preset(name)["design"])
