"""Plates in, cells AnnData out: :func:`embed_plate` composes the stages, in-process or on a Dask cluster.

The run, step by step:

1. open the plates (metadata only) and resolve the preset for each: channel indices per pass, crop
   geometry in plate pixels; a missing channel fails here, before any work;
2. with ``out``: lock the directory, record inputs and parameters in ``manifest.json`` and
   ``preset.json``, and find the fields whose shard is already there (resume);
3. run the other fields: one CPU task (read, labels, filter, crop) and one GPU task (embed, write the
   shard) each, streamed with ``as_completed`` through a bounded window so memory does not grow with
   the plate; failures are retried ``retries`` times, then recorded with their message;
4. assemble the shards, in (plate, well, field, label) order whatever the completion order, into the
   cells AnnData (``cells.zarr`` or ``cells.h5ad`` in ``out``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import itertools
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import __version__
from ._constants import VAR_PREFIX, Files, Keys, Obs
from .distributed.plugin import ModelSpec
from .distributed.tasks import FieldJob, embed_field, prepare_field
from .errors import CheckpointError, ConfigError, PlateNotFoundError
from .presets import CROP_KEYS, crop_spec, report_lines, resolve_preset, write_preset_report
from .store import ResultsStore, Shard, field_key, parameters_digest, read_shard, shard_meta

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from distributed import Client

    from .cells import CropSpec
    from .io import Plate
    from .models import SubCell

log = logging.getLogger(__name__)

_FORMATS = ("zarr", "h5ad")
_EMBED_KEYS = ("crop", "channel_map", "label_name", "min_area_um2", "max_area_um2", "drop_border", "segmentation",
               "illumination")
"""Parameters that change embeddings; the profiling and evaluation keys of a preset do not."""
MODEL_DIR = "model"
"""Folder of ``out`` where a model instance is saved for workers to load."""


@dataclass
class _Model:
    """The model of a run as each side needs it: a spec for workers, an instance in-process, its identity."""

    spec: ModelSpec | None
    instance: SubCell | None
    channels: list[str] | None
    identity: dict[str, Any]

    @property
    def variant(self) -> str | None:
        """Published variant the weights belong to, when known (names it in messages)."""
        if self.instance is not None:
            return self.instance.variant
        return self.spec.variant or self.spec.options.get("variant")


def embed_plate(
    plate: str | os.PathLike | Plate | Sequence[str | os.PathLike | Plate],
    model: str | os.PathLike | SubCell | ModelSpec | None = None,
    classifiers: Sequence[str | os.PathLike] | None = None,
    client: Client | None = None,
    *,
    out: str | os.PathLike | None = None,
    preset: str | None = None,
    channel_map: Mapping[str, str | Sequence[str]] | None = None,
    platemap: str | os.PathLike | pd.DataFrame | None = None,
    label_name: str | None = None,
    segment_if_missing: bool = True,
    batch_size: int = 64,
    crop: CropSpec | Mapping[str, Any] | None = None,
    device: str | None = None,
    retries: int = 1,
    progress: bool = True,
    format: str = "zarr",
    crop_on: str = "auto",
    storage_options: dict[str, Any] | None = None,
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
        folder) and every worker loads it from there; it never travels inside the graph.
    classifiers
        Classifier checkpoint paths for an encoder checkpoint path (their sigmoids are averaged).
    client
        A ``distributed.Client`` (see :func:`subcell_scale.distributed.get_client`); None runs the
        fields one after the other in this process.
    out
        Output directory: shards, ``manifest.json``, ``preset.json`` and ``cells.zarr``. Called again
        with the same directory, finished fields are read back, not recomputed. None keeps everything
        in memory.
    preset
        ``"hpa"`` (default) or ``"jump-cellpainting"``; see :mod:`subcell_scale.presets`.
    channel_map
        Model slot -> plate channel name(s); a list for one slot means one pass per name.
    platemap
        A platemap file or frame; its columns are joined to ``obs`` on (plate, well).
    label_name
        Label image holding the cells (the preset's, ``"cells"``, by default).
    segment_if_missing
        Segment fields that lack the labels (and write them into the plate), instead of failing.
    batch_size
        Crops per forward pass; the embeddings do not depend on it.
    crop
        A :class:`~subcell_scale.cells.CropSpec` or a mapping of its fields, overriding the preset's.
    device
        In-process only: ``"cuda"``, ``"cpu"``; default CUDA when available.
    retries
        Extra attempts of a failing field before it is recorded as failed.
    progress
        Show a progress bar over fields.
    format
        ``"zarr"`` (``cells.zarr``) or ``"h5ad"`` (``cells.h5ad``), written with ``out``.
    crop_on
        ``"cpu"``, ``"device"`` or ``"auto"``: where crops are cut (:mod:`subcell_scale.distributed.tasks`).
    storage_options
        fsspec options used to open plate paths.
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

    Raises
    ------
    ChannelMismatchError
        A plate lacks a channel the preset or channel map needs (before any work).
    RunDirectoryError
        ``out`` is used by another run or holds results made with other parameters.
    """
    if format not in _FORMATS:
        msg = f"format must be one of {_FORMATS}, got {format!r}"
        raise ConfigError(msg)
    if int(batch_size) < 1 or int(retries) < 0:
        msg = f"batch_size must be >= 1 and retries >= 0, got {batch_size} and {retries}"
        raise ConfigError(msg)
    if crop_on not in ("auto", "cpu", "device"):
        msg = f"crop_on must be 'auto', 'cpu' or 'device', got {crop_on!r}"
        raise ConfigError(msg)
    plates = _open_plates(plate, storage_options)
    overrides = {**_crop_overrides(crop), **overrides}
    resolved_model = _resolve_model(model, classifiers, preset)
    if resolved_model.channels is None:  # a checkpoint whose slots are known only once loaded
        resolved_model = _load_for_channels(resolved_model, device)
    params = [resolve_preset(preset, p, model_channels=resolved_model.variant or resolved_model.channels,
                             channel_map=channel_map, label_name=label_name, **overrides) for p in plates]
    _check_compatible(params)
    run_params = {k: v for k, v in params[0].items() if k != "plate"}
    digest = parameters_digest({**{k: run_params[k] for k in _EMBED_KEYS}, "model": resolved_model.identity,
                                "segment_if_missing": bool(segment_if_missing)})
    for line in report_lines(params[0]):
        log.info("%s", line)

    store = ResultsStore(out) if out is not None else None
    jobs = _jobs(plates, params, store, digest, int(batch_size), crop_on, bool(segment_if_missing),
                 storage_options)
    started = time.perf_counter()
    if store is None:
        results = _run(jobs, resolved_model, client, None, device=device, retries=int(retries), progress=progress)
        failed = {k: v for k, v in results.items() if isinstance(v, str)}
        shards = {k: v for k, v in results.items() if isinstance(v, Shard)}
        adata = _assemble(jobs, shards, plates, params, resolved_model, platemap, failed)
        return adata
    with store.lock():
        store.begin(inputs=_inputs(plates, platemap), parameters=_jsonable(run_params),
                    model=resolved_model.identity, versions=_versions(), digest=digest)
        write_preset_report(store.root, params)
        results = _run(jobs, resolved_model, client, store, device=device, retries=int(retries), progress=progress)
        failed = {k: v for k, v in results.items() if isinstance(v, str)}
        shards = {job.key: read_shard(job.shard_path) for job in jobs if job.key not in failed}
        adata = _assemble(jobs, shards, plates, params, resolved_model, platemap, failed)
        path = _write_cells(adata, store.root, format)
        store.summarize(seconds=round(time.perf_counter() - started, 3), cells=path.name)
        store.flush(force=True)
    if failed:
        log.warning("%d of %d fields failed (see %s); rerun with the same out to retry them",
                    len(failed), len(jobs), store.manifest_path)
    return adata


def field_crops(plate: str | os.PathLike | Plate, well: str, field: str, *, preset: str | None = None,
                model_channels: Sequence[str] | None = None,
                channel_map: Mapping[str, str | Sequence[str]] | None = None, label_name: str | None = None,
                storage_options: dict[str, Any] | None = None, **overrides: Any) -> tuple[np.ndarray, pd.DataFrame]:
    """The crops :func:`embed_plate` gives the model for one field, to look at or check.

    Takes the same preset, channel map and overrides as :func:`embed_plate`; ``model_channels``
    defaults to the preset variant's slots. Returns float32 crops (N, P, C, S, S) — P passes, C model
    channels, before the model's cut to a multiple of its patch size — and the cells table (label,
    area, centroid in plate pixels), row i describing crop i. Fields without labels are not segmented.
    """
    (opened,) = _open_plates(plate, storage_options)
    params = resolve_preset(preset, opened, model_channels=model_channels, channel_map=channel_map,
                            label_name=label_name, **overrides)
    (job,) = [j for j in _jobs([opened], [params], None, "", 1, "cpu", False, storage_options)
              if j.well == well and j.field == str(field)] or [None]
    if job is None:
        msg = f"plate {opened.name}: no field {well}/{field}"
        raise PlateNotFoundError(msg)
    prepared = prepare_field(job)
    return prepared.crops, prepared.cells


# -- inputs ------------------------------------------------------------------------------------------
def _open_plates(plate: Any, storage_options: dict[str, Any] | None) -> list[Plate]:
    from .io import open_plate

    items = list(plate) if isinstance(plate, list | tuple) else [plate]
    if not items:
        msg = "embed_plate: no plate given"
        raise ConfigError(msg)
    plates = [open_plate(p, storage_options=storage_options) if isinstance(p, str | os.PathLike) else p
              for p in items]
    names = [p.name for p in plates]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        msg = f"embed_plate: several plates are named {duplicated}; plate names must differ within a run"
        raise ConfigError(msg)
    return plates


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


def _resolve_model(model: Any, classifiers: Sequence[Any] | None, preset: str | None) -> _Model:
    """Turn the ``model`` argument into a spec (for workers), an instance (in-process) and an identity."""
    from .models.registry import get_variant
    from .presets import get_preset

    if model is None:
        model = get_preset(preset)["variant"]
    if isinstance(model, ModelSpec):
        return _Model(model, None, _spec_channels(model), model.describe())
    if isinstance(model, str | os.PathLike) and Path(model).is_file():
        spec = ModelSpec("checkpoint", encoder_path=str(Path(model).resolve()),
                         classifier_paths=tuple(str(Path(c).resolve()) for c in classifiers or ()))
        return _Model(spec, None, None, _checkpoint_identity(spec))
    if isinstance(model, str | os.PathLike):
        name = os.fspath(model)
        if any(sep in name for sep in ("/", "\\")) or name.endswith((".pth", ".pt")):
            msg = f"model checkpoint {name} does not exist (give an encoder .pth file or a variant name)"
            raise CheckpointError(msg)
        variant = get_variant(name)  # raises with the known names
        spec = ModelSpec("variant", variant=variant.name)
        return _Model(spec, None, list(variant.channels), {**spec.describe(), **_cached_sha256(spec)})
    if hasattr(model, "embed") and hasattr(model, "channels"):
        identity = {"source": "instance", "variant": model.variant, "checkpoint_sha256": model.checkpoint_sha256,
                    "config": model.config.to_dict(), "n_classifiers": model.n_classifiers,
                    "channels": list(model.channels)}
        return _Model(None, model, list(model.channels), identity)
    msg = f"model must be a variant name, a checkpoint path, a SubCell or a ModelSpec, got {type(model).__name__}"
    raise ConfigError(msg)


def _spec_channels(spec: ModelSpec) -> list[str] | None:
    from .models.registry import default_channels, get_variant

    if "channels" in spec.options:
        return list(spec.options["channels"])
    variant = spec.options.get("variant", spec.variant)
    if variant:
        return list(get_variant(variant).channels)
    if spec.source == "random" and spec.config is not None:
        return list(default_channels(int(spec.config.get("num_channels", 4))))
    return None


def _cached_sha256(spec: ModelSpec) -> dict[str, Any]:
    """sha256 of a cached variant's files, from the cache manifest; fails early when it is not cached."""
    from .models.download import cached_files, read_manifest, variant_dir

    encoder, classifiers = cached_files(spec.variant, n_classifiers=spec.n_classifiers, cache_dir=spec.cache_dir,
                                        verify=False)
    files = read_manifest(variant_dir(spec.variant, spec.cache_dir))["files"]
    return {"checkpoint_sha256": files[encoder.name]["sha256"],
            "classifier_sha256": [files[c.name]["sha256"] for c in classifiers]}


def _checkpoint_identity(spec: ModelSpec) -> dict[str, Any]:
    from .models.checkpoint import sha256_file

    return {"source": "checkpoint", "checkpoint_sha256": sha256_file(spec.encoder_path),
            "classifier_sha256": [sha256_file(p) for p in spec.classifier_paths]}


def _load_for_channels(m: _Model, device: str | None) -> _Model:
    """Load a checkpoint in this process to learn its channels (and keep it for an in-process run)."""
    instance = m.spec.load(device=device)
    return _Model(m.spec, instance, list(instance.channels), {**m.identity, "variant": instance.variant,
                                                             "channels": list(instance.channels)})


def _check_compatible(params: list[dict[str, Any]]) -> None:
    """All plates of one run must give the same embedding layout (pass count and names)."""
    layouts = {(len(p["plate"]["passes"]), tuple(p["plate"]["pass_names"])) for p in params}
    if len(layouts) > 1:
        detail = "; ".join(f"{p['plate']['name']}: {p['plate']['pass_names'] or 'one pass'}" for p in params)
        msg = f"plates of one run must share their passes to give one AnnData ({detail})"
        raise ConfigError(msg)


def _jobs(plates: list[Plate], params: list[dict[str, Any]], store: ResultsStore | None, digest: str,
          batch_size: int, crop_on: str, segment_if_missing: bool,
          storage_options: dict[str, Any] | None) -> list[FieldJob]:
    jobs = []
    for plate, p in zip(plates, params, strict=True):
        flatfield = _flatfield_path(plate, p.get("illumination"), store)
        spec = crop_spec(p)
        crop = {k: getattr(spec, k) for k in CROP_KEYS}
        filters = {"min_area_um2": p["min_area_um2"], "max_area_um2": p["max_area_um2"],
                   "drop_border": bool(p["drop_border"])}
        for well in plate.wells:
            for fld in plate.fields(well):
                jobs.append(FieldJob(
                    plate_path=str(plate.path), plate_name=plate.name, well=well, field=str(fld),
                    key=field_key(plate.name, well, str(fld)), label_name=p["label_name"],
                    segment_if_missing=segment_if_missing, segmentation=dict(p["segmentation"]),
                    filters=filters, crop=crop, passes=p["plate"]["passes"], batch_size=batch_size,
                    shard_path=str(store.shard_path(plate.name, well, str(fld))) if store else None,
                    digest=digest, crop_on=crop_on, storage_options=storage_options,
                    flatfield_path=flatfield))
    return jobs


FLATFIELD_DIR = "flatfield"
"""Folder of ``out`` holding the flat field of each plate (``<plate>.npy``) when illumination is corrected."""


def _flatfield_path(plate: Plate, illumination: Any, store: ResultsStore | None) -> str | None:
    """The flat field of a plate as a file workers read: estimated from the plate once, or the given file.

    An estimate is kept in ``out/flatfield/`` and reused when a run resumes, so resumed fields are
    corrected exactly as the first ones were.
    """
    if illumination is None:
        return None
    from .errors import ChannelMismatchError
    from .illumination import estimate_flatfield, load_flatfield

    folder = (store.root / FLATFIELD_DIR) if store is not None else Path(tempfile.mkdtemp(prefix="subcell-flat-"))
    target = folder / f"{plate.name}.npy"
    if illumination == "estimate":
        if target.exists():
            return str(target)
        log.info("estimating the flat field of plate %s from its fields", plate.name)
        flat = estimate_flatfield(plate)
    else:
        flat = load_flatfield(illumination)
        well = plate.wells[0]
        c, y, x = plate.image(well, plate.fields(well)[0]).shape
        if flat.shape[-2:] != (y, x):
            msg = f"flat field {illumination}: {flat.shape[-2:]} px, but plate {plate.name} fields are {(y, x)} px"
            raise ConfigError(msg)
        if flat.ndim == 3 and flat.shape[0] != c:
            msg = f"flat field {illumination}: {flat.shape[0]} channels, but plate {plate.name} has {c}"
            raise ChannelMismatchError(msg)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(target, np.asarray(flat, dtype=np.float32))
    return str(target)


# -- execution ---------------------------------------------------------------------------------------
def _run(jobs: list[FieldJob], m: _Model, client: Client | None, store: ResultsStore | None, *,
         device: str | None, retries: int, progress: bool) -> dict[str, Shard | str | None]:
    """Compute the fields that have no finished shard; returns key -> Shard (no store), None (in the
    store) or the error message of a failed field."""
    from tqdm.auto import tqdm

    results: dict[str, Shard | str | None] = {}
    todo = []
    for job in jobs:
        meta = shard_meta(job.shard_path) if job.shard_path else None
        if meta is not None and meta.get("digest") == job.digest:
            results[job.key] = None
            if store is not None and store.manifest.get("fields", {}).get(job.key, {}).get("status") != "done":
                store.record_done(job.key, n_cells=meta["n_cells"], seconds=meta.get("seconds"),
                                  dropped={k: len(v) for k, v in meta.get("dropped", {}).items()},
                                  shard=_relative(job.shard_path, store.root))
        else:
            todo.append(job)
    if store is not None:
        store.set_pending([j.key for j in todo])
        store.flush(force=True)
    if len(todo) < len(jobs):
        log.info("resuming: %d of %d fields already done", len(jobs) - len(todo), len(jobs))
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="field", disable=not progress,
               desc="embedding")
    try:
        if todo and client is None:
            _run_local(todo, m, store, results, device, retries, bar)
        elif todo:
            _run_cluster(todo, m, client, store, results, retries, bar)
    finally:
        bar.close()
        if store is not None:
            store.flush(force=True)
    return results


def _record(store: ResultsStore | None, results: dict, job: FieldJob, summary: dict[str, Any]) -> None:
    results[job.key] = summary.get("result")
    if store is not None:
        store.record_done(job.key, n_cells=summary["n_cells"], dropped=summary["dropped"],
                          seconds=summary["seconds"], shard=_relative(job.shard_path, store.root))


def _fail(store: ResultsStore | None, results: dict, job: FieldJob, exc: BaseException, attempts: int) -> None:
    message = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    log.error("field %s failed after %d attempt(s): %s", job.key, attempts, message)
    results[job.key] = message
    if store is not None:
        store.record_failed(job.key, error=message, attempts=attempts)


def _run_local(todo: list[FieldJob], m: _Model, store: ResultsStore | None, results: dict,
               device: str | None, retries: int, bar: Any) -> None:
    model = m.instance if m.instance is not None else m.spec.load(device=device)
    for job in todo:
        for attempt in range(1, retries + 2):
            try:
                summary = embed_field(prepare_field(job), job, model)
            except Exception as exc:  # noqa: BLE001 - one field's failure must not stop the others
                if attempt <= retries:
                    log.warning("field %s failed (%s), retrying", job.key, exc)
                    continue
                _fail(store, results, job, exc, attempt)
            else:
                _record(store, results, job, summary)
            break
        bar.update(1)


def _run_cluster(todo: list[FieldJob], m: _Model, client: Client, store: ResultsStore | None, results: dict,
                 retries: int, bar: Any) -> None:
    from distributed import as_completed

    from .distributed.cluster import GPU_RESOURCE
    from .distributed.plugin import register_model

    spec = m.spec if m.spec is not None else _save_instance(m.instance, store)
    plugin = register_model(client, spec)
    todo = [dataclasses.replace(job, model_plugin=plugin) for job in todo]
    threads = sum(client.nthreads().values()) or 1
    window = max(4, 2 * threads)
    pending = iter(todo)
    by_future: dict[Any, tuple[FieldJob, Any]] = {}

    def submit(job: FieldJob) -> Any:
        tag = f"{job.key}-{job.digest}".replace("/", ":")
        prep = client.submit(prepare_field, job, key=f"prepare-{tag}", retries=retries, pure=False)
        emb = client.submit(embed_field, prep, job, key=f"embed-{tag}", retries=retries, pure=False,
                            resources={GPU_RESOURCE: 1})
        by_future[emb] = (job, prep)
        return emb

    queue = as_completed([submit(job) for job in itertools.islice(pending, window)])
    for future in queue:
        job, prep = by_future.pop(future)
        if future.status == "finished":
            _record(store, results, job, future.result())
        else:
            _fail(store, results, job, future.exception(), retries + 1)
        future.release()
        prep.release()
        bar.update(1)
        nxt = next(pending, None)
        if nxt is not None:
            queue.add(submit(nxt))


def _save_instance(model: SubCell, store: ResultsStore | None) -> ModelSpec:
    """Save a model instance once as checkpoint files that every worker can load."""
    import torch

    folder = (store.root / MODEL_DIR) if store is not None else Path(tempfile.mkdtemp(prefix="subcell-model-"))
    folder.mkdir(parents=True, exist_ok=True)
    encoder = folder / "encoder.pth"
    torch.save({k: v.detach().cpu() for k, v in model.encoder_state_dict().items()}, encoder)
    classifiers = []
    for k, head in enumerate(model.classifiers):
        path = folder / f"classifier_{k}.pth"
        torch.save({n: v.detach().cpu() for n, v in head.state_dict().items()}, path)
        classifiers.append(str(path))
    options = {"num_heads": model.config.num_heads, "channels": list(model.channels),
               "precision": model.precision, "probability_mode": model.probability_mode}
    if model.variant:
        options["variant"] = model.variant
    log.info("model instance saved to %s for the workers", folder)
    return ModelSpec("checkpoint", encoder_path=str(encoder), classifier_paths=tuple(classifiers), options=options)


# -- assembly ----------------------------------------------------------------------------------------
def _assemble(jobs: list[FieldJob], shards: Mapping[str, Shard], plates: list[Plate],
              params: list[dict[str, Any]], m: _Model, platemap: Any, failed: Mapping[str, str]) -> AnnData:
    """Concatenate the fields' shards in job order into the cells AnnData."""
    import anndata as ad

    from .models.registry import CLASS_NAMES

    by_plate = {p.name: (p, prm) for p, prm in zip(plates, params, strict=True)}
    blocks, emb, probs = [], [], []
    for job in jobs:
        shard = shards.get(job.key)
        if shard is None:
            continue
        plate, prm = by_plate[job.plate_name]
        cells = shard.cells.sort_values(Obs.LABEL, kind="stable")
        order = cells.index.to_numpy()
        row, column = plate.row_column(job.well)
        py, px = prm["plate"]["pixel_size"]
        block = pd.DataFrame({
            Obs.PLATE: job.plate_name, Obs.WELL: job.well, Obs.ROW: row, Obs.COLUMN: int(column),
            Obs.FIELD: job.field,
            Obs.LABEL: cells[Obs.LABEL].to_numpy().astype(np.int64),
            Obs.AREA: cells[Obs.AREA].to_numpy(),
            Obs.CENTROID_Y: cells[Obs.CENTROID_Y].to_numpy(dtype=np.float64),
            Obs.CENTROID_X: cells[Obs.CENTROID_X].to_numpy(dtype=np.float64),
            "_x_um": cells[Obs.CENTROID_X].to_numpy(dtype=np.float64) * px,
            "_y_um": cells[Obs.CENTROID_Y].to_numpy(dtype=np.float64) * py,
        })
        blocks.append(block)
        emb.append(shard.embedding[order])
        if shard.probabilities is not None:
            probs.append(shard.probabilities[order])
    first = params[0]["plate"]
    width = _embedding_width(m, first, emb)
    obs = pd.concat(blocks, ignore_index=True) if blocks else _empty_obs()
    X = np.concatenate(emb).astype(np.float32, copy=False) if emb else np.zeros((0, width), np.float32)
    obs.index = pd.Index([f"{p}_{w}_{f}_{lab}" for p, w, f, lab in
                          zip(obs[Obs.PLATE], obs[Obs.WELL], obs[Obs.FIELD], obs[Obs.LABEL], strict=True)])
    spatial = obs[["_x_um", "_y_um"]].to_numpy(dtype=np.float64)
    obs = obs.drop(columns=["_x_um", "_y_um"])
    for col in Obs.CATEGORICAL:
        values = obs[col]
        obs[col] = pd.Categorical(values, categories=_ordered_unique(values))
    if platemap is not None:
        obs = _join_platemap(obs, platemap, plates)
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=_var_names(X.shape[1], first["pass_names"])))
    adata.strings_to_categoricals()  # as writing would: the returned object equals the one read back
    adata.obsm[Keys.SPATIAL] = spatial
    if probs and len(probs) == len(emb):
        adata.obsm[Keys.LOCALIZATION] = np.concatenate(probs).astype(np.float32, copy=False)
        adata.uns[Keys.LOCALIZATION_CLASSES] = list(CLASS_NAMES)
    adata.uns[Keys.PROVENANCE] = _provenance(plates, params, m, failed, X.shape[1])
    return adata


def _embedding_width(m: _Model, first: Mapping[str, Any], emb: list[np.ndarray]) -> int:
    if emb:
        return int(emb[0].shape[1])
    dim = m.instance.embedding_dim if m.instance is not None else 2 * 768
    return dim * len(first["passes"])


def _empty_obs() -> pd.DataFrame:
    return pd.DataFrame({Obs.PLATE: [], Obs.WELL: [], Obs.ROW: [], Obs.COLUMN: pd.Series([], dtype=np.int64),
                         Obs.FIELD: [], Obs.LABEL: pd.Series([], dtype=np.int64),
                         Obs.AREA: pd.Series([], dtype=np.int64), Obs.CENTROID_Y: pd.Series([], dtype=float),
                         Obs.CENTROID_X: pd.Series([], dtype=float), "_x_um": pd.Series([], dtype=float),
                         "_y_um": pd.Series([], dtype=float)})


def _ordered_unique(values: pd.Series) -> list[Any]:
    seen: dict[Any, None] = {}
    for v in values:
        seen.setdefault(v, None)
    try:
        return sorted(seen)
    except TypeError:  # pragma: no cover - mixed types
        return list(seen)


def _var_names(width: int, pass_names: Sequence[str]) -> list[str]:
    """``subcell_0000`` ...; with passes ``subcell_<pass>_0000`` ..., pass after pass."""
    if not pass_names:
        return [f"{VAR_PREFIX}{i:04d}" for i in range(width)]
    per = width // len(pass_names)
    return [f"{VAR_PREFIX}{name}_{i:04d}" for name in pass_names for i in range(per)]


def _join_platemap(obs: pd.DataFrame, platemap: Any, plates: list[Plate]) -> pd.DataFrame:
    from .io.platemap import join_platemap, read_platemap

    joined = join_platemap(obs, read_platemap(platemap), plates=plates)
    joined.index = obs.index
    return joined


def _provenance(plates: list[Plate], params: list[dict[str, Any]], m: _Model, failed: Mapping[str, str],
                width: int) -> dict[str, Any]:
    first = params[0]
    identity = m.identity
    instance = m.instance
    variant = identity.get("variant") or (instance.variant if instance is not None else None) or (
        m.spec.variant if m.spec is not None else None)
    sha = identity.get("checkpoint_sha256") or (instance.checkpoint_sha256 if instance is not None else None)
    mapping: dict[str, Any] = {}
    for p in params:
        pl = p["plate"]
        if pl["pass_names"]:
            mapping[pl["name"]] = {name: m_ for name, m_ in zip(pl["pass_names"], pl["channel_mapping"], strict=True)}
        else:
            mapping[pl["name"]] = pl["channel_mapping"][0]
    prov = {
        "version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "preset": first["preset"],
        "variant": variant or "",
        "checkpoint_sha256": sha or "",
        "model": json.dumps(identity, sort_keys=True, default=str),
        "model_channels": list(first["plate"]["model_channels"]),
        "embedding_dim": int(width // max(1, len(first["plate"]["passes"]))),
        "passes": list(first["plate"]["pass_names"]),
        "channel_mapping": mapping,
        "crop": {k: v for k, v in first["crop"].items() if v is not None},
        "normalization": first["crop"]["normalization"],
        "mask_mode": first["crop"]["mask_mode"],
        "pixel_size": {p["plate"]["name"]: list(p["plate"]["pixel_size"]) for p in params},
        "crop_window_px": {p["plate"]["name"]: list(p["plate"]["crop_window_px"]) for p in params},
        "plates": {p.name: str(p.path) for p in plates},
        "label_name": first["label_name"],
        "localization_layout": "pass-major: column p * 31 + k is class k of pass p",
        "failed_fields": sorted(failed),
        "parameters": json.dumps(_jsonable({k: v for k, v in first.items() if k != "plate"}), sort_keys=True),
    }
    return prov


def _write_cells(adata: AnnData, root: Path, fmt: str) -> Path:
    """Write the cells AnnData next to the shards, replacing an older one only once the new one is whole."""
    path = root / (Files.CELLS_ZARR if fmt == "zarr" else Files.CELLS_H5AD)
    tmp = root / f".{path.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    if fmt == "zarr":
        import anndata as ad

        with ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=False):
            adata.write_zarr(tmp)
    else:
        adata.write_h5ad(tmp)
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    os.replace(tmp, path)
    log.info("cells written to %s (%d cells x %d)", path, adata.n_obs, adata.n_vars)
    return path


def _relative(path: str | None, root: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


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


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
