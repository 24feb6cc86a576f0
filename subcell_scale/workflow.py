"""The entry points of a run: :func:`run` (the whole job), :func:`embed_plate`, :func:`segment_plate`, :func:`demo`.

Each describes its run once (:func:`subcell_scale.runspec.describe_run`), opens it (every input
checked before the first field is read; :meth:`subcell_scale.stages.Run.open`) and runs its stages
(:mod:`subcell_scale.stages`)::

    spec = describe_run(plates, out="run", platemap="platemap.csv", preset="jump-cellpainting")
    with Run.open(spec, stages=("embed", "profile", "evaluate", "report")) as run:
        cells = embed(run)                       # segment on the way, cells.zarr
        profiles = profile(run, cells)           # profiles.h5ad, profiles.parquet
        tables = evaluate(run, profiles)         # metrics/*.csv
        report(run, cells, profiles, tables)     # figures/*.png, report.html

The command line calls the same functions with the same keywords (``subcell-scale run``, ``embed``,
``segment``, ``demo``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ._constants import Files, Status
from ._docs import doc_params
from .errors import UsageError, resource_error
from .runspec import describe_run
from .stages import Run, embed, evaluate, profile, report, segment

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from distributed import Client

    from .cells import CropSpec
    from .io import Plate
    from .models import ModelSpec, ResolvedModel, SubCell
    from .params import RunParams

log = logging.getLogger(__name__)

__all__ = ["RunResult", "demo", "embed_plate", "run", "segment_plate"]

DEMO_VARIANT = "all_channels_MAE-CellS-ProtS-Pool"


@dataclass
class RunResult:
    """What a run produced and how it went; ``ok`` is False when a field failed or a step was skipped."""

    out: Path
    report: Path | None
    n_cells: int
    fields_done: int
    fields_failed: int
    failed: dict[str, str] = field(default_factory=dict)
    summary: pd.DataFrame | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.fields_failed == 0 and not self.skipped

    def lines(self) -> list[str]:
        """A short human summary, as the command line prints it."""
        out = [f"cells: {self.n_cells} from {self.fields_done} fields"
               + (f"; {self.fields_failed} field(s) FAILED" if self.fields_failed else "")]
        out += [f"  failed {key}: {err}" for key, err in list(self.failed.items())[:10]]
        if len(self.failed) > 10:
            out.append(f"  ... and {len(self.failed) - 10} more (see {self.out / Files.MANIFEST})")
        if self.summary is not None and len(self.summary) and "view" in self.summary.columns:
            from .views import side_by_side

            out += side_by_side(self.summary).round(3).to_string().splitlines()
        elif self.summary is not None and len(self.summary):
            for r in self.summary.itertuples():
                cell_type = "" if getattr(r, "cell_type", "all") == "all" else f"{r.cell_type:<8} "
                value = f"{int(r.value)}" if str(r.metric).startswith("n_") else f"{r.value:.3f}"
                out.append(f"{cell_type}{r.design:>12} {r.metric:<20} {value:>7}  ({r.n_groups} groups)")
        out += [f"skipped {step}: {why}" for step, why in self.skipped.items()]
        if self.report is not None:
            out.append(f"report: {self.report}")
        return out


@doc_params
def run(
    plates: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    *,
    out: str | os.PathLike,
    platemap: str | os.PathLike | pd.DataFrame | None = None,
    model: Any = None,
    classifiers: Sequence[str | os.PathLike] | None = None,
    preset: str | RunParams | None = None,
    client: Client | None = None,
    scheduler: str | None = None,
    cluster: str | None = None,
    n_workers: int | None = None,
    batch_size: int | None = None,
    channel_map: Mapping[str, Any] | None = None,
    format: str = "zarr",
    retries: int = 1,
    figures: bool = True,
    null_size: int | None = None,
    seed: int | None = None,
    segment_if_missing: bool = True,
    progress: bool | None = None,
    plates_from: str | os.PathLike | None = None,
    **overrides: Any,
) -> RunResult:
    """Segment, embed, profile and evaluate plates; write every output into ``out``.

    Every input is checked before the first field is read: the plates, the platemap against their
    wells and against the columns the post-processing and evaluation need, the model, the channel
    map, ``out``. A mistake costs seconds and writes nothing.

    Parameters
    ----------
    plates
        OME-Zarr HCS plate paths or URLs, or globs (``"plates/*.zarr"``).
    {out}
        It holds ``cells.zarr``, ``profiles.h5ad``, ``metrics/``, ``figures/``, ``report.html``,
        ``manifest.json`` and ``run.json``; the later steps are redone on each call. A local folder: to
        keep the cells on object storage, embed to the URL (:func:`embed_plate` or ``subcell-scale
        embed --out s3://...``) and profile what :func:`subcell_scale.read_cells` opens.
    {platemap}
        Without one the run stops after the cells and per-well profiles (metrics need perturbations).
    model, classifiers, preset, channel_map, batch_size, format, retries, segment_if_missing, progress
        As in :func:`embed_plate`; ``model="random"`` runs seeded random weights of the preset's variant.
    client, scheduler, cluster, n_workers
        An existing client, or how to get one (:func:`subcell_scale.distributed.get_client`;
        default :attr:`subcell_scale.settings.cluster`); a client made here is closed at the end.
    figures
        Draw the figures and the report.
    null_size, seed
        Null distribution size and seed of the mAP p-values (default: the preset's design, e.g. 10000
        and 42 for ``jump-cellpainting`` as the benchmark); the same as ``design.null_size`` and
        ``design.seed``.
    plates_from
        A text file naming plates, one path or URL a line.
    {overrides}
        Mappings merge with the preset's: ``design={"null_size": 1000}``.

    Returns
    -------
    RunResult
        Paths, counts, failed fields and the metrics summary.
    """
    for key, value in (("design.null_size", null_size), ("design.seed", seed)):
        if value is not None and overrides.setdefault(key, value) != value:
            msg = f"{key.split('.')[1]}={value} and {key}={overrides[key]} disagree; give one"
            raise UsageError(msg)
    spec = describe_run(plates, plates_from=plates_from, out=out, platemap=platemap, model=model,
                        classifiers=classifiers, preset=preset, scheduler=scheduler, cluster=cluster,
                        n_workers=n_workers, batch_size=batch_size, channel_map=channel_map, format=format,
                        retries=retries, figures=figures, segment_if_missing=segment_if_missing, progress=progress,
                        **overrides)
    stages = ("embed", "profile", "evaluate", *(("report",) if spec.figures else ()))
    with Run.open(spec, stages=stages, client=client, start_cluster=True) as current:
        cells = embed(current)
        profiles = _later(current, "profile", lambda: profile(current, cells))
        tables = _later(current, "evaluate", lambda: evaluate(current, profiles)) or {}
        path = _later(current, "report", lambda: report(current, cells, profiles, tables)) if spec.figures else None
        summary = tables.get("summary")
        current.summary = [] if summary is None else summary.to_dict("records")
        done = current.store.summarize()[Status.DONE]
        result = RunResult(out=Path(spec.out), report=path, n_cells=int(cells.n_obs), fields_done=done,
                           fields_failed=len(current.failed), failed=dict(current.failed), summary=summary,
                           skipped=dict(current.skipped))
    return result


def _later(run: Run, step: str, call: Any) -> Any:
    """A step after the cells: one the file system or memory stops is named and skipped (exit status 4), and
    the cells and what earlier steps wrote are kept. Returns the step's result, or None."""
    try:
        return call()
    except (OSError, MemoryError) as exc:
        error = resource_error(exc, run.root, f"in the {step} step")
        run.skip(step, " ".join(str(error or f"{type(exc).__name__}: {exc}").split()))
        return None


@doc_params
def embed_plate(
    plate: str | os.PathLike | Plate | Sequence[str | os.PathLike | Plate],
    model: str | os.PathLike | SubCell | ModelSpec | ResolvedModel | None = None,
    classifiers: Sequence[str | os.PathLike] | None = None,
    client: Client | None = None,
    *,
    out: str | os.PathLike | None = None,
    preset: str | RunParams | None = None,
    channel_map: Mapping[str, str | Sequence[str]] | None = None,
    platemap: str | os.PathLike | pd.DataFrame | None = None,
    label_name: str | None = None,
    segment_if_missing: bool = True,
    batch_size: int | None = None,
    crop: CropSpec | Mapping[str, Any] | None = None,
    device: str | None = None,
    retries: int = 1,
    progress: bool | None = None,
    format: str = "zarr",
    crop_on: str = "auto",
    storage_options: dict[str, Any] | None = None,
    out_storage_options: dict[str, Any] | None = None,
    missing_chunks: str = "raise",
    fields_per_task: int | None = None,
    **overrides: Any,
) -> AnnData:
    """Embed every cell of one or more plates with SubCell and return the cells AnnData.

    Parameters
    ----------
    {plate_list}
        Several plates in one run give one AnnData (plate names must differ).
    {model}
        None uses the preset's variant. With a client, an instance is saved once to ``out/model/``
        (or a temporary folder) and every worker loads it from there (a worker fetches it once from
        object storage); it never travels inside the graph.
    {classifiers}
    {client}
    {out}
        It holds the shards, ``manifest.json``, ``run.json`` and ``cells.zarr``; None keeps everything
        in memory. A local path is made absolute here (every worker must see it: a shared file
        system); an fsspec URL (``s3://bucket/run``) suits clusters without one: the workers write
        their shards there, and everything else the run keeps goes there too (see
        :class:`~subcell_scale.rundir.RunPath` for what object storage guarantees).
    {preset}
    {channel_map}
    {platemap}
    {label_name}
    segment_if_missing
        Segment fields that lack the labels (and write them into the plate, or into ``out/labels/``
        for a plate that cannot be written), instead of failing.
    {batch_size}
    crop
        A :class:`~subcell_scale.cells.CropSpec` or a mapping of its fields, overriding the preset's.
    {device}
        In-process only (a cluster's workers each use their own GPU).
    retries
        Extra attempts of a failing field before it is recorded as failed.
    {progress}
    format
        ``"zarr"`` (``cells.zarr``) or ``"h5ad"`` (``cells.h5ad``, local ``out`` only), written with ``out``.
    crop_on
        ``"cpu"``, ``"device"`` or ``"auto"``: where crops are cut (:mod:`subcell_scale.pipeline.field`);
        ``"auto"`` cuts them on the GPU when the worker has one.
    {storage_options}
        They serve the plates, and an ``out`` URL unless ``out_storage_options`` is given.
    out_storage_options
        fsspec options of an ``out`` URL, when they differ from the plates' (another store or other
        credentials).
    {missing_chunks}
    fields_per_task
        Fields embedded together in one GPU task, so that small fields (HPA: 10-30 cells) fill the
        model's batches; default: enough to fill about one batch, from the first field's labels. The
        embeddings do not depend on it.
    {overrides}

    Returns
    -------
    AnnData
        ``X`` float32 embeddings (passes concatenated), ``var_names`` ``subcell_0000`` ... (multi-pass:
        ``subcell_<pass>_0000`` ...), ``obs_names`` ``"{plate}_{well}_{field}_{label}"``, ``obs``:
        ``plate``, ``well`` ("B03"), ``row``, ``column``, ``field`` (categoricals), ``label``, ``area``
        (pixels at level 0), ``centroid_y``, ``centroid_x`` (pixels at level 0) and the platemap
        columns; ``obsm["spatial"]`` (x, y) in micrometres; with classifiers ``obsm["localization"]``
        (n, 31 * passes, pass-major) and ``uns["localization_classes"]`` (31 names, the column order
        within a pass); ``uns["subcell_scale"]``: provenance (``obs_units`` states each column's
        unit). Fields that failed are left out and listed in
        ``uns["subcell_scale"]["failed_fields"]`` and the manifest; a rerun computes only them.
        With ``out``, ``X`` and ``obsm["localization"]`` stay in ``out/cells.zarr`` (dask arrays; see
        :func:`subcell_scale.read_cells`), so the client never holds every embedding; without
        ``out``, everything is in memory.

    Raises
    ------
    ChannelMismatchError
        A plate lacks a channel the preset or channel map needs (before any work).
    RunDirectoryError
        ``out`` is used by another run, holds results made with other parameters, or cannot be
        written (a missing bucket, wrong credentials: the message names the URL).
    """
    spec = describe_run(plate, out=out, model=model, classifiers=classifiers, preset=preset, channel_map=channel_map,
                        platemap=platemap, label_name=label_name, segment_if_missing=segment_if_missing,
                        batch_size=batch_size, crop=crop, device=device, retries=retries, progress=progress,
                        format=format, crop_on=crop_on, storage_options=storage_options,
                        out_storage_options=out_storage_options, missing_chunks=missing_chunks,
                        fields_per_task=fields_per_task, **overrides)
    with Run.open(spec, stages=("embed",), client=client) as current:
        return embed(current)


@doc_params
def segment_plate(
    plate: str | os.PathLike | Plate | Sequence[str | os.PathLike | Plate],
    *,
    out: str | os.PathLike | None = None,
    nucleus_channel: str | None = None,
    cell_channel: str | Sequence[str] | None = None,
    label_name: str = "cells",
    overwrite: bool = False,
    preset: str | RunParams | None = None,
    client: Client | None = None,
    storage_options: dict[str, Any] | None = None,
    retries: int = 1,
    progress: bool | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Segment every field of one or more plates and store the labels, so later runs reuse them.

    Parameters
    ----------
    {plate_list}
    out
        A run directory recording each field in its manifest; it also keeps the labels of a plate
        that cannot be written (``out/labels/<plate>/``), where later runs into it find them.
    nucleus_channel, cell_channel, **params
        Segmentation parameters (:class:`subcell_scale.segment.SegmentParams`, lengths in um), on top of
        the preset's; other keywords are preset parameters (``**{"segmentation.cell_threshold": "li"}``
        is the same as ``cell_threshold="li"``). Checked before any field is read.
    label_name
        Name of the label image written into each field (``labels/<name>``).
    overwrite
        Segment again the fields that already hold ``label_name``; by default they are skipped, so a
        rerun resumes where an interrupted one stopped.
    preset
        Whose segmentation parameters to start from (``"jump-cellpainting"`` splits nuclei at 10 um).
    {client}
        One task per field, each worker reading and writing its own field, through the same
        scheduler as embedding.
    {storage_options}
        Every worker that opens a plate uses them.
    retries
        Extra attempts of a field whose error may go away.
    {progress}

    Returns
    -------
    dict
        ``plates`` (paths), ``plate`` (the first), ``label_name``, ``n_fields``, ``done``, ``skipped``,
        ``failed``, ``n_cells``, ``seconds`` and ``fields``: one record per field in plate order
        (``plate``, ``well``, ``field``, ``status``, ``n_cells``, ``labels``: ``"plate"`` or ``"run"``,
        ``seconds``, ``error``).
    """
    from .presets import get_preset

    keys = set(get_preset(preset if isinstance(preset, str | None) else preset.preset))
    overrides = {k: v for k, v in params.items() if k in keys or "." in k}
    segmentation = {f"segmentation.{k}": v for k, v in
                    {**params, "nucleus_channel": nucleus_channel, "cell_channel": cell_channel}.items()
                    if k not in overrides and v is not None}
    spec = describe_run(plate, out=out, preset=preset, label_name=label_name, overwrite=overwrite,
                        storage_options=storage_options, retries=retries, progress=progress, **segmentation,
                        **overrides)
    with Run.open(spec, stages=("segment",), client=client) as current:
        records = segment(current)
        seconds = current.timings["segment"]
    rows = [{"plate": fid.plate, "well": fid.well, "field": fid.field, **record} for fid, record in records.items()]
    counts = {s: sum(r["status"] == s for r in rows) for s in (Status.DONE, Status.SKIPPED, Status.FAILED)}
    paths = [str(getattr(p, "path", p)) for p in spec.plates]
    return {"plates": paths, "plate": paths[0], "label_name": label_name, "n_fields": len(rows), **counts,
            "n_cells": int(sum(r["n_cells"] or 0 for r in rows)), "seconds": round(seconds, 3), "fields": rows}


def demo(out: str | os.PathLike = "demo-run", *, n_plates: int | None = None, n_wells: int | None = None,
         n_fields: int | None = None, field_size: int | None = None, cells_per_field: int | None = None,
         seed: int = 0, model: Any = None, preset: str = "hpa", cluster: str | None = None,
         scheduler: str | None = None, n_workers: int | None = None, progress: bool | None = None,
         **run_options: Any) -> RunResult:
    """Generate demo plates and run the whole job on them on a local cluster (or the scheduler given).

    Plate sizes default to those of :func:`subcell_scale.io.make_demo_plate` (and of
    ``subcell-scale make-demo-plate``). With the published ``all_channels`` weights in the model cache
    (``subcell-scale download``) and a GPU, this is the real model at the HPA training geometry;
    otherwise the full-size architecture with deterministic random weights, at 224-px crops so that
    a laptop finishes in minutes. ``model`` and ``preset`` choose otherwise (``preset=
    "jump-cellpainting"`` makes Cell Painting plates).
    """
    from .distributed import count_gpus
    from .errors import CheckpointError
    from .io.demo import make_demo_plate
    from .models import ModelSpec
    from .models.download import cached_files
    from .params import RunParams

    out = Path(out)
    params = RunParams.resolve(preset)
    cellpainting = params.preset == "jump-cellpainting"
    sizes = {"n_plates": n_plates, "n_wells": n_wells, "n_fields": n_fields, "field_size": field_size,
             "cells_per_field": cells_per_field}
    sizes = {k: v for k, v in sizes.items() if v is not None}
    plate_dir = out / Files.PLATES
    existing = sorted(plate_dir.glob("*.zarr"))
    if existing and (plate_dir / Files.PLATEMAP).exists():
        plates = existing
        log.info("reusing the demo plates in %s", plate_dir)
    else:
        plates = make_demo_plate(plate_dir, seed=seed, cellpainting=cellpainting, **sizes)
    variant = params.variant
    if model is None:
        try:
            cached_files(variant, n_classifiers=1, verify=False)
        except CheckpointError:
            banner(f"No published SubCell weights in the model cache: the demo uses the full-size {variant} "
                   "architecture with DETERMINISTIC RANDOM WEIGHTS, so embeddings and localizations show the "
                   "pipeline, not biology. Get the real weights with:", f"subcell-scale download {variant}")
            model = ModelSpec(source="random", variant=variant, seed=seed, n_classifiers=1)
        else:
            model = variant
    # the training geometry on a GPU; the same micrometres at 224 px on CPUs, so a laptop finishes in minutes
    options: dict[str, Any] = {}
    if not count_gpus() and scheduler is None:
        options = {"model_pixel_size": params.crop.side_um / 224, "out_size": 224}
    options.update(run_options)
    return run(plates, out=out, platemap=plate_dir / Files.PLATEMAP, model=model, preset=params.preset,
               cluster=cluster, scheduler=scheduler, n_workers=n_workers, progress=progress, **options)


def banner(text: str, command: str | None = None) -> None:
    """A warning nobody scrolls past: logged and framed on stderr; ``command`` stands whole on its own line."""
    import sys
    import textwrap

    log.warning("%s%s", text, f" {command}" if command else "")
    width = max(76, len(command or "") + 4)
    lines = textwrap.wrap(text, width - 4)
    rule = "!" * width
    body = [f"! {line:<{width - 4}} !" for line in lines]
    if command:
        body.append(f"!   {command:<{width - 6}} !")
    print("\n".join([rule, *body, rule]), file=sys.stderr, flush=True)
