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
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._constants import Files
from .cells import CropSpec
from .errors import ChannelMismatchError, ConfigError
from .presets import DEFAULT_PRESET, get_preset

if TYPE_CHECKING:  # pragma: no cover
    from .io import Plate
    from .store import RunPath

__all__ = [
    "CROP_KEYS", "CellFilter", "PlatePlan", "Profiling", "RunParams", "check_same_layout", "write_parameters"
]

CROP_KEYS = ("crop_um", "model_pixel_size", "out_size", "mask_mode", "dilation", "normalization", "center",
             "dilation_pixel_size", "mask_resize", "center_rounding", "plate_upper_percentile",
             "field_lower_percentile", "field_upper_percentile", "quantization", "edge_padding", "edge_window_um")
"""Preset keys that are :class:`~subcell_scale.cells.CropSpec` fields."""
_FILTER_KEYS = ("min_area_um2", "max_area_um2", "drop_border")
_NOT_OVERRIDABLE = ("description", "alternatives")
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
        Keyword arguments of :func:`subcell_scale.profiles.aggregate`.
    postprocess
        The steps of :func:`subcell_scale.profiles.postprocess`, in order (run per cell type).
    """

    aggregation: Mapping[str, Any]
    postprocess: tuple[Mapping[str, Any], ...] = ()


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
        """Plain-JSON form (``preset.json``, the report)."""
        return {"name": self.name, "path": self.path, "pixel_size": list(self.pixel_size),
                "channels": list(self.channels), "model_channels": list(self.model_channels),
                "passes": [list(p) for p in self.passes], "multi_pass": self.multi_pass,
                "pass_names": list(self.pass_names), "channel_mapping": [dict(m) for m in self.channel_mapping],
                "crop_window_px": list(self.window_px), "rescale": self.rescale}


@dataclass(frozen=True)
class RunParams:
    """Every parameter of a run, resolved from a preset and overrides (see :mod:`subcell_scale.presets`).

    Build it with :meth:`resolve`; derive a changed copy with :meth:`replace`. The fields are typed
    pieces the stages take as they are.

    Attributes
    ----------
    preset, description
        The preset's name and one-line description.
    variant
        Published SubCell variant used when no model is given.
    channel_map
        Model slot -> plate channel name(s); a list means one pass per name.
    crop
        Crop geometry, mask and normalisation.
    cells
        Which cells are embedded.
    label_name
        Label image holding the cells.
    segmentation
        Keyword arguments of :func:`subcell_scale.segment.segment_field` for plates without labels.
    illumination
        None, ``"estimate"``, the path of a flat field, a path template with ``{plate}`` and
        ``{channel}`` (the Broad's ``{plate}_Illum{channel}.npy``), a list of per-channel paths in plate
        channel order or a mapping channel -> path (see :func:`subcell_scale.pipeline.jobs.flatfield_file`).
    profiling
        Aggregation and post-processing of well profiles.
    design
        Fields of :class:`subcell_scale.metrics.EvaluationDesign`: what the evaluation computes.
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
    segmentation: Mapping[str, Any]
    illumination: str | tuple[str, ...] | Mapping[str, str] | None
    profiling: Profiling
    design: Mapping[str, Any]
    overridden: tuple[str, ...] = ()

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def resolve(cls, preset: str | RunParams | None = None, **overrides: Any) -> RunParams:
        """The parameters of ``preset`` (a name, None for ``"hpa"``, or a RunParams) after ``overrides``.

        Parameters
        ----------
        preset
            ``"hpa"``, ``"jump-cellpainting"``, None (``"hpa"``) or parameters resolved earlier.
        **overrides
            Any preset key (``out_size=224``, ``mask_mode="none"``, ``min_area_um2=30``, ...), or ``crop=``
            a :class:`~subcell_scale.cells.CropSpec` or mapping of its fields. ``None`` values are ignored,
            so callers pass optional arguments through unchanged; ``False`` switches off a key whose "off"
            is None (``illumination=False``, ``plate_upper_percentile=False``, ``edge_padding=False``).

        Raises
        ------
        ConfigError
            Unknown preset or key (the message lists the known ones), or a value the crop geometry or
            the segmenter rejects.
        """
        overrides = {**_crop_overrides(overrides.pop("crop", None)), **overrides}
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
        overridden = sorted(k for k, v in overrides.items() if values.get(k) != v)
        if "crop_um" in overridden and "out_size" not in overrides and values["out_size"] is not None:
            values["out_size"] = None  # a new physical crop at the preset's model scale, not a squeezed one
        values.update(copy.deepcopy(overrides))
        return cls._from_values(name, values, tuple(overridden))

    @classmethod
    def _from_values(cls, name: str, values: Mapping[str, Any], overridden: tuple[str, ...]) -> RunParams:
        from .segment import SegmentParams

        segmentation = dict(values.get("segmentation") or {})
        SegmentParams.from_kwargs({k: v for k, v in segmentation.items()
                                   if k not in ("nucleus_channel", "cell_channel")})
        crop = CropSpec(**{k: values[k] for k in CROP_KEYS if k in values})
        illumination = _illumination(values.get("illumination"))
        chain = values.get("postprocess") or ()
        if isinstance(chain, str):
            from .presets import get_chain

            chain = get_chain(chain)
        return cls(
            preset=name, description=str(values.get("description", "")), variant=str(values["variant"]),
            channel_map=copy.deepcopy(values.get("channel_map")), crop=crop,
            cells=CellFilter(**{k: values[k] for k in _FILTER_KEYS}), label_name=str(values["label_name"]),
            segmentation=segmentation, illumination=illumination,
            profiling=Profiling(aggregation=dict(values["aggregation"]), postprocess=tuple(dict(s) for s in chain)),
            design=copy.deepcopy(dict(values.get("design") or {})), overridden=overridden)

    def replace(self, **overrides: Any) -> RunParams:
        """A copy with ``overrides`` applied as :meth:`resolve` applies them to the preset's defaults."""
        return RunParams.resolve(self.preset, **{**self._overrides(), **overrides})

    def _overrides(self) -> dict[str, Any]:
        flat = self.values()
        defaults = get_preset(self.preset)
        # a key switched off with False reads back as None, which an override would ignore: keep it False
        return {k: False if flat[k] is None else flat[k] for k in self.overridden if k in flat and k in defaults}

    # -- plain forms --------------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        """The flat preset keys (as in :data:`subcell_scale.presets.PRESETS`) these parameters hold."""
        crop = {k: getattr(self.crop, k) for k in CROP_KEYS}
        crop["crop_um"] = self.crop.side_um
        return {"description": self.description, "variant": self.variant,
                "channel_map": copy.deepcopy(self.channel_map), **crop, "illumination": self.illumination, "label_name": self.label_name, **self.cells.kwargs(),
                "segmentation": dict(self.segmentation), "aggregation": dict(self.profiling.aggregation),
                "postprocess": [dict(s) for s in self.profiling.postprocess], "design": copy.deepcopy(dict(self.design))}

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON record: the flat keys, ``preset``, ``overridden`` and the resolved ``crop`` geometry."""
        return _jsonable({**self.values(), "preset": self.preset, "overridden": list(self.overridden),
                          "crop": self.crop.as_dict()})

    def embedding_parameters(self) -> dict[str, Any]:
        """The parameters that change embeddings, as plain JSON (a resumed run compares their digest)."""
        record = self.to_dict()
        return {k: record[k] for k in _EMBEDDING_KEYS}

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
            what = f"channel(s) {missing} " if missing else ""
            msg = f"preset {self.preset!r} needs {what}that plate {plate.name!r} ({plate.path}) lacks: {exc}"
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
        lines.append("aggregation: " + (f"{agg['operation']} per field, then mean per well"
                                        if agg.get("per_field") else f"{agg['operation']} per well"))
        steps = ", then ".join(_describe_step(s) for s in self.profiling.postprocess)
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


def write_parameters(out: str | os.PathLike | RunPath, params: RunParams, plans: Sequence[PlatePlan]) -> RunPath:
    """Write ``preset.json`` into ``out`` (a folder or a URL): the effective parameters per plate and
    their report lines."""
    from .store import RunPath

    items = [{**params.to_dict(), "plate": plan.to_dict()} for plan in plans] or [params.to_dict()]
    lines = [line for plan in plans for line in params.report_lines(plan)] or params.report_lines()
    path = RunPath.of(out) / Files.PRESET
    path.write_bytes(json.dumps({"parameters": items, "lines": lines}, indent=1, default=str).encode())
    return path


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
