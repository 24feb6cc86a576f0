"""Everything a run will need, checked before it writes anything or reads a pixel.

A mistake found after hours of GPU time costs hours; found here it costs seconds and leaves nothing
behind. :func:`check_run` opens the plates (metadata only), reads the platemap and joins it to the
plates' wells, resolves the model (downloading a published variant once, as a run would), plans each
plate (the channel map against the plate's channels), and checks what the later stages will ask of
them: the aggregation, post-processing and evaluation columns against the platemap, the output folder,
and where segmentation can write labels. Every problem is raised with the file, plate, step or column
it concerns.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ._anndata import rows_matching
from ._constants import Obs
from .errors import ConfigError, PlatemapError, ProfilingError, RunDirectoryError
from .rundir import is_url

if TYPE_CHECKING:  # pragma: no cover
    from .io import Plate
    from .models import ResolvedModel
    from .params import PlatePlan, RunParams
    from .runspec import RunSpec

log = logging.getLogger(__name__)

STAGES = ("segment", "embed", "profile", "evaluate", "report")
"""The stages of a run, in the order they run."""
LOCAL_STAGES = ("profile", "evaluate", "report")
"""Stages that write into a local run directory."""

_CELL_COLUMNS = (Obs.PLATE, Obs.WELL, Obs.ROW, Obs.COLUMN, Obs.FIELD)


@dataclass
class CheckedInputs:
    """What the checks opened and resolved, handed to the run so nothing is opened twice."""

    plates: list[Plate]
    plans: list[PlatePlan] = field(default_factory=list)
    model: ResolvedModel | None = None
    platemap: pd.DataFrame | None = None
    labels_in_run: set[str] = field(default_factory=set)


def check_run(spec: RunSpec, stages: Collection[str]) -> CheckedInputs:
    """Check a run's inputs against its description before any work.

    Parameters
    ----------
    spec
        The run's description.
    stages
        The stages it will run (:data:`STAGES`).

    Raises
    ------
    RunDirectoryError
        ``out`` is a file, cannot be created or written, or is a URL where a local folder is needed.
    PlateNotFoundError, PlateFormatError
        A plate that cannot be opened (named).
    PlatemapError
        A platemap that does not join the plates (unknown or repeated wells), or lacks a column that
        the aggregation, post-processing or evaluation needs.
    ChannelMismatchError
        A plate lacks a channel the model, channel map or segmentation needs.
    ConfigError, CheckpointError, DownloadError
        A model that cannot be resolved.
    """
    from .pipeline.jobs import open_plates

    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        msg = f"unknown stage(s) {unknown}; stages are {list(STAGES)}"
        raise ConfigError(msg)
    check_out(spec, stages)
    plates = open_plates(list(spec.plates), spec.storage_options, missing_chunks=spec.missing_chunks)
    checked = CheckedInputs(plates=plates)
    checked.platemap = check_platemap(plates, spec.platemap)
    params = spec.params
    if "embed" in stages:
        from .models import resolve_model
        from .params import check_same_layout

        checked.model = resolve_model(spec.model, spec.classifiers, default_variant=params.variant,
                                      variant=spec.variant, num_heads=spec.num_heads).with_channels(spec.device)
        checked.plans = [params.plan(p, checked.model.variant or checked.model.channels) for p in plates]
        check_same_layout(checked.plans)
    segmenting = "segment" in stages or ("embed" in stages and spec.segment_if_missing)
    if segmenting:
        check_segmentation_channels(plates, params)
        checked.labels_in_run = label_destinations(plates, spec, params.label_name,
                                                   every_field="segment" in stages and spec.overwrite)
    elif "embed" in stages:
        check_labels_present(plates, spec, params.label_name)
    if checked.platemap is not None and ("profile" in stages or "evaluate" in stages):
        wells = wells_table(plates, checked.platemap)
        if "profile" in stages:
            check_profiling(params, wells)
        if "evaluate" in stages:
            check_design(params, wells)
    elif "evaluate" in stages:
        log.warning("no platemap: the run will stop after the well profiles (metrics need perturbations)")
    return checked


# -- the output folder --------------------------------------------------------------------------------
def check_out(spec: RunSpec, stages: Collection[str]) -> None:
    """The run directory can be used for these stages: a folder (or, for embedding, a URL) that can be written."""
    if spec.out is None:
        if any(s in stages for s in LOCAL_STAGES):
            msg = "this run writes profiles, metrics and a report: give it an output folder (out=, --out)"
            raise RunDirectoryError(msg)
        return
    if is_url(spec.out):
        if spec.format == "h5ad":
            msg = f"out {spec.out}: cells.h5ad needs a local output directory; use format='zarr' on object storage"
            raise ConfigError(msg)
        if any(s in stages for s in LOCAL_STAGES):
            msg = (f"out {spec.out}: run writes profiles, metrics, figures and a report into a local folder; "
                   "give a local --out (a shared file system for a cluster), or embed to the URL with "
                   "`subcell-scale embed --out URL` (embed_plate(out=URL)) and profile read_cells(URL)")
            raise ConfigError(msg)
        return
    writable_folder(Path(spec.out), "output directory")


def writable_folder(path: Path, what: str) -> None:
    """``path`` is a folder this process can write into, or can be created as one (nothing is created here).

    Raises
    ------
    RunDirectoryError
        ``path`` (or a folder it would be made in) is a file, or cannot be written; the message names it.
    """
    if path.exists() and not path.is_dir():
        msg = f"{what} {path} is a file, not a folder; give a folder (new or existing) for the run"
        raise RunDirectoryError(msg)
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        msg = f"{what} {path} cannot be created: {existing} is a file"
        raise RunDirectoryError(msg)
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" ({existing} is where it would be created)"
        msg = f"{what} {path} cannot be written{where}: permission denied; choose another folder"
        raise RunDirectoryError(msg)


# -- plates, platemap and design ----------------------------------------------------------------------
def check_platemap(plates: Sequence[Plate], platemap: Any) -> pd.DataFrame | None:
    """Read the platemap and join it to the plates' wells now, so a bad row fails before any work."""
    if platemap is None:
        return None
    from .io import join_platemap, read_platemap

    frame = read_platemap(platemap)
    wells = [{"plate": plate.name, "well": w} for plate in plates for w in plate.wells]
    join_platemap(pd.DataFrame(wells), frame, plates=list(plates))
    return frame


def wells_table(plates: Sequence[Plate], platemap: pd.DataFrame) -> pd.DataFrame:
    """One row per well of the run with the columns its profiles will have (``obs`` of the profiles)."""
    from .io import join_platemap

    rows = []
    for plate in plates:
        for well in plate.wells:
            row, column = plate.row_column(well)
            rows.append({Obs.PLATE: plate.name, Obs.WELL: well, Obs.ROW: row, Obs.COLUMN: int(column),
                         Obs.FIELD: plate.fields(well)[0] if plate.fields(well) else "0"})
    return join_platemap(pd.DataFrame(rows), platemap, plates=list(plates))


def check_profiling(params: RunParams, wells: pd.DataFrame) -> None:
    """The aggregation and every post-processing step find the columns and rows they need in the platemap.

    Raises
    ------
    PlatemapError
        A column an aggregation or a step names (``by``, ``batch``) is not in the platemap, or a
        reference query cannot be evaluated on it; the message names the step.
    """
    columns = list(wells.columns)
    missing = [c for c in params.profiling.aggregation.by if c not in columns]
    if missing:
        msg = f"aggregation by {missing}: no such column in the cells (plate, well, ...) or the platemap ({columns})"
        raise PlatemapError(msg)
    for i, step in enumerate(params.profiling.postprocess):
        what = f"postprocess step {i} ({step.name})"
        for key in ("by", "batch"):
            names = step.params.get(key)
            names = [names] if isinstance(names, str) else list(names or [])
            absent = [c for c in names if c not in columns]
            if absent:
                msg = f"{what}: {key}={absent} is not a column of the platemap (columns: {columns})"
                raise PlatemapError(msg)
        _check_query(wells, step.params.get("reference"), f"{what}: reference")


def check_design(params: RunParams, wells: pd.DataFrame) -> None:
    """The evaluation design finds its columns in the platemap; MoA columns that are missing are said.

    Raises
    ------
    PlatemapError
        The perturbation column, a replicate rule's column or the negative-control query is not in the
        platemap.
    """
    design = params.design
    columns = list(wells.columns)
    rules = design.rules("replicate")
    needed = [design.pert_col, design.plate_col, *[c for v in rules.values() for c in v]]
    missing = sorted({c for c in needed if c not in columns})
    if missing:
        msg = (f"evaluation design: the platemap has no column {missing} (columns: {columns}); add it, or set "
               f"the design's columns (--set design.pert_col=...)")
        raise PlatemapError(msg)
    if design.negcon is not None:
        _check_query(wells, design.negcon, "evaluation design: negcon")
    moa = [design.moa_col, *[c for v in design.rules("moa").values() for c in v]]
    absent = sorted({c for c in moa if c not in columns})
    if absent:
        log.warning("the platemap has no %s column: MoA retrieval and MoA nearest neighbours will be skipped",
                    ", ".join(absent))


def _check_query(wells: pd.DataFrame, query: Any, what: str) -> None:
    if query is None:
        return
    try:
        rows_matching(wells, query, what=what)
    except ProfilingError as exc:
        raise PlatemapError(str(exc)) from exc


# -- segmentation -------------------------------------------------------------------------------------
def check_segmentation_channels(plates: Sequence[Plate], params: RunParams) -> None:
    """Every plate has the channels segmentation would read (a nucleus stain at least)."""
    from .errors import ChannelMismatchError
    from .segment import resolve_segmentation_channels

    seg = params.segmentation
    for plate in plates:
        try:
            resolve_segmentation_channels(plate.channel_names, seg.nucleus_channel, seg.cell_channel)
        except ChannelMismatchError as exc:
            msg = f"plate {plate.name} ({plate.path}): segmentation cannot run: {exc}"
            raise ChannelMismatchError(msg) from exc


def check_labels_present(plates: Sequence[Plate], spec: RunSpec, label_name: str) -> None:
    """A run that may not segment: each plate's first field has its label image (in the plate, or kept in the run
    directory by an earlier run), else the run stops now rather than failing every field.

    Raises
    ------
    PlateNotFoundError
        A plate whose first field lacks the labels, naming the labels it has.
    """
    from ._constants import Files
    from .errors import PlateNotFoundError

    for plate in plates:
        well = plate.wells[0]
        first = plate.fields(well)[0]
        found = plate.label_names(well, first)
        if label_name in found:
            continue
        kept = (spec.out is not None and not is_url(spec.out)
                and (Path(spec.out) / Files.LABELS / plate.name / f"{well}_{first}_{label_name}.npz").is_file())
        if not kept:
            msg = (f"plate {plate.name} ({plate.path}) well {well} field {first}: no label image {label_name!r} "
                   f"(found {found}), and segmentation is off; segment the plate first (`subcell-scale segment`), "
                   "name the labels it has (--label-name) or allow segmentation")
            raise PlateNotFoundError(msg)


def label_destinations(plates: Sequence[Plate], spec: RunSpec, label_name: str, *, every_field: bool) -> set[str]:
    """The plates whose segmentation labels must go into the run directory, because the plate cannot take them.

    A plate is asked only when it may need labels (its first field lacks them, or every field is
    segmented again): a local plate by the file system's permissions, a URL by writing and removing a
    small object.

    Raises
    ------
    RunDirectoryError
        A plate that cannot take labels, in a run without an output folder to keep them.
    """
    from .io import labels_writable

    out = set()
    for plate in plates:
        well = plate.wells[0]
        first = plate.fields(well)[0]
        if not every_field and label_name in plate.label_names(well, first):
            continue
        if labels_writable(plate):
            continue
        if spec.out is None:
            msg = (f"plate {plate.name} ({plate.path}) has fields without {label_name!r} labels and cannot be "
                   "written; give the run an output folder (out=, --out) to keep the labels it segments")
            raise RunDirectoryError(msg)
        log.info("plate %s cannot take labels: its segmentation goes into the run directory (labels/%s/)",
                 plate.name, plate.name)
        out.add(plate.name)
    return out
