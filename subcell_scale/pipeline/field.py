"""The work of a run on its fields: segment; prepare (CPU: read, labels, filter, crop), embed (GPU), write (shards).

A :class:`FieldJob` is a field and a reference to the :class:`JobPlan` its plate's fields share (paths
and frozen parameters), so a task graph grows with fields, never with pixels or weights. A field's
labels come from the plate, or from the run directory when the plate cannot take labels, or are
segmented (:func:`field_labels`); :func:`segment_group` is the segmentation stage alone. Fields travel
in small groups (:data:`FieldGroup`) through three stages:
:func:`prepare_group` runs on any worker thread; :func:`embed_group` holds the worker's ``GPU``
resource, takes the model from the worker plugin and embeds the group's crops together, so small
fields still fill whole batches; :func:`write_group` writes the shards after the GPU is released. A
field that fails travels on as a :class:`Failure` and fails alone. Without Dask, the same
functions are called in turn with a model passed explicitly (:mod:`subcell_scale.distributed.scheduler`
does either).

Crops are cut either in the prepare task on the CPU (``crop_on="cpu"``, numpy; what runs on machines
without a GPU) or in the embed task on the model's device (``crop_on="device"``, torch): then the
prepare task hands over the raw field and its filtered labels, which are far smaller than float crops
(a Cell Painting field of 5 x 1080 x 1080 uint16 is 11 MB; its 200 cells x 3 passes of 3 x 478 x 478
float32 crops would be 1.6 GB). ``"auto"`` picks ``"device"`` when the worker has CUDA.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._constants import Keys, Obs, Status
from ..distributed.scheduler import Failure
from ..errors import NonFinitePixelsError, PlateFormatError, PlateNotFoundError, resource_error
from ..rundir import FieldId, RunPath
from ..store import Shard, encode_shard

if TYPE_CHECKING:  # pragma: no cover
    from ..cells import CropSpec
    from ..models import SubCell
    from ..modelview import ViewPlan
    from ..params import CellFilter
    from ..segment import SegmentParams

log = logging.getLogger(__name__)

_CELL_COLUMNS = [Obs.LABEL, Obs.AREA, Obs.CENTROID_Y, Obs.CENTROID_X]


@dataclass(frozen=True)
class JobPlan:
    """What every field of one plate shares in a run: one object per plate, which each of its jobs references.

    Small and picklable (paths and frozen parameters), so a task graph grows with fields, never with
    pixels or weights.

    Attributes
    ----------
    plate_path, plate_options
        Where the plate is (a path or URL every worker can open) and the :func:`~subcell_scale.io.open_plate`
        options it was opened with (``storage_options``, ``z``, ``t``, ``missing_chunks``).
    label_name, segment_if_missing, overwrite, segmentation
        Which label image holds the cells; whether to segment a field that lacks it (and write the
        labels), or every field again; how (:func:`subcell_scale.segment.segment_field`).
    labels
        Where segmentation writes labels: None for the plate itself, else the run directory's
        ``labels/<plate>/`` folder (a plate that cannot be written; see :class:`RunLabels`).
    cells
        Which cells are kept (:func:`subcell_scale.segment.filter_cells`).
    crop
        How each cell becomes a model input.
    passes
        Plate channel indices in model order, one tuple per pass.
    batch_size
        Crops per forward pass (rounded down to whole cells, so a cell's passes share a batch).
    shards
        The run directory the shards go to (a folder or a URL); None returns them to the caller.
    digest
        Parameter digest stored in each shard (resume compares it).
    crop_on
        ``"cpu"``, ``"device"`` or ``"auto"`` (see the module docstring).
    model_plugin
        Name of the worker plugin holding the model (set when the jobs run on a cluster).
    flatfield_path
        ``.npy`` flat field (c, y, x) every field is divided by before labels and crops (in the run
        directory); None: none.
    plate_upper
        The plate's upper intensity bound per channel (``crop.plate_upper_percentile`` of its raw
        pixels, computed when the run was planned); None when the crop spec uses none.
    nonfinite
        What NaN or infinite pixels become: ``"fail"`` the field, or ``"zero"`` (see :func:`read_image`).
    cellprofiler
        cp_measure feature groups measured on each kept cell in the CPU stage (empty: none).
    model_views
        Users' models embedded in the CPU stage, each with the plate channel indices it reads
        (:mod:`subcell_scale.modelview`).
    """

    plate_path: str
    plate_options: dict[str, Any]
    label_name: str
    segmentation: SegmentParams
    cells: CellFilter
    crop: CropSpec
    passes: tuple[tuple[int, ...], ...]
    batch_size: int = 64
    segment_if_missing: bool = True
    overwrite: bool = False
    labels: RunPath | None = None
    shards: RunPath | None = None
    digest: str = ""
    crop_on: str = "auto"
    model_plugin: str | None = None
    flatfield_path: RunPath | None = None
    plate_upper: tuple[float, ...] | None = None
    nonfinite: str = "fail"
    cellprofiler: tuple[str, ...] = ()
    model_views: tuple[tuple[ViewPlan, tuple[int, ...]], ...] = ()


@dataclass(frozen=True)
class FieldJob:
    """One field of a run: which field, and the plan its plate's fields share."""

    fid: FieldId
    plan: JobPlan

    @property
    def shard_path(self) -> RunPath | None:
        """Where the field's shard is written (None: returned to the caller)."""
        return None if self.plan.shards is None else self.plan.shards / self.fid.shard

    @property
    def labels_path(self) -> RunPath | None:
        """The run directory's file of the field's labels, for a plate that cannot take them."""
        if self.plan.labels is None:
            return None
        return self.plan.labels / f"{self.fid.well}_{self.fid.field}_{self.plan.label_name}.npz"

    @property
    def where(self) -> str:
        """The field, for messages: plate name and path, well, field."""
        return f"plate {self.fid.plate} ({self.plan.plate_path}) well {self.fid.well} field {self.fid.field}"


@dataclass
class PreparedField:
    """Output of :func:`prepare_field`: crops (CPU mode) or the raw field and kept labels (device mode),
    and the views measured on the CPU (name -> one row per kept label)."""

    cells: pd.DataFrame | None
    dropped: dict[str, list[int]]
    seconds: float
    crops: np.ndarray | None = None
    image: np.ndarray | None = None
    labels: np.ndarray | None = None
    pixel_size: tuple[float, float] = (1.0, 1.0)
    segmented: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    nonfinite: np.ndarray | None = None
    views: dict[str, pd.DataFrame] = field(default_factory=dict)


@functools.lru_cache(maxsize=32)
def _open_plate_cached(path: str, options: str):
    """One metadata read per plate per worker process (the ``Plate`` object is lazy)."""
    import json

    from ..io import open_plate

    return open_plate(path, **json.loads(options))


def open_job_plate(job: FieldJob):
    """The :class:`~subcell_scale.io.Plate` of ``job``, opened once per process."""
    import json

    return _open_plate_cached(job.plan.plate_path, json.dumps(job.plan.plate_options, sort_keys=True))


def _resolve_crop_on(crop_on: str) -> str:
    if crop_on != "auto":
        return crop_on
    from .._device import resolve_device

    return "device" if resolve_device().startswith("cuda") else "cpu"


def read_image(plate: Any, job: FieldJob, raw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """A field's pixels as every stage sees them: flat-field corrected when the run corrects, and finite
    (``raw``: the field as stored, when already read).

    NaN or infinite pixels (read, or made by the correction) would make every cell's embedding NaN:
    they fail the field (``nonfinite="fail"``) or are read as 0 (``"zero"``). Returns the pixels and
    the (y, x) mask of pixels replaced in any channel (None when none was).

    Raises
    ------
    NonFinitePixelsError
        ``nonfinite="fail"`` and the field holds such pixels; the message counts them per channel.
    """
    image, bad = _finite(plate.read_field(job.fid.well, job.fid.field) if raw is None else raw, plate, job, "")
    if job.plan.flatfield_path is not None:
        from ..illumination import apply_flatfield

        image = apply_flatfield(image, _flatfield(job.plan.flatfield_path),
                                rounded=not job.plan.crop.scales_intensity)
        image, made = _finite(image, plate, job, " after flat-field correction")
        bad = made if bad is None else (bad if made is None else bad | made)
    return image, bad


def _finite(image: np.ndarray, plate: Any, job: FieldJob, when: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``image`` with its non-finite pixels handled by the run's rule, and the mask of those replaced."""
    if not np.issubdtype(np.asarray(image).dtype, np.floating):
        return image, None  # integer pixels are always finite
    bad = ~np.isfinite(image)
    counts = bad.reshape(bad.shape[0], -1).sum(axis=1)
    if not counts.any():
        return image, None
    names = list(getattr(plate, "channel_names", None) or range(len(counts)))
    where = ", ".join(f"{n} in {names[c]}" for c, n in enumerate(counts.tolist()) if n)
    if job.plan.nonfinite != "zero":
        msg = (f"{job.where}: {int(counts.sum())} pixel(s) are NaN or infinite{when} ({where}); repair the "
               "field, or read them as 0 and flag the cells with --set nonfinite=zero")
        raise NonFinitePixelsError(msg)
    log.warning("%s: %d pixel(s) NaN or infinite%s (%s) read as 0; the cells holding them are counted in "
                "obs[%r]", job.where, int(counts.sum()), when, where, Obs.NONFINITE)
    return np.where(bad, np.zeros((), image.dtype), image), bad.any(axis=0)


def _flag_cells(table: pd.DataFrame, labels: np.ndarray, bad: np.ndarray | None, flagged: bool) -> pd.DataFrame:
    """The cell table with each cell's count of replaced pixels (``nonfinite="zero"`` runs only)."""
    if not flagged:
        return table
    table = table.copy()
    counts = np.zeros(int(labels.max(initial=0)) + 1, np.int64)
    if bad is not None:
        counts += np.bincount(np.asarray(labels)[bad].ravel(), minlength=counts.size)[:counts.size]
    table[Obs.NONFINITE] = counts[table[Obs.LABEL].to_numpy(dtype=np.int64)]
    return table


def prepare_field(job: FieldJob) -> PreparedField:
    """CPU part of a field: read pixels, correct illumination, read (or make) labels, drop poor cells,
    crop (CPU mode).

    When the crop spec scales intensities, the illumination correction is left unrounded (float32), as
    the JUMP crop generator's percentiles saw it; cells the crop spec's edge rule removes are recorded
    under ``"edge"`` (CPU mode here, device mode in :func:`embed_group`).

    Raises
    ------
    PlateFormatError
        Unreadable pixels; the message names the plate, well and field.
    PlateNotFoundError
        No ``label_name`` labels with ``segment_if_missing=False`` (not retried: it would fail again).
    """
    from ..cells import extract_cells
    from ..modelview import embed_view
    from ..segment import filter_cells

    start = time.perf_counter()
    plan = job.plan
    plate = open_job_plate(job)
    raw = np.asarray(plate.read_field(job.fid.well, job.fid.field))
    image, bad = read_image(plate, job, raw)
    labels, segmented = field_labels(plate, job, image)
    kept, dropped = filter_cells(labels, plate.pixel_size, **plan.cells.kwargs())
    pixel_size = tuple(float(v) for v in plate.pixel_size)
    prepared = PreparedField(cells=None, dropped={k: list(v) for k, v in dropped.items()}, seconds=0.0,
                             pixel_size=pixel_size, segmented=segmented,
                             meta={"fingerprint": job_fingerprint(plate, job), "labels": labels_place(plate, job)},
                             nonfinite=bad)
    if plan.cellprofiler:
        prepared.views[Keys.CELLPROFILER] = measure_field(raw, kept, plate.channel_names, job)
    for view, channels in plan.model_views:
        prepared.views[view.name] = embed_view(view, image, kept, pixel_size, channels)
    if _resolve_crop_on(plan.crop_on) == "device":
        prepared.image, prepared.labels = image, kept
    else:
        crops, table = extract_cells(image, kept, pixel_size, plan.crop, channels=plan.passes,
                                     plate_upper=plan.plate_upper, dropped=prepared.dropped)
        prepared.crops = crops
        prepared.cells = _flag_cells(table[_CELL_COLUMNS].reset_index(drop=True), kept, bad, plan.nonfinite == "zero")
    prepared.seconds = time.perf_counter() - start
    return prepared


def measure_field(raw: np.ndarray, kept: np.ndarray, channels: Any, job: FieldJob) -> pd.DataFrame:
    """CellProfiler measurements of a field's kept cells, from its stored pixels (over their dtype's
    maximum, divided by the run's flat field when it corrects), one row per label."""
    from ..cellprofiler import cellprofiler_pixels, measure_cells, scale_of

    flat = None if job.plan.flatfield_path is None else _flatfield(job.plan.flatfield_path)
    return measure_cells(cellprofiler_pixels(raw, flat), kept, [str(c) for c in channels], job.plan.cellprofiler,
                         scale_max=scale_of(raw.dtype))


@functools.lru_cache(maxsize=4)
def _flatfield(path: RunPath) -> np.ndarray:
    """A plate's flat field, read once per worker process (in its stored precision)."""
    from ..illumination import load_flatfield

    with path.local_copy() as local:
        return load_flatfield(local, dtype=None)


# -- labels -------------------------------------------------------------------------------------------
def read_field_labels(plate: Any, job: FieldJob) -> np.ndarray | None:
    """A field's cell labels: the plate's label image, else the run directory's copy (for a plate that
    cannot take labels), else None."""
    well, fld, name = job.fid.well, job.fid.field, job.plan.label_name
    if name in plate.label_names(well, fld):
        try:
            plate.check_labels(well, fld, name)
            return np.asarray(plate.read_labels(well, fld, name))
        except (PlateFormatError, PlateNotFoundError) as exc:  # listed, but not whole on disk
            if not (job.plan.segment_if_missing or job.plan.overwrite):
                msg = (f"{job.where}: label image {name!r} is damaged ({exc}); `subcell-scale segment` on the "
                       "plate writes it again")
                raise PlateFormatError(msg) from exc
            log.warning("%s: label image %r is damaged (%s); segmenting the field again", job.where, name, exc)
            plate.forget_labels(well, fld, name)
            return None
    path = job.labels_path
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        return np.asarray(stored["labels"])


def field_labels(plate: Any, job: FieldJob, image: np.ndarray) -> tuple[np.ndarray, bool]:
    """The field's labels, segmented from ``image`` (and stored) when it has none or the run segments again.

    Returns the labels and whether they were segmented now.

    Raises
    ------
    PlateNotFoundError
        No labels and the run does not segment (not retried: it would fail again).
    """
    plan = job.plan
    labels = None if plan.overwrite else read_field_labels(plate, job)
    if labels is not None:
        return labels, False
    if not (plan.segment_if_missing or plan.overwrite):
        found = plate.label_names(job.fid.well, job.fid.field)
        msg = (f"{job.where}: no label image {plan.label_name!r} (found {found}); segment the plate first "
               "(`subcell-scale segment`) or allow segmentation")
        raise PlateNotFoundError(msg)
    return _segment(plate, job, image), True


def _segment(plate: Any, job: FieldJob, image: np.ndarray) -> np.ndarray:
    from ..segment import segment_field

    labels = segment_field(image, plate.channel_names, plate.pixel_size, **job.plan.segmentation.kwargs())
    store_field_labels(plate, job, labels)
    return labels


def store_field_labels(plate: Any, job: FieldJob, labels: np.ndarray) -> None:
    """Write a field's labels into the plate (NGFF labels), or into the run directory when the plate cannot
    take them."""
    name = job.plan.label_name
    path = job.labels_path
    if path is None:
        from ..io import write_labels

        write_labels(plate, job.fid.well, job.fid.field, name, labels)
        log.info("%s: segmented %d cells, written as labels/%s", job.where, int(labels.max()), name)
        return
    buffer = io.BytesIO()
    np.savez_compressed(buffer, labels=np.ascontiguousarray(labels, dtype=np.int32))
    path.write_bytes(buffer.getvalue())
    log.info("%s: segmented %d cells, written to %s", job.where, int(labels.max()), path)


def labels_place(plate: Any, job: FieldJob) -> str:
    """Where the field's labels are: ``"plate"`` (its label image) or ``"run"`` (the run directory)."""
    in_plate = job.labels_path is None or job.plan.label_name in plate.label_names(job.fid.well, job.fid.field)
    return "plate" if in_plate else "run"


def job_fingerprint(plate: Any, job: FieldJob, fingerprint: str | None = None,
                    run_labels: dict[str, str] | None = None) -> str:
    """The fingerprint of the field's image and label files (:func:`subcell_scale.io.field_fingerprint`),
    with the run directory's label file when the labels are kept there.

    ``fingerprint`` (the field's, from :func:`~subcell_scale.io.fingerprint.plate_fingerprints`) and
    ``run_labels`` (name -> stamp of the plate's files in the run directory) save a listing per field
    when a whole plate is checked.
    """
    from ..io import field_fingerprint

    if fingerprint is None:
        fingerprint = field_fingerprint(plate, job.fid.well, job.fid.field, labels=job.plan.label_name)
    path = job.labels_path
    if path is None or job.plan.label_name in plate.label_names(job.fid.well, job.fid.field):
        return fingerprint
    if run_labels is None:
        try:
            stamp = label_stamp(path.fs.info(path.url if path.is_local else path.fs._strip_protocol(path.url)))
        except FileNotFoundError:
            stamp = label_stamp({})
    else:
        stamp = run_labels.get(path.name, label_stamp({}))
    return hashlib.sha256(f"{fingerprint}\n{path.name}\t{stamp}".encode()).hexdigest()


def label_stamp(info: dict[str, Any]) -> str:
    """Size and modification stamp of a label file in the run directory, from its listing entry."""
    return f"{info.get('size')}:{info.get('mtime') or info.get('ETag') or info.get('LastModified')}"


# -- stages of a batch of fields ----------------------------------------------------------------------
FieldGroup = tuple[FieldJob, ...]
"""Fields embedded together: their crops fill the same forward batches (HPA fields hold 10-30 cells)."""


def segment_group(group: FieldGroup) -> list[dict[str, Any] | Failure]:
    """The segmentation stage of a batch: each field's labels made (and stored) unless it has them.

    Returns one record per field (``status`` ``"done"`` or ``"skipped"``, ``n_cells``, ``labels``:
    ``"plate"`` or ``"run"``, ``seconds``), or its :class:`Failure`.
    """
    from ..segment import label_areas

    out: list[dict[str, Any] | Failure] = []
    for job in group:
        start = time.perf_counter()
        try:
            plate = open_job_plate(job)
            labels = None if job.plan.overwrite else read_field_labels(plate, job)
            status = Status.SKIPPED if labels is not None else Status.DONE
            if labels is None:
                labels = _segment(plate, job, read_image(plate, job)[0])
        except Exception as exc:  # noqa: BLE001 - one field's failure must not stop its group
            out.append(Failure(exc))
            continue
        out.append({"status": status, "n_cells": int(label_areas(labels)[0].size),
                    "labels": labels_place(plate, job),
                    "seconds": round(time.perf_counter() - start, 3)})
    return out


def prepare_group(group: FieldGroup) -> tuple[list[PreparedField | Failure], FieldGroup]:
    """CPU stage of a group: :func:`prepare_field` for each field, a failure kept as a :class:`Failure`;
    handed on with the group, so the later stages need nothing else."""
    out: list[PreparedField | Failure] = []
    for job in group:
        try:
            out.append(prepare_field(job))
        except Exception as exc:  # noqa: BLE001 - one field's failure must not stop its group
            out.append(Failure(exc))
    return out, group


def embed_group(previous: tuple[list[PreparedField | Failure], FieldGroup],
                model: SubCell | None = None) -> tuple[list[Shard | Failure], FieldGroup]:
    """GPU stage of a group: crops cut on the device when asked, then every field's crops embedded
    together in full batches, and split back into one :class:`Shard` per field.

    The GPU is held only for this: reading and cropping happen before, shard writing after. A cell's
    embedding does not depend on the batch it shares (see :meth:`SubCell.embed`).

    Parameters
    ----------
    model
        The model to use; None takes the worker plugin's (inside a Dask task).
    """
    prepared, group = previous
    start = time.perf_counter()
    if model is None:
        from ..distributed.plugin import worker_model

        model = worker_model(group[0].plan.model_plugin)
    out: list[Shard | Failure | None] = [None] * len(group)
    parts, owners = [], []
    arriving = _send_fields(prepared, model.device)
    for i, (job, prep) in enumerate(zip(group, prepared, strict=True)):
        if isinstance(prep, Failure):
            out[i] = prep
            continue
        try:
            crops, cells, dropped = _field_crops(prep, job, model, arriving.get(i))
        except Exception as exc:  # noqa: BLE001 - a field that cannot be cropped fails alone
            out[i] = Failure(exc)
            continue
        parts.append((crops, cells, dropped))
        owners.append(i)
    if parts:
        embedding, probabilities = embed_crops(model, _stack([c for c, _, _ in parts]), group[0].plan.batch_size)
        seconds = time.perf_counter() - start
        total = max(1, embedding.shape[0])
        row = 0
        for i, (crops, cells, dropped) in zip(owners, parts, strict=True):
            job, prep, n = group[i], prepared[i], int(crops.shape[0])
            share = seconds * n / total
            emb, prob, cells = _finite_rows(embedding[row:row + n],
                                            None if probabilities is None else probabilities[row:row + n],
                                            cells, dropped, job)
            labels = cells[Obs.LABEL].to_numpy()
            views = {name: frame.loc[labels].reset_index(drop=True) for name, frame in prep.views.items()}
            out[i] = Shard(emb, prob, cells, dropped,
                           {"plate": job.fid.plate, "well": job.fid.well, "field": job.fid.field, "digest": job.plan.digest,
                            "seconds": round(prep.seconds + share, 3), "segmented": prep.segmented, **prep.meta},
                           views)
            row += n
    return out, group  # type: ignore[return-value]


def _finite_rows(embedding: np.ndarray, probabilities: np.ndarray | None, cells: pd.DataFrame,
                 dropped: dict[str, list[int]], job: FieldJob) -> tuple[np.ndarray, np.ndarray | None, pd.DataFrame]:
    """A field's rows without the cells whose embedding or probabilities are not finite (never put in ``X``);
    those are recorded as dropped for ``"nonfinite_embedding"``."""
    ok = np.isfinite(embedding).all(axis=1)
    if probabilities is not None:
        ok &= np.isfinite(probabilities).all(axis=1)
    if ok.all():
        return embedding, probabilities, cells
    lost = cells[Obs.LABEL].to_numpy()[~ok]
    dropped.setdefault("nonfinite_embedding", []).extend(int(v) for v in lost)
    log.warning("%s: %d cell(s) with NaN or infinite embeddings left out (labels %s)", job.where, lost.size,
                lost[:10].tolist())
    return (embedding[ok], None if probabilities is None else probabilities[ok],
            cells[ok].reset_index(drop=True))


def write_group(previous: tuple[list[Shard | Failure], FieldGroup]) -> list[dict[str, Any] | Failure]:
    """Last stage of a group, off the GPU: each field's shard written (or returned without a run directory).

    Returns one summary per field: ``n_cells``, ``dropped`` (counts per reason), ``seconds``, ``shard``
    (path or None), ``facts`` for its record (parameter digest, fingerprint, shard size and sha256)
    and, when ``job.shard_path`` is None, ``result``: the :class:`Shard`; or the field's :class:`Failure`.
    """
    shards, group = previous
    out: list[dict[str, Any] | Failure] = []
    for job, shard in zip(group, shards, strict=True):
        if isinstance(shard, Failure):
            out.append(shard)
            continue
        summary: dict[str, Any] = {"n_cells": shard.n_cells, "dropped": {k: len(v) for k, v in shard.dropped.items()},
                                   "seconds": shard.meta["seconds"], "shard": job.shard_path,
                                   "facts": {k: shard.meta.get(k) for k in ("digest", "fingerprint", "segmented", "labels")}}
        try:
            if job.shard_path is not None:
                data = encode_shard(shard)
                job.shard_path.write_bytes(data)
                summary["facts"].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
            else:
                summary["result"] = shard
        except Exception as exc:  # noqa: BLE001 - a shard that cannot be written fails its field alone
            out.append(Failure(resource_error(exc, job.shard_path, "writing the field's shard") or exc))
            continue
        out.append(summary)
    return out


def _send_fields(prepared: list[PreparedField | Failure], device: Any) -> dict[int, Any]:
    """Start copying the group's raw fields to the GPU on a side stream, each from pinned memory.

    Returns, by position in the group, the field on the device and the event its copy records: the
    copies run while the fields before them are cropped and embedded, and each crop waits for its own
    field only. Nothing to do off CUDA (the crops then read the host arrays).
    """
    if getattr(device, "type", "cpu") != "cuda":
        return {}
    import torch

    stream = torch.cuda.Stream(device=device)
    sent = {}
    with torch.cuda.stream(stream):
        for i, prep in enumerate(prepared):
            if isinstance(prep, Failure) or prep.crops is not None or prep.image is None:
                continue
            host = np.ascontiguousarray(prep.image)
            pinned = torch.from_numpy(host if host.flags.writeable else host.copy()).pin_memory()
            field = pinned.to(device, non_blocking=True).to(torch.float32)  # exact for 16-bit pixels
            sent[i] = (field, stream.record_event())
    return sent


def _field_crops(prep: PreparedField, job: FieldJob, model: SubCell, arriving: Any = None
                 ) -> tuple[Any, pd.DataFrame, dict]:
    """A field's crops (numpy from the CPU stage, or cut here on the model's device), table and drops.

    ``arriving`` is the field already on its way to the device (:func:`_send_fields`).
    """
    dropped = {k: list(v) for k, v in prep.dropped.items()}
    if prep.crops is not None:
        return prep.crops, prep.cells, dropped
    from ..cells import extract_cells_torch

    image = prep.image
    if arriving is not None:
        import torch

        image, copied = arriving
        current = torch.cuda.current_stream(image.device)
        current.wait_event(copied)
        image.record_stream(current)  # the copy stream's memory is used here: keep it until done
    plan = job.plan
    tensor, table = extract_cells_torch(image, prep.labels, prep.pixel_size, plan.crop, channels=plan.passes,
                                        device=model.device, plate_upper=plan.plate_upper, dropped=dropped)
    table = _flag_cells(table[_CELL_COLUMNS].reset_index(drop=True), prep.labels, prep.nonfinite,
                        plan.nonfinite == "zero")
    return tensor, table, dropped


def _stack(parts: list[Any]) -> Any:
    """Concatenate the fields' crops along cells (numpy arrays, or tensors on one device)."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch

    return torch.cat(parts)


def embed_crops(model: SubCell, crops: Any, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Embed (N, P, C, S, S) crops (numpy, or a torch tensor on the model's device).

    Passes of one cell always share a forward batch. A side that is not a multiple of the patch size
    (JUMP's 478 px) is cut to the largest multiple (464): the reference ViT's patch convolution never
    reads those last pixels either, so this is the same computation.

    Returns
    -------
    embedding
        float32 (N, P * D), passes concatenated in order.
    probabilities
        float32 (N, P * 31), pass-major (pass 0's 31 classes, then pass 1's ...), or None without
        classifiers.
    """
    n, n_passes = int(crops.shape[0]), int(crops.shape[1])
    if n == 0:
        width = n_passes * model.config.num_classes
        return (np.zeros((0, n_passes * model.embedding_dim), np.float32),
                np.zeros((0, width), np.float32) if model.n_classifiers else None)
    per_batch = max(1, int(batch_size) // n_passes) * n_passes
    out = model.embed(crops, batch_size=per_batch, pool_attention=False, trim=True)
    embedding = np.asarray(out["embedding"], dtype=np.float32).reshape(n, -1)
    probabilities = out["probabilities"]
    if probabilities is not None:
        probabilities = np.asarray(probabilities, dtype=np.float32).reshape(n, -1)
    return embedding, probabilities
