"""Plates in, cells AnnData out: :func:`embed_plate`, in-process or on any Dask cluster.

A run reads as four steps, each in its own module:

1. validate and plan (:mod:`~subcell_scale.params`, :mod:`.jobs`): open the plates (metadata only),
   resolve the parameters once, plan each plate (channels per pass, crop window; a missing channel
   fails here, before any work) and turn every field into a :class:`~.field.FieldJob`;
2. with ``out``: lock the directory, record inputs and parameters (``manifest.json``, ``preset.json``);
3. map (:mod:`.execute`): fields without a finished shard run through the one scheduler, each as a CPU
   stage (read, labels, filter, crop) and a GPU stage (embed, write the shard), streamed through a
   bounded window; each ends in the manifest as done or failed;
4. assemble (:mod:`subcell_scale.cellstore`): the shards, in plate, well, field order whatever the
   completion order, become the cells AnnData (``cells.zarr`` or ``cells.h5ad`` in ``out``).
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._settings import settings
from .._version import __version__
from ..cellstore import FORMATS, RunContext, assemble, cells_name, stream_cells
from ..errors import ConfigError, PlateNotFoundError
from ..models.spec import ModelSpec, ResolvedModel, resolve_model
from ..params import RunParams, check_same_layout, write_parameters
from ..store import FieldId, ResultsStore, RunPath, parameters_digest
from .execute import run_fields
from .field import prepare_field
from .jobs import fields_per_task as _fields_per_task
from .jobs import open_plates, plan_jobs

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from distributed import Client

    from ..cells import CropSpec
    from ..io import Plate
    from ..models import SubCell

log = logging.getLogger(__name__)

__all__ = ["embed_plate", "field_crops"]


def embed_plate(
    plate: str | os.PathLike | Plate | Sequence[str | os.PathLike | Plate],
    model: str | os.PathLike | SubCell | ModelSpec | ResolvedModel | None = None,
    classifiers: Sequence[str | os.PathLike] | None = None,
    client: Client | None = None,
    *,
    out: str | os.PathLike | RunPath | None = None,
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
    plate
        A plate path (``plate.zarr``), an opened :class:`~subcell_scale.io.Plate`, or a list of them:
        several plates in one run give one AnnData (plate names must differ).
    model
        A published variant name (loaded from the model cache), an encoder checkpoint path, a
        :class:`~subcell_scale.models.SubCell` instance or a :class:`ModelSpec`; None uses the
        preset's variant. With a client, an instance is saved once to ``out/model/`` (or a temporary
        folder) and every worker loads it from there (a worker fetches it once from object
        storage); it never travels inside the graph.
    classifiers
        Classifier checkpoint paths for an encoder checkpoint path (their sigmoids are averaged).
    client
        A ``distributed.Client`` (see :func:`subcell_scale.distributed.get_client`); None runs the
        fields one after the other in this process.
    out
        Output directory: shards, ``manifest.json``, ``preset.json`` and ``cells.zarr``. Called again
        with the same directory, finished fields are read back, not recomputed. None keeps everything
        in memory. A local path is made absolute here (every worker must see it: a shared file
        system); an fsspec URL (``s3://bucket/run``) suits clusters without one: the workers write
        their shards there, and everything else the run keeps goes there too (see
        :class:`~subcell_scale.store.RunPath` for what object storage guarantees).
    preset
        ``"hpa"`` (default) or ``"jump-cellpainting"`` (see :mod:`subcell_scale.presets`), or parameters
        resolved earlier with :meth:`subcell_scale.params.RunParams.resolve`.
    channel_map
        Model slot -> plate channel name(s); a list for one slot means one pass per name.
    platemap
        A platemap file or frame; its columns are joined to ``obs`` on (plate, well).
    label_name
        Label image holding the cells (the preset's, ``"cells"``, by default).
    segment_if_missing
        Segment fields that lack the labels (and write them into the plate), instead of failing.
    batch_size
        Crops per forward pass (default :attr:`subcell_scale.settings.batch_size`); the embeddings do not
        depend on it.
    crop
        A :class:`~subcell_scale.cells.CropSpec` or a mapping of its fields, overriding the preset's.
    device
        In-process only: ``"cuda"``, ``"cpu"``; default CUDA when available.
    retries
        Extra attempts of a failing field before it is recorded as failed.
    progress
        Show a progress bar over fields (default :attr:`subcell_scale.settings.progress`).
    format
        ``"zarr"`` (``cells.zarr``) or ``"h5ad"`` (``cells.h5ad``, local ``out`` only), written with ``out``.
    crop_on
        ``"cpu"``, ``"device"`` or ``"auto"``: where crops are cut (:mod:`subcell_scale.pipeline.field`);
        ``"auto"`` cuts them on the GPU when the worker has one.
    storage_options
        fsspec options of plate URLs (credentials, ``client_kwargs={"endpoint_url": ...}``); also
        used for an ``out`` URL unless ``out_storage_options`` is given.
    out_storage_options
        fsspec options of an ``out`` URL, when they differ from the plates' (another store or other
        credentials). Without options, fsspec takes credentials from the environment
        (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...).
    fields_per_task
        Fields embedded together in one GPU task, so that small fields (HPA: 10-30 cells) fill the
        model's batches; default: enough to fill about one batch, from the first field's labels. The
        embeddings do not depend on it.
    missing_chunks
        ``"raise"`` (default): a field whose image chunks are not all in the store fails, naming
        them (zarr would read them as black pixels); ``"fill"``: accept fill values, for plates
        written sparsely on purpose (see :func:`subcell_scale.open_plate`).
    **overrides
        Any preset parameter (``out_size=64``, ``mask_mode="none"``, ``min_area_um2=30``, ...).

    Returns
    -------
    AnnData
        ``X`` float32 embeddings (passes concatenated), ``var_names`` ``subcell_0000`` ... (multi-pass:
        ``subcell_<pass>_0000`` ...), ``obs_names`` ``"{plate}_{well}_{field}_{label}"``, ``obs``:
        ``plate``, ``well`` ("B03"), ``row``, ``column``, ``field`` (categoricals), ``label``, ``area``,
        ``centroid_y``, ``centroid_x`` (pixels) and the platemap columns; ``obsm["spatial"]`` (x, y) in
        micrometres; with classifiers ``obsm["localization"]`` (n, 31 * passes, pass-major) and
        ``uns["localization_classes"]`` (31 names, the column order within a pass);
        ``uns["subcell_scale"]``: provenance. Fields that failed are left out and listed in
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
    if format not in FORMATS:
        msg = f"format must be one of {FORMATS}, got {format!r}"
        raise ConfigError(msg)
    batch_size = settings.batch_size if batch_size is None else int(batch_size)
    if batch_size < 1 or int(retries) < 0:
        msg = f"batch_size must be >= 1 and retries >= 0, got {batch_size} and {retries}"
        raise ConfigError(msg)
    if crop_on not in ("auto", "cpu", "device"):
        msg = f"crop_on must be 'auto', 'cpu' or 'device', got {crop_on!r}"
        raise ConfigError(msg)
    # 1. validate and plan: every input problem surfaces here, before any field is read
    plates = open_plates(plate, storage_options, missing_chunks=missing_chunks)
    params = RunParams.resolve(preset, crop=crop, channel_map=channel_map, label_name=label_name, **overrides)
    told = params.variant if "variant" in params.overridden else None  # a checkpoint told which variant it is
    resolved = resolve_model(model, classifiers, default_variant=params.variant, variant=told).with_channels(device)
    plans = [params.plan(p, resolved.variant or resolved.channels) for p in plates]
    check_same_layout(plans)
    digest = parameters_digest({**params.embedding_parameters(), "model": resolved.identity,
                                "segment_if_missing": bool(segment_if_missing)})
    for line in params.report_lines(plans[0]):
        log.info("%s", line)
    context = RunContext(plates, plans, params, resolved, platemap)
    options = storage_options if out_storage_options is None else out_storage_options
    store = ResultsStore(out, storage_options=options) if out is not None else None
    if store is not None and format == "h5ad" and not store.root.is_local:
        msg = f"out {store.root}: cells.h5ad needs a local output directory; use format='zarr' on object storage"
        raise ConfigError(msg)
    per_task = fields_per_task or _fields_per_task(plates, plans, params, batch_size)
    with tempfile.TemporaryDirectory(prefix="subcell-scale-") as scratch:
        plan = {"store": store, "scratch": Path(scratch), "digest": digest, "batch_size": batch_size,
                "crop_on": crop_on, "segment_if_missing": bool(segment_if_missing)}
        if store is None:
            jobs = plan_jobs(plates, plans, params, **plan)
            # 3. map, 4. assemble (in memory)
            results = run_fields(jobs, resolved, client, None, scratch=Path(scratch), device=device,
                                 retries=int(retries), progress=progress, fields_per_task=per_task)
            fields = [(j.fid, results.shards[j.fid]) for j in jobs if j.fid in results.shards]
            return assemble(fields, context, [f.key for f in results.failed])
        with store.lock():
            # 2. record what the run is, before any work
            jobs = plan_jobs(plates, plans, params, **plan)
            started = time.perf_counter()
            store.begin(inputs=_inputs(plates, platemap), parameters=params.to_dict(), model=resolved.identity,
                        versions=_versions(), digest=digest)
            write_parameters(store.root, params, plans)
            # 3. map
            results = run_fields(jobs, resolved, client, store, scratch=Path(scratch), device=device,
                                 retries=int(retries), progress=progress, plates=plates, fields_per_task=per_task)
            # 4. assemble: the shards streamed into the cells store, which the returned AnnData reads
            fields = [(j.fid, j.shard_path) for j in jobs if j.fid not in results.failed]
            adata = stream_cells(fields, context, [f.key for f in results.failed], store.root, format)
            store.summarize(seconds=round(time.perf_counter() - started, 3), cells=cells_name(format))
            store.flush(force=True)
    if results.failed:
        log.warning("%d of %d fields failed (see %s); rerun with the same out to retry them",
                    len(results.failed), len(jobs), store.manifest_path)
    return adata


def field_crops(plate: str | os.PathLike | Plate, well: str, field: str, *, preset: str | RunParams | None = None,
                model_channels: Sequence[str] | None = None,
                channel_map: Mapping[str, str | Sequence[str]] | None = None, label_name: str | None = None,
                storage_options: dict[str, Any] | None = None, **overrides: Any) -> tuple[np.ndarray, pd.DataFrame]:
    """The crops :func:`embed_plate` gives the model for one field, to look at or check.

    Takes the same preset, channel map and overrides as :func:`embed_plate`; ``model_channels``
    defaults to the preset variant's slots. Returns float32 crops (N, P, C, S, S) — P passes, C model
    channels, before the model's cut to a multiple of its patch size — and the cells table (label,
    area, centroid in plate pixels), row i describing crop i. Fields without labels are not segmented.
    """
    (opened,) = open_plates(plate, storage_options)
    params = RunParams.resolve(preset, channel_map=channel_map, label_name=label_name, **overrides)
    plan = params.plan(opened, model_channels)
    fid = FieldId(opened.name, well, str(field))
    if well not in opened.wells or fid.field not in opened.fields(well):
        msg = f"plate {opened.name}: no field {well}/{field}"
        raise PlateNotFoundError(msg)
    with tempfile.TemporaryDirectory(prefix="subcell-scale-") as scratch:
        jobs = plan_jobs([opened], [plan], params, store=None, scratch=Path(scratch), digest="", batch_size=1,
                         crop_on="cpu", segment_if_missing=False)
        prepared = prepare_field(next(j for j in jobs if j.fid == fid))
    return prepared.crops, prepared.cells


def _inputs(plates: list[Plate], platemap: Any) -> dict[str, Any]:
    return {"plates": [{"name": p.name, "path": str(p.path), "version": getattr(p, "version", None),
                        "wells": len(p.wells)} for p in plates],
            "platemap": None if platemap is None or isinstance(platemap, pd.DataFrame) else str(platemap)}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"subcell_scale": __version__, "python": platform.python_version()}
    for name in ("numpy", "torch", "dask", "distributed", "anndata", "zarr"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:  # pragma: no cover
            continue
    return out
