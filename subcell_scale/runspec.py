"""One run, described once: the options of a run, from Python keywords, the command line or a config file.

A run is asked for in three ways that must mean the same thing: keywords of
:func:`subcell_scale.run` (or :func:`~subcell_scale.embed_plate`, ...), options of ``subcell-scale run``
(or ``embed``, ``segment``, ...), and a config file (``--config run.yaml``). :data:`OPTIONS` is the one
table of those options: each has a long option name, which is also its key in a config file, and the
Python keyword it sets. :func:`describe_run` turns keywords into a frozen :class:`RunSpec`, whose
parameters (:class:`~subcell_scale.params.RunParams`) are typed and checked all the way down; the
checks that need the inputs (plates, platemap, model, output folder) follow in
:func:`subcell_scale.stages.Run.open`, before the first field is read.

A run directory records its description (``run.json``), so ``profile``, ``evaluate`` and the report
reuse it by default (:func:`read_description`).

Example
-------
A config file holds the long option names of its command (``-`` or ``_``), preset parameters under
``set``::

    # run.yaml
    plates: [plate-1.zarr, plate-2.zarr]
    platemap: platemap.csv
    preset: jump-cellpainting
    out: run
    workers: 2
    no-figures: true
    set:
      out_size: 224
      design.null_size: 1000
"""

from __future__ import annotations

import glob
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._constants import Files
from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .params import RunParams

__all__ = ["COMMANDS", "OPTIONS", "Option", "RunSpec", "describe_run", "load_config", "option_keywords",
           "read_config", "read_description", "split_pairs"]

DESCRIPTION_FORMAT = 1


@dataclass(frozen=True)
class Option:
    """One option of a run: its long name (command line and config key) and the keyword it sets.

    Attributes
    ----------
    flag
        Long option without the dashes (``"batch-size"``); the key of a config file (``batch_size``
        is read the same).
    keyword
        The Python keyword it sets; a dotted keyword sets one entry of a preset mapping
        (``"design.null_size"``).
    help
        What it does, for ``--help``.
    kind
        ``"value"`` (one value), ``"list"`` (several values), ``"switch"`` (no value: sets
        ``keyword`` to ``value``) or ``"pairs"`` (``KEY=VALUE`` items, a mapping).
    type
        Type of a value (``int``, ``float``, ``str``).
    metavar
        Placeholder in ``--help``.
    value
        What a switch sets.
    choices
        The values a value option takes (others are a usage error).
    """

    flag: str
    keyword: str
    help: str
    kind: str = "value"
    type: type = str
    metavar: str | None = None
    value: Any = True
    choices: tuple[str, ...] | None = None


_OPTIONS = (
    Option("out", "out", "run directory (a folder, or a URL such as s3://bucket/run for embed); the same DIR "
           "resumes", metavar="DIR"),
    Option("config", "config", "YAML or TOML file of options (keys: these long option names; preset "
           "parameters under 'set'); command-line values win", metavar="FILE"),
    Option("plates-from", "plates_from", "text file naming plates, one path or URL a line (relative paths "
           "are read from the file's folder)", metavar="FILE"),
    Option("platemap", "platemap", "plate, well, compound, moa, control_type ... (CSV, TSV or parquet)",
           metavar="FILE"),
    Option("preset", "preset", "hpa (default) or jump-cellpainting", metavar="NAME"),
    Option("set", "overrides", "preset parameters, e.g. out_size=224 mask_mode=none design.null_size=1000 "
           "(values as JSON)", kind="pairs", metavar="KEY=VALUE"),
    Option("model", "model", "published variant (downloaded into the model cache on first use), encoder "
           "checkpoint file, or 'random' (seeded random weights of the preset's variant, to try a plate out); "
           "default: the preset's variant", metavar="VARIANT|CHECKPOINT|random"),
    Option("classifiers", "classifiers", "classifier checkpoint files for a checkpoint --model", kind="list",
           metavar="PATH"),
    Option("variant", "variant", "which published variant a checkpoint --model is, when its file name does not "
           "say (3-channel checkpoints: MT-DNA-Protein or ER-DNA-Protein); without --model, the published "
           "variant to use", metavar="VARIANT"),
    Option("num-heads", "num_heads", "attention heads of a checkpoint whose width is not a multiple of 64 "
           "(default: width / 64)", type=int, metavar="N"),
    Option("channel-map", "channel_map", "model slot -> plate channel(s), e.g. nucleus=DAPI protein=GFP; "
           "several names give one pass each (protein=Mito,AGP,RNA)", kind="pairs", metavar="SLOT=NAME[,NAME]"),
    Option("label-name", "label_name", "label image holding the cells (default: the preset's, cells)",
           metavar="NAME"),
    Option("no-segment", "segment_if_missing", "fail on fields without labels instead of segmenting them",
           kind="switch", value=False),
    Option("channel-nucleus", "segmentation.nucleus_channel", "nuclear stain channel for segmentation "
           "(default: the first of DNA, DAPI, Hoechst, nucleus ...)", metavar="NAME"),
    Option("channel-cell", "segmentation.cell_channel", "cytoplasm channel(s) for segmentation, averaged "
           "(default: microtubules/ER, or ER/AGP/RNA for Cell Painting)", kind="list", metavar="NAME"),
    Option("overwrite", "overwrite", "segment again fields that already have their labels", kind="switch"),
    Option("batch-size", "batch_size", "crops per forward pass (default: settings.batch_size); the "
           "embeddings do not depend on it", type=int, metavar="N"),
    Option("retries", "retries", "extra attempts of a field whose error may go away (default 1)", type=int,
           metavar="N"),
    Option("format", "format", "cells file: zarr (default) or h5ad", choices=("zarr", "h5ad")),
    Option("device", "device", "device of an in-process run: auto (default), cpu, cuda or cuda:N",
           metavar="DEVICE"),
    Option("scheduler", "scheduler", "address of a running Dask scheduler (tcp://host:8786)", metavar="ADDR"),
    Option("cluster", "cluster", "cluster to start: local, cuda, auto or a cluster config file (see cluster/)",
           metavar="local|cuda|auto|FILE"),
    Option("workers", "n_workers", "workers of a local cluster", type=int, metavar="N"),
    Option("null-size", "design.null_size", "mAP null distribution size (default: the preset's design)",
           type=int, metavar="N"),
    Option("seed", "design.seed", "seed of the mAP null distribution (default: the preset's design)", type=int,
           metavar="N"),
    Option("no-figures", "figures", "skip the figures and the report", kind="switch", value=False),
    Option("no-progress", "progress", "no progress bar", kind="switch", value=False),
)
OPTIONS: dict[str, Option] = {option.flag: option for option in _OPTIONS}
"""Every option a run takes, by long name."""

_CLUSTER = ("scheduler", "cluster", "workers")
_MODEL = ("model", "classifiers", "variant", "num-heads")
_INPUTS = ("plates-from", "platemap", "preset", "set", "channel-map", "label-name")
_EMBED = ("no-segment", "channel-nucleus", "channel-cell", "batch-size", "retries", "format", "no-progress")
COMMANDS: dict[str, tuple[str, ...]] = {
    "run": ("out", "config", *_INPUTS, *_MODEL, *_EMBED, *_CLUSTER, "null-size", "seed", "no-figures"),
    "embed": ("out", "config", *_INPUTS, *_MODEL, *_EMBED, "device", *_CLUSTER),
    "segment": ("out", "config", "plates-from", "preset", "set", "label-name", "channel-nucleus", "channel-cell",
                "overwrite", *_CLUSTER, "no-progress"),
    "demo": ("out", "config", "preset", "set", *_MODEL, "batch-size", *_CLUSTER, "no-figures", "no-progress"),
    "profile": ("out", "config", "preset", "set"),
    "evaluate": ("out", "config", "preset", "set", "null-size", "seed"),
}
"""The options of each command that describes a run (its config file takes the same keys)."""


# -- from the command line and config files -----------------------------------------------------------
def split_pairs(items: Sequence[str], what: str) -> dict[str, Any]:
    """``["out_size=224", "protein=Mito,AGP"]`` as a mapping; values read as JSON when they are JSON.

    For ``channel-map`` a comma-separated value is a list of names (one pass each).

    Raises
    ------
    ConfigError
        An item that is not ``KEY=VALUE``, naming the option.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip() or (what == "channel-map" and not text.strip()):
            msg = f"--{what} {item!r}: expected KEY=VALUE" + (", e.g. nucleus=DAPI or protein=Mito,AGP"
                                                                 if what == "channel-map" else "")
            raise ConfigError(msg)
        if what == "channel-map":
            names = [n.strip() for n in text.split(",") if n.strip()]
            out[key.strip()] = names if len(names) > 1 else names[0]
            continue
        try:
            out[key.strip()] = json.loads(text)
        except ValueError:
            out[key.strip()] = text
    return out


def load_config(path: str | os.PathLike[str], command: str = "run") -> dict[str, Any]:
    """Read the options of ``command`` from a YAML or TOML file, keyed by their long option names.

    Keys may use ``-`` or ``_`` (``no-figures``, ``no_figures``); ``plates`` lists the plates;
    ``set`` holds preset parameters (a mapping; dotted keys set one entry of a preset mapping).

    Raises
    ------
    ConfigError
        The file cannot be read, is not valid YAML/TOML (the line is named), or holds an unknown key
        (the command's keys are listed).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        msg = f"config file {path}: cannot be read ({exc.strerror or exc})"
        raise ConfigError(msg) from exc
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            msg = f"config file {path}: not valid TOML ({exc})"
            raise ConfigError(msg) from exc
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            msg = f"config file {path}: not valid YAML{where}: {problem}"
            raise ConfigError(msg) from exc
    else:
        msg = f"config file {path}: use .yaml, .yml or .toml"
        raise ConfigError(msg)
    if not isinstance(data, dict):
        msg = f"config file {path}: expected a table of options, found {type(data).__name__}"
        raise ConfigError(msg)
    known = [f for f in COMMANDS[command] if f != "config"]
    allowed = {"plates", *known} if command not in ("profile", "evaluate") else set(known)
    options = {str(k).replace("_", "-"): v for k, v in data.items()}
    unknown = sorted(set(options) - allowed)
    if unknown:
        params = sorted(k.replace("-", "_") for k in unknown if k.replace("-", "_") in preset_keys())
        hint = f"; preset parameters ({', '.join(params)}) go under 'set'" if params else ""
        msg = (f"config file {path}: unknown option(s) {unknown} for `subcell-scale {command}`{hint}; "
               f"options are {sorted(allowed)}")
        raise ConfigError(msg)
    for flag, value in options.items():
        _check_config_value(path, flag, value)
    base = path.parent
    for flag in ("out", "platemap", "plates-from", "cluster"):  # paths in a config file are read from its folder
        if isinstance(options.get(flag), str):
            options[flag] = _relative_to(options[flag], base)
    if "plates" in options:
        plates = options["plates"] if isinstance(options["plates"], list) else [options["plates"]]
        options["plates"] = [_relative_to(str(p), base) for p in plates]
    return options


def _check_config_value(path: Path, flag: str, value: Any) -> None:
    option = OPTIONS.get(flag)
    kind = option.kind if option is not None else "list"
    ok = {"pairs": isinstance(value, Mapping), "switch": isinstance(value, bool),
          "list": isinstance(value, list | str)}.get(kind, not isinstance(value, Mapping | list))
    if option is not None and kind == "value" and ok and option.type in (int, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        wanted = {"pairs": "a mapping", "switch": "true or false", "list": "a list"}.get(
            kind, "a number" if option is not None and option.type in (int, float) else "a single value")
        msg = f"config file {path}: {flag} must be {wanted}, got {value!r}"
        raise ConfigError(msg)


def _relative_to(text: str, base: Path) -> str:
    """A path of a config or list file, read from that file's folder; URLs and absolute paths as they are."""
    if "://" in text or os.path.isabs(os.path.expanduser(text)) or text in ("auto", "local", "cuda"):
        return text
    return str(base / text)


def preset_keys() -> set[str]:
    """The keys of every preset (what ``--set`` takes)."""
    from .presets import PRESETS

    return {k for preset in PRESETS.values() for k in preset}


def read_config(path: str | os.PathLike[str], command: str = "run") -> dict[str, Any]:
    """The Python keywords a config file describes, so a notebook runs what a command line runs::

        result = ss.run(**ss.read_config("run.yaml"))
        result = ss.run(**{**ss.read_config("run.yaml"), "out_size": 224})   # a keyword wins

    ``command`` names whose options the file holds (``run``, ``embed``, ``segment``, ``demo``);
    relative paths in the file are read from its folder, as ``--config`` reads them.

    Raises
    ------
    ConfigError
        As :func:`load_config`: the file, its line, or the unknown key is named.
    """
    return option_keywords(load_config(path, command))


def option_keywords(options: Mapping[str, Any]) -> dict[str, Any]:
    """Python keywords from options keyed by long option names (a config file, parsed arguments).

    ``set`` entries become preset overrides; dotted keywords (``design.null_size``) are kept as they
    are, for :meth:`~subcell_scale.params.RunParams.resolve`; ``plates`` stays ``plates``.
    """
    out: dict[str, Any] = {}
    given: dict[str, str] = {}

    def put(keyword: str, value: Any, flag: str) -> None:
        said = f"--set {keyword}={value}" if flag == "set" else f"--{flag} {value}"
        if keyword in out and out[keyword] != value:
            from .errors import UsageError

            msg = f"{given[keyword]} and {said} disagree; give one"
            raise UsageError(msg)
        out[keyword] = value
        given[keyword] = said

    for flag, value in sorted(options.items(), key=lambda item: item[0] == "set"):
        if value is None:
            continue
        if flag == "plates":
            out["plates"] = list(value) if isinstance(value, list | tuple) else [value]
            continue
        option = OPTIONS[flag]
        if option.kind == "switch":
            if value:
                put(option.keyword, option.value, flag)
        elif option.kind == "pairs":
            pairs = value if isinstance(value, Mapping) else split_pairs(value, flag)
            if flag == "set":
                for key, entry in pairs.items():
                    put(key, entry, flag)
            else:
                put(option.keyword, dict(pairs), flag)
        elif option.kind == "list":
            put(option.keyword, [value] if isinstance(value, str) else list(value), flag)
        else:
            put(option.keyword, value, flag)
    return out


# -- the description ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """A run, described once: its inputs, its parameters and how it is executed.

    Made by :func:`describe_run`; every stage of a run (segment, embed, profile, evaluate, report) reads
    it, and the run directory records it (``run.json``).

    Attributes
    ----------
    plates
        Plate paths or URLs (local paths made absolute), or opened :class:`~subcell_scale.io.Plate`
        objects.
    out
        The run directory (absolute, or a URL), or None to keep everything in memory.
    params
        The preset's parameters after overrides, typed and checked.
    platemap
        The platemap file, or a DataFrame.
    model, classifiers, num_heads
        The model asked for (variant name, checkpoint, ``"random"``, a ``ModelSpec`` or a ``SubCell``).
    variant
        The published variant named by the user (``variant=``, ``--variant``): which variant a
        checkpoint is, or the variant to use without a model; None when only the preset names one.
    segment_if_missing, overwrite
        Segment fields without labels; segment again those that have them.
    batch_size, retries, format, device, crop_on, fields_per_task, missing_chunks, progress
        How fields are embedded (see :func:`subcell_scale.embed_plate`).
    scheduler, cluster, n_workers
        Where the run's client comes from when none is given.
    storage_options, out_storage_options
        fsspec options of plate URLs and of an ``out`` URL.
    figures
        Draw the figures and the report.
    views
        Users' models embedded as other views of each cell (:class:`~subcell_scale.modelview.ModelView`).
    """

    plates: tuple[Any, ...]
    out: str | None
    params: RunParams
    platemap: str | pd.DataFrame | None = field(default=None, compare=False)
    model: Any = field(default=None, compare=False)
    classifiers: tuple[str, ...] = ()
    num_heads: int | None = None
    variant: str | None = None
    segment_if_missing: bool = True
    overwrite: bool = False
    batch_size: int | None = None
    retries: int = 1
    format: str = "zarr"
    device: str | None = None
    crop_on: str = "auto"
    fields_per_task: int | None = None
    missing_chunks: str = "raise"
    progress: bool | None = None
    scheduler: str | None = None
    cluster: str | None = None
    n_workers: int | None = None
    storage_options: dict[str, Any] | None = field(default=None, repr=False)
    out_storage_options: dict[str, Any] | None = field(default=None, repr=False)
    figures: bool = True
    views: tuple[Any, ...] = field(default=(), compare=False)

    def options(self) -> dict[str, Any]:
        """The description as plain JSON (``run.json``); :func:`read_description` reads it back."""
        from .models.spec import describe_model

        platemap = self.platemap
        return _jsonable({
            "plates": [str(getattr(p, "path", p)) for p in self.plates], "out": self.out,
            "platemap": None if platemap is None else (os.fspath(platemap) if isinstance(platemap, str | os.PathLike)
                                                      else "<DataFrame>"),
            "model": describe_model(self.model), "classifiers": list(self.classifiers), "num_heads": self.num_heads,
            "variant": self.variant,
            "segment_if_missing": self.segment_if_missing, "overwrite": self.overwrite,
            "batch_size": self.batch_size, "retries": self.retries, "format": self.format, "device": self.device,
            "crop_on": self.crop_on, "fields_per_task": self.fields_per_task, "missing_chunks": self.missing_chunks,
            "scheduler": self.scheduler, "cluster": self.cluster, "n_workers": self.n_workers,
            "figures": self.figures, "views": [v.name for v in self.views]})


_RUN_FIELDS = {f for f in RunSpec.__dataclass_fields__ if f not in ("plates", "params")}
_FORMATS = ("zarr", "h5ad")
_CROP_ON = ("auto", "cpu", "device")
_MISSING_CHUNKS = ("raise", "fill")


def describe_run(plates: Any = None, *, preset: str | RunParams | None = None, plates_from: str | None = None,
                 **keywords: Any) -> RunSpec:
    """The :class:`RunSpec` of a run: plates, options and the preset's parameters after overrides.

    Every keyword of :func:`subcell_scale.run` is accepted; a keyword that is not a run option is a
    preset parameter (``out_size=224``, ``design={"null_size": 1000}``, ``**{"design.null_size":
    1000}``). Nothing is read here but ``plates_from``: the checks that need the inputs come when the
    run opens (:meth:`subcell_scale.stages.Run.open`).

    Raises
    ------
    ConfigError
        No plate, a parameter that is unknown, of the wrong type or out of range (named), or a run
        option with a value it cannot take.
    """
    from .params import RunParams

    options = {k: keywords.pop(k) for k in list(keywords) if k in _RUN_FIELDS and k != "variant"}
    keywords.pop("config", None)
    options["variant"] = keywords.get("variant")  # also the preset's key: the variant used without a model
    params = RunParams.resolve(preset, **keywords)
    plate_list = _plate_list(plates, plates_from)
    out = options.get("out")
    if out is not None:
        from .rundir import RunPath

        out = RunPath(os.fspath(out)).url  # local paths absolute: workers resolve nothing elsewhere
    options["out"] = out
    platemap = options.get("platemap")
    if isinstance(platemap, str | os.PathLike) and not _is_url(os.fspath(platemap)):
        options["platemap"] = os.path.abspath(os.path.expanduser(os.fspath(platemap)))
    classifiers = options.pop("classifiers", None)
    if isinstance(classifiers, str | os.PathLike):
        classifiers = [classifiers]
    options["classifiers"] = tuple(os.fspath(c) for c in classifiers or ())
    if options.get("views") is not None:
        views = options["views"]
        options["views"] = (views,) if not isinstance(views, list | tuple) else tuple(views)
    _check_options(options)
    return RunSpec(plates=tuple(plate_list), params=params, **{k: v for k, v in options.items() if v is not None
                                                               or k in ("out",)})


def _plate_list(plates: Any, plates_from: str | os.PathLike[str] | None) -> list[Any]:
    """Plates from a path, a glob, a list of them, opened plates and/or a file naming one a line."""
    items = [] if plates is None else ([plates] if isinstance(plates, str | os.PathLike) or hasattr(plates, "wells")
                                       else list(plates))
    if plates_from is not None:
        path = Path(plates_from)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            msg = f"--plates-from {path}: cannot be read ({exc.strerror or exc})"
            raise ConfigError(msg) from exc
        items += [_relative_to(line.strip(), path.parent) for line in lines
                  if line.strip() and not line.lstrip().startswith("#")]
    out: list[Any] = []
    for item in items:
        if isinstance(item, str | os.PathLike) and not _is_url(os.fspath(item)) and glob.has_magic(os.fspath(item)):
            matched = sorted(glob.glob(os.path.expanduser(os.fspath(item))))
            if not matched:
                msg = f"no plate matches {os.fspath(item)!r}"
                raise ConfigError(msg)
            out += matched
        elif isinstance(item, str | os.PathLike):
            text = os.fspath(item)
            out.append(text if _is_url(text) else os.path.abspath(os.path.expanduser(text)))
        else:
            out.append(item)
    if not out:
        msg = "no plate given: name plates (paths, URLs or globs), or a file of them with --plates-from"
        raise ConfigError(msg)
    return out


def _is_url(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


def _check_options(options: Mapping[str, Any]) -> None:
    """Run options that cannot work, named (before anything is opened)."""
    positive = {k: options.get(k) for k in ("batch_size", "n_workers", "fields_per_task", "num_heads")}
    for key, value in positive.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            msg = f"{key} must be a positive integer, got {value!r}"
            raise ConfigError(msg)
    retries = options.get("retries", 1)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        msg = f"retries must be an integer >= 0, got {retries!r}"
        raise ConfigError(msg)
    for key, allowed in (("format", _FORMATS), ("crop_on", _CROP_ON), ("missing_chunks", _MISSING_CHUNKS)):
        if key in options and options[key] not in allowed:
            msg = f"{key} must be one of {', '.join(allowed)}, got {options[key]!r}"
            raise ConfigError(msg)
    if options.get("device") is not None:
        from ._device import check_device

        check_device(options["device"])


# -- the recorded description -------------------------------------------------------------------------
def record_description(spec: RunSpec, plans: Sequence[Any], root: Any) -> None:
    """Write ``run.json`` into the run directory: the options, the parameters and each plate's plan."""
    from .rundir import RunPath

    record = {"format": DESCRIPTION_FORMAT, "options": spec.options(), "parameters": spec.params.to_dict(),
              "plates": [plan.to_dict() for plan in plans],
              "lines": [line for plan in plans for line in spec.params.report_lines(plan)]
              or spec.params.report_lines()}
    (RunPath.of(root) / Files.RUN).write_bytes(json.dumps(record, indent=1, default=str).encode())


@dataclass(frozen=True)
class RecordedRun:
    """What a run directory recorded of its description: its parameters and options."""

    root: Path
    params: RunParams
    options: dict[str, Any]
    record: dict[str, Any]


def read_description(location: str | os.PathLike[str]) -> RecordedRun | None:
    """The description recorded by the run holding ``location`` (a run directory, or a file in one).

    Returns None when there is no ``run.json`` there or in the folders above it (up to two levels: a
    ``metrics`` folder, ``profiles.h5ad``, ``cells.zarr``).

    Raises
    ------
    ConfigError
        A ``run.json`` that cannot be read.
    """
    start = Path(location).resolve()
    for folder in [start, *start.parents][:3]:
        path = folder / Files.RUN
        if path.is_file():
            break
    else:
        return None
    try:
        record = json.loads(path.read_text())
        parameters = dict(record["parameters"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        msg = f"{path}: not a readable run description ({exc})"
        raise ConfigError(msg) from exc
    return RecordedRun(path.parent, params_from_record(parameters), dict(record.get("options") or {}), record)


def params_from_record(record: Mapping[str, Any]) -> RunParams:
    """The :class:`~subcell_scale.params.RunParams` a ``run.json`` (or ``RunParams.to_dict``) holds."""
    from .params import RunParams
    from .presets import get_preset

    defaults = get_preset(record.get("preset"))
    values = {k: v for k, v in record.items() if k in defaults and k not in ("description", "alternatives")}
    design = dict(values.get("design") or {})
    if design.get("moa_table") == "<DataFrame>":
        design.pop("moa_table")  # a table given in memory is not in the record: the design derives one
        values["design"] = design
    return RunParams.resolve(record.get("preset"), **values)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: os.fspath(o) if isinstance(o, os.PathLike) else str(o)))
