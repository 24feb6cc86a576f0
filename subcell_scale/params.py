"""Run parameters, resolved once: a preset plus overrides becomes a frozen :class:`RunParams`.

A run reads its preset (:mod:`subcell_scale.presets`) exactly once, in :meth:`RunParams.resolve`;
everything downstream receives typed pieces of the result: the crop geometry as a
:class:`~subcell_scale.cells.CropSpec`, the cell filter as a :class:`CellFilter`, the profiling recipe
as a :class:`Profiling`. What depends on a plate (which plate channels feed each pass, the crop window
in plate pixels) is a :class:`PlatePlan`, made by :meth:`RunParams.plan` once per plate. Both are
frozen and picklable, so they travel to Dask workers as they are.

Example
-------
>>> from subcell_scale.params import RunParams
>>> params = RunParams.resolve("jump-cellpainting", out_size=224)
>>> params.crop.size, params.cells.min_area_um2, params.overridden
(224, 20.0, ('out_size',))
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._docs import doc_params
from ._typecheck import check_fields
from .cells import SWITCH_KEYS, CropSpec
from .errors import ChannelMismatchError, ConfigError
from .io.labels import check_label_name
from .metrics.evaluate import EvaluationDesign
from .presets import DEFAULT_PRESET, get_preset
from .profiles.aggregate import Aggregation
from .profiles.postprocess import Step
from .segment import SegmentParams

if TYPE_CHECKING:  # pragma: no cover
    from .io import Plate

__all__ = [
    "CROP_KEYS", "CellFilter", "PlatePlan", "Profiling", "RunParams", "check_same_layout"
]

CROP_KEYS = ("crop_um", "model_pixel_size", "out_size", "mask_mode", "dilation", "normalization", "center",
             "dilation_pixel_size", "mask_resize", "center_rounding", "plate_upper_percentile",
             "field_lower_percentile", "field_upper_percentile", "quantization", "edge_padding", "edge_window_um")
"""Preset keys that are :class:`~subcell_scale.cells.CropSpec` fields."""
_FILTER_KEYS = ("min_area_um2", "max_area_um2", "drop_border")
_NOT_OVERRIDABLE = ("description", "alternatives")
NONFINITE = ("fail", "zero")
"""What a field's NaN or infinite pixels become (the ``nonfinite`` parameter)."""
_MERGED = ("segmentation", "aggregation", "design")
"""Keys whose mapping overrides are merged into the preset's (the rest of the mapping is kept)."""
_EMBEDDING_KEYS = ("crop", "channel_map", "label_name", *_FILTER_KEYS, "segmentation", "illumination")
"""Parameters that change embeddings (and so the digest a resumed run compares); profiling and
evaluation parameters do not."""


@dataclass(frozen=True)
class CellFilter:
    """Which segmented cells are embedded (:func:`subcell_scale.segment.filter_cells`).

    Attributes
    ----------
    min_area_um2, max_area_um2
        Area bounds in square micrometres: fragments and merged clumps make poor crops.
    drop_border
        Drop cells cut by the field edge.
    """

    min_area_um2: float | None = 20.0
    max_area_um2: float | None = 10_000.0
    drop_border: bool = True

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~subcell_scale.segment.filter_cells`."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Profiling:
    """How cells become well profiles: aggregation, then a post-processing chain.

    Attributes
    ----------
    aggregation
        What :func:`subcell_scale.profiles.aggregate` is called with.
    postprocess
        The steps of :func:`subcell_scale.profiles.postprocess`, in order (run per cell type).
    """

    aggregation: Aggregation = Aggregation()
    postprocess: tuple[Step, ...] = ()


@dataclass(frozen=True)
class PlatePlan:
    """The plate-dependent part of a run's parameters, for one plate.

    Attributes
    ----------
    name, path
        The plate.
    pixel_size
        (y, x) micrometres per pixel at level 0.
    channels
        The plate's channel names.
    model_channels
        The model's slots in input order.
    passes
        Plate channel indices fed to the model, one tuple per pass (JUMP: three passes).
    pass_names
        One name per pass when there are several (``("Mito", "AGP", "RNA")``), else empty.
    channel_mapping
        Plate channel -> model slot, one mapping per pass.
    window_px
        (y, x) side of the crop window in plate pixels.
    rescale
        Output pixels per plate pixel.
    """

    name: str
    path: str
    pixel_size: tuple[float, float]
    channels: tuple[str, ...]
    model_channels: tuple[str, ...]
    passes: tuple[tuple[int, ...], ...]
    pass_names: tuple[str, ...]
    channel_mapping: tuple[Mapping[str, str], ...]
    window_px: tuple[int, int]
    rescale: float

    @property
    def multi_pass(self) -> bool:
        return bool(self.pass_names)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (``run.json``, the report)."""
        return {"name": self.name, "path": self.path, "pixel_size": list(self.pixel_size),
                "channels": list(self.channels), "model_channels": list(self.model_channels),
                "passes": [list(p) for p in self.passes], "multi_pass": self.multi_pass,
                "pass_names": list(self.pass_names), "channel_mapping": [dict(m) for m in self.channel_mapping],
                "crop_window_px": list(self.window_px), "rescale": self.rescale}


@doc_params
@dataclass(frozen=True)
class RunParams:
    """Every parameter of a run, resolved from a preset and overrides (see :mod:`subcell_scale.presets`).

    Build it with :meth:`resolve`; derive a changed copy with :meth:`replace`. Every field is typed
    and was checked when it was made (names, types, values), so a mistake in a post-processing step
    or an evaluation design is reported before a run reads a pixel, not after hours of embedding.

    Attributes
    ----------
    preset, description
        The preset's name and one-line description.
    variant
        Published SubCell variant used when no model is given.
    {channel_map}
    crop
        Crop geometry, mask and normalisation.
    cells
        Which cells are embedded.
    {label_name}
    nonfinite
        ``"fail"``: a field with NaN or infinite pixels fails, naming how many; ``"zero"``: they are
        read as 0 and the cells that hold them are counted in ``obs["nonfinite_pixels"]``.
    segmentation
        How fields without labels are segmented (:func:`subcell_scale.segment.segment_field`).
    illumination
        None, ``"estimate"``, the path of a flat field, a path template with ``{plate}`` and
        ``{channel}`` (the Broad's ``{plate}_Illum{channel}.npy``), a list of per-channel paths in plate
        channel order or a mapping channel -> path (see :func:`subcell_scale.pipeline.jobs.flatfield_file`).
    profiling
        Aggregation and post-processing of well profiles.
    design
        What the evaluation computes (:func:`subcell_scale.metrics.evaluate_profiles`).
    cellprofiler
        cp_measure feature groups measured on each kept cell (empty: none; see
        :mod:`subcell_scale.cellprofiler`).
    overridden
        Preset keys whose value was changed by an override.
    """

    preset: str
    description: str
    variant: str
    channel_map: Mapping[str, Any] | None
    crop: CropSpec
    cells: CellFilter
    label_name: str
    segmentation: SegmentParams
    illumination: str | tuple[str, ...] | Mapping[str, str] | None
    profiling: Profiling
    design: EvaluationDesign
    cellprofiler: tuple[str, ...] = ()
    overridden: tuple[str, ...] = ()
    nonfinite: str = "fail"

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    @doc_params
    def resolve(cls, preset: str | RunParams | None = None, **overrides: Any) -> RunParams:
        """The parameters of ``preset`` (a name, None for ``"hpa"``, or a RunParams) after ``overrides``.

        Parameters
        ----------
        {preset}
        {overrides}
            Or ``crop=`` a :class:`~subcell_scale.cells.CropSpec` or mapping of its fields. ``None``
            values are ignored, so callers pass optional arguments through unchanged; ``False``
            switches off a key whose "off" is None (``illumination=False``,
            ``plate_upper_percentile=False``, ``edge_padding=False``).
            The mappings ``segmentation``, ``aggregation`` and ``design`` are merged into the preset's
            (``design={"null_size": 1000}`` keeps the rest of the design); a dotted key sets one entry
            (``**{"design.null_size": 1000}``, ``--set design.null_size=1000``).

        Raises
        ------
        ConfigError
            Unknown preset or key (the message lists the known ones), a value of the wrong type (the
            key is named), or a value the crop geometry, the segmenter, a post-processing step or the
            evaluation design rejects.
        """
        overrides = _nested({**_crop_overrides(overrides.pop("crop", None)), **overrides})
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if isinstance(preset, RunParams):
            return preset.replace(**overrides) if overrides else preset
        name = DEFAULT_PRESET if preset is None else str(preset).lower()
        values = get_preset(name)
        values.pop("alternatives", None)
        allowed = sorted(k for k in values if k not in _NOT_OVERRIDABLE)
        unknown = sorted(set(overrides) - set(allowed))
        if unknown:
            msg = f"preset {name!r}: unknown parameter(s) {unknown}; parameters are {allowed}"
            raise ConfigError(msg)
        if "crop_um" in overrides and "out_size" not in overrides and values["out_size"] is not None:
            values["out_size"] = None  # a new physical crop at the preset's model scale, not a squeezed one
        for key, value in overrides.items():
            merge = key in _MERGED and isinstance(value, Mapping) and isinstance(values.get(key), Mapping)
            values[key] = {**values[key], **copy.deepcopy(dict(value))} if merge else copy.deepcopy(value)
        params = cls._from_values(name, values, ())
        default = _preset_default(name).values()
        given = params.values()
        overridden = tuple(sorted(k for k in overrides if _plain(given.get(k)) != _plain(default.get(k))))
        return dataclasses.replace(params, overridden=overridden)

    @classmethod
    def _from_values(cls, name: str, values: Mapping[str, Any], overridden: tuple[str, ...]) -> RunParams:
        from .cellprofiler import resolve_groups
        from .models.registry import get_variant
        from .profiles.postprocess import resolve_chain

        where = f"preset {name!r}"
        # False switches a key off whose "off" is None (overrides drop None values, so they say False)
        crop_values = {k: None if values[k] is False and k in SWITCH_KEYS else values[k] for k in CROP_KEYS
                       if k in values}
        check_fields(CropSpec, crop_values, where)
        filter_values = {k: values[k] for k in _FILTER_KEYS}
        check_fields(CellFilter, filter_values, where)
        for key in ("variant", "label_name"):
            if not isinstance(values[key], str) or not values[key]:
                raise ConfigError(f"{where}: {key} must be a non-empty string, got {values[key]!r}")
        get_variant(values["variant"])  # an unknown name fails now, listing the published ones
        check_label_name(values["label_name"], where, ConfigError)
        nonfinite = values.get("nonfinite", "fail")
        if nonfinite not in NONFINITE:
            raise ConfigError(f"{where}: nonfinite must be one of {', '.join(NONFINITE)}, got {nonfinite!r}")
        return cls(
            preset=name, description=str(values.get("description", "")), variant=str(values["variant"]),
            channel_map=_channel_map(values.get("channel_map")), crop=CropSpec(**crop_values),
            cells=CellFilter(**filter_values), label_name=str(values["label_name"]),
            segmentation=SegmentParams.from_kwargs(values.get("segmentation")),
            illumination=_illumination(values.get("illumination")),
            profiling=Profiling(aggregation=Aggregation.from_mapping(values.get("aggregation")),
                                postprocess=resolve_chain(values.get("postprocess") or ())),
            design=EvaluationDesign.from_mapping(values.get("design")),
            cellprofiler=resolve_groups(values.get("cellprofiler")), overridden=overridden, nonfinite=nonfinite)

    def replace(self, **overrides: Any) -> RunParams:
        """A copy with ``overrides`` applied as :meth:`resolve` applies them to the preset's defaults."""
        return RunParams.resolve(self.preset, **{**self._overrides(), **_nested(overrides)})

    def _overrides(self) -> dict[str, Any]:
        """The overridden keys with this object's values (typed pieces as they are: nothing is lost)."""
        flat = self.values()
        typed = {"segmentation": self.segmentation, "aggregation": self.profiling.aggregation,
                 "postprocess": self.profiling.postprocess, "design": self.design}
        # a key switched off with False reads back as None, which an override would ignore: keep it False
        return {k: typed[k] if k in typed else (False if flat[k] is None else flat[k]) for k in self.overridden}

    # -- plain forms --------------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        """The flat preset keys (as in :data:`subcell_scale.presets.PRESETS`) these parameters hold."""
        crop = {k: getattr(self.crop, k) for k in CROP_KEYS}
        crop["crop_um"] = self.crop.side_um
        return {"description": self.description, "variant": self.variant,
                "channel_map": copy.deepcopy(self.channel_map), **crop, "illumination": self.illumination,
                "label_name": self.label_name, **self.cells.kwargs(), "nonfinite": self.nonfinite,
                "segmentation": dataclasses.asdict(self.segmentation),
                "aggregation": self.profiling.aggregation.kwargs(),
                "postprocess": [s.to_dict() for s in self.profiling.postprocess], "design": self.design.to_dict(),
                "cellprofiler": list(self.cellprofiler) or False}

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON record: the flat keys, ``preset``, ``overridden`` and the resolved ``crop`` geometry."""
        return _jsonable({**self.values(), "preset": self.preset, "overridden": list(self.overridden),
                          "crop": self.crop.as_dict()})

    def embedding_parameters(self) -> dict[str, Any]:
        """The parameters that change embeddings, as plain JSON (a resumed run compares their digest)."""
        record = self.to_dict()
        keys = (*_EMBEDDING_KEYS, "cellprofiler") if self.cellprofiler else _EMBEDDING_KEYS  # older shards stay valid
        kept = {k: record[k] for k in keys}
        if self.nonfinite != "fail":  # the default leaves finite fields as they were: their shards still count
            kept["nonfinite"] = self.nonfinite
        return kept

    # -- per plate ----------------------------------------------------------------------------------
    def plan(self, plate: Plate, model_channels: Sequence[str] | str | None = None) -> PlatePlan:
        """Channels per pass and the crop window for ``plate``.

        Parameters
        ----------
        plate
            An opened plate (metadata only is read).
        model_channels
            The model's slots in input order, or its variant name; default: :attr:`variant`'s.

        Raises
        ------
        ChannelMismatchError
            The plate lacks a channel the preset or channel map needs; raised before any work, naming
            the channel, the preset and the plate.
        """
        from .models.preprocessing import resolve_channels
        from .models.registry import get_variant

        model = self.variant if model_channels is None else model_channels
        slots = tuple(get_variant(model).channels) if isinstance(model, str) else tuple(model)
        names = tuple(str(c) for c in plate.channel_names)
        try:
            resolved = resolve_channels(list(names), model, self.channel_map)
        except ChannelMismatchError as exc:
            missing = _missing_channels(self.channel_map, names)
            if missing:
                msg = (f"preset {self.preset!r} needs channel(s) {missing} that plate {plate.name!r} ({plate.path}) "
                       f"lacks: {exc}")
            else:  # a channel map the model cannot use, whatever the plate holds
                msg = f"plate {plate.name!r} ({plate.path}) with preset {self.preset!r}: {exc}"
            raise ChannelMismatchError(msg) from exc
        multi = bool(resolved) and isinstance(resolved[0], list)
        passes = tuple(tuple(p) for p in resolved) if multi else (tuple(resolved),)
        wy, wx = self.crop.window(plate.pixel_size)
        return PlatePlan(
            name=plate.name, path=str(plate.path), pixel_size=tuple(float(v) for v in plate.pixel_size),
            channels=names, model_channels=slots, passes=passes,
            pass_names=_pass_names(passes, names) if multi else (),
            channel_mapping=tuple({names[i]: slot for i, slot in zip(p, slots, strict=True)} for p in passes),
            window_px=(wy, wx), rescale=float(self.crop.size) / float(wx))

    # -- for people ---------------------------------------------------------------------------------
    def report_lines(self, plan: PlatePlan | None = None) -> list[str]:
        """Human-readable summary of the parameters (and of one plate's plan), for logs and the report."""
        crop = self.crop
        cells = self.cells
        lines = [f"preset {self.preset}: {self.description}",
                 f"preset variant (used when no model is given): {self.variant}",
                 f"crop: {crop.side_um:.2f} um -> {crop.size} px at {crop.out_pixel_size:.4f} um/px "
                 f"(model scale {crop.model_pixel_size} um/px), centre {crop.center}, mask {crop.mask_mode}, "
                 f"normalisation {crop.normalization}",
                 _intensity_line(crop, self.illumination),
                 f"cells kept: area {cells.min_area_um2}-{cells.max_area_um2} um2, "
                 f"border cells {'dropped' if cells.drop_border else 'kept'}; label image {self.label_name!r}"]
        if plan is not None:
            mapping = "; ".join(", ".join(f"{k}->{v}" for k, v in m.items()) for m in plan.channel_mapping)
            lines.append(f"plate {plan.name}: {plan.pixel_size[1]} um/px, crop window {plan.window_px[1]} px "
                         f"(x{plan.rescale:.3f}), {len(plan.passes)} pass(es): {mapping}")
        agg = self.profiling.aggregation
        lines.append("aggregation: " + (f"{agg.operation} per field, then mean per well"
                                        if agg.per_field else f"{agg.operation} per well"))
        steps = ", then ".join(_describe_step(s.to_dict()) for s in self.profiling.postprocess)
        lines.append(f"post-processing (per cell type): {steps or 'none'}")
        if self.overridden:
            lines.append(f"overridden: {', '.join(self.overridden)}")
        return lines


def _describe_step(step: Mapping[str, Any]) -> str:
    """One step of a post-processing chain in words: ``normalize spherize PCA-cor (legacy) fitted on ...``."""
    words = [str(step.get("step", "?"))]
    if "method" in step:
        words.append(str(step["method"]))
    if "spherize_method" in step:
        words.append(str(step["spherize_method"]) + (f" ({step['spherize_variant']})" if "spherize_variant" in step
                                                     else ""))
    if "operation" in step:
        words.append("+".join(step["operation"]) if isinstance(step["operation"], list) else str(step["operation"]))
    if "reference" in step:
        words.append(f"fitted on {step['reference']}")
    if step.get("by"):
        words.append(f"per {step['by']}")
    if "batch" in step:
        words.append(f"on {step['batch']}")
    return " ".join(words)


def check_same_layout(plans: Sequence[PlatePlan]) -> None:
    """Plates of one run must give the same embedding layout (pass count and names) to share an AnnData."""
    layouts = {(len(p.passes), p.pass_names) for p in plans}
    if len(layouts) > 1:
        detail = "; ".join(f"{p.name}: {list(p.pass_names) or 'one pass'}" for p in plans)
        msg = f"plates of one run must share their passes to give one AnnData ({detail})"
        raise ConfigError(msg)


def _crop_overrides(crop: CropSpec | Mapping[str, Any] | None) -> dict[str, Any]:
    if crop is None:
        return {}
    if isinstance(crop, Mapping):
        values = dict(crop)
    else:
        values = {k: getattr(crop, k) for k in CROP_KEYS}
        values["crop_um"] = crop.side_um
        values["out_size"] = crop.size
    unknown = sorted(set(values) - set(CROP_KEYS))
    if unknown:
        msg = f"crop: unknown key(s) {unknown}; crop keys are {list(CROP_KEYS)}"
        raise ConfigError(msg)
    return values


def _intensity_line(crop: CropSpec, illumination: Any) -> str:
    """Illumination, intensity scaling and edge rule of a run, in one line of the report."""
    scaling = (f"clipped at plate {crop.plate_upper_percentile} % / field {crop.field_lower_percentile}-"
               f"{crop.field_upper_percentile} %, quantised {crop.quantization}" if crop.scales_intensity
               else "as stored")
    edge = ("none" if crop.edge_padding is None else
            f"{crop.edge_padding} padding of a {crop.edge_window_um or crop.side_um:.2f} um window")
    mask = (f"dilated {crop.dilation_um:.2f} um, resized {crop.mask_resize}" if crop.mask_mode == "own_cell"
            else "no mask")
    return (f"intensities: illumination {illumination or 'none'}, {scaling}; edge rule {edge}; "
            f"centres rounded {crop.center_rounding}; {mask}")


def _illumination(value: Any) -> str | tuple[str, ...] | dict[str, str] | None:
    """The ``illumination`` key in a plain, picklable form: None, a path string, paths or a mapping."""
    if value is None or value is False or isinstance(value, str | os.PathLike):
        return None if value is None or value is False else os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): os.fspath(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return tuple(os.fspath(v) for v in value)
    msg = f"illumination must be None, 'estimate', a path, a list of paths or a mapping, got {value!r}"
    raise ConfigError(msg)


def _missing_channels(channel_map: Mapping[str, Any] | None, names: Sequence[str]) -> list[str]:
    lowered = {n.lower() for n in names}
    wanted: list[str] = []
    for value in (channel_map or {}).values():
        wanted.extend(value if isinstance(value, list | tuple) else [value])
    return [str(w) for w in wanted if isinstance(w, str) and w.lower() not in lowered]


def _pass_names(passes: tuple[tuple[int, ...], ...], names: Sequence[str]) -> tuple[str, ...]:
    """One name per pass: the plate channel that differs between passes (``Mito``, ``AGP``, ``RNA``)."""
    varying = [j for j in range(len(passes[0])) if len({p[j] for p in passes}) > 1]
    out = tuple("-".join(names[p[j]] for j in varying) or f"pass{k}" for k, p in enumerate(passes))
    if len(set(out)) != len(out):
        out = tuple(f"pass{k}" for k in range(len(passes)))
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: os.fspath(o) if isinstance(o, os.PathLike) else str(o)))


def _nested(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys as nested mappings: ``{"design.null_size": 1}`` -> ``{"design": {"null_size": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        head, dot, rest = str(key).partition(".")
        if not dot:
            out[key] = value
            continue
        if value is None:  # as for any key: an optional argument passed through unchanged
            continue
        if head not in _MERGED:
            msg = f"{key}: only {', '.join(_MERGED)} take a dotted key (one entry of their mapping)"
            raise ConfigError(msg)
        out.setdefault(head, {})
        if not isinstance(out[head], dict):
            msg = f"{head} is given both whole and as {key}; give one"
            raise ConfigError(msg)
        out[head][rest] = value
    return out


@functools.lru_cache(maxsize=8)
def _preset_default(name: str) -> RunParams:
    """A preset's own parameters, to tell which overrides changed something."""
    values = get_preset(name)
    values.pop("alternatives", None)
    return RunParams._from_values(name, values, ())


def _plain(value: Any) -> Any:
    return _jsonable(value)


def _channel_map(value: Any) -> dict[str, str | list[str]] | None:
    """The ``channel_map`` key checked: model slot -> a plate channel name or a list of names."""
    if value is None:
        return None
    ok = isinstance(value, Mapping) and all(
        isinstance(k, str) and (isinstance(v, str) or (isinstance(v, list | tuple) and v
                                                       and all(isinstance(n, str) for n in v)))
        for k, v in value.items())
    if not ok:
        msg = (f"channel_map must map model slots to a plate channel name or a list of names "
               f"(e.g. {{'nucleus': 'DAPI', 'protein': ['Mito', 'AGP']}}), got {value!r}")
        raise ConfigError(msg)
    return {str(k): (list(v) if isinstance(v, list | tuple) else str(v)) for k, v in value.items()}

