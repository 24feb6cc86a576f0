"""Plan a run: open the plates, and turn each field into a :class:`~subcell_scale.pipeline.field.FieldJob`.

Planning reads metadata only (and, with illumination correction, estimates one flat field per plate;
with a plate percentile, makes one pass over the plate's pixels), so every input problem surfaces here,
before a cluster does any work.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Container, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._constants import Files
from ..errors import ChannelMismatchError, ConfigError
from ..rundir import FieldId, RunPath
from .field import FieldJob, JobPlan

if TYPE_CHECKING:  # pragma: no cover
    from ..cells import CropSpec
    from ..io import Plate
    from ..modelview import ViewPlan
    from ..params import PlatePlan, RunParams

log = logging.getLogger(__name__)


def open_plates(plate: Any, storage_options: dict[str, Any] | None = None, *, missing_chunks: str = "raise"
                ) -> list[Plate]:
    """The plates of a run, opened (metadata only); plate names must differ within a run.

    Paths are opened with ``storage_options`` and ``missing_chunks`` (see
    :func:`~subcell_scale.io.open_plate`); plates opened already keep their own options.
    """
    from ..io import open_plate

    items = list(plate) if isinstance(plate, list | tuple) else [plate]
    if not items:
        msg = "no plate given"
        raise ConfigError(msg)
    plates = [open_plate(p, storage_options=storage_options, missing_chunks=missing_chunks)
              if isinstance(p, str | os.PathLike) else p for p in items]
    names = [p.name for p in plates]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        msg = f"several plates are named {duplicated}; plate names must differ within a run"
        raise ConfigError(msg)
    return plates


def plan_jobs(plates: Sequence[Plate], plans: Sequence[PlatePlan | None], params: RunParams, *, root: RunPath | None,
              scratch: Path, digest: str = "", batch_size: int = 64, crop_on: str = "auto",
              segment_if_missing: bool = True, overwrite: bool = False, labels_in_run: Container[str] = (),
              embedding: bool = True, views: Sequence[ViewPlan] = ()) -> list[FieldJob]:
    """One job per field of every plate, in plate, well, field order (the order of the cells AnnData).

    Every field of a plate references one :class:`~.field.JobPlan`. Files the workers read (flat
    fields) and the plate statistics a resumed run reuses go into the run directory ``root`` (a folder
    or a URL: workers read them from there), or into ``scratch`` without one. Plates named in
    ``labels_in_run`` keep the labels segmentation makes in ``root/labels/<plate>/``. ``embedding``
    False plans segmentation only (no plate intensity statistics; a plan may be None: no model channels).
    ``views`` are users' models embedded beside SubCell, each with the plate's channels it reads.
    """
    jobs = []
    files = root if root is not None else RunPath(scratch)
    for plate, plan in zip(plates, plans, strict=True):
        shared = JobPlan(
            plate_path=str(plate.path), plate_options=plate.open_options, label_name=params.label_name,
            segmentation=params.segmentation, cells=params.cells, crop=params.crop,
            passes=plan.passes if plan is not None else (),
            batch_size=batch_size, segment_if_missing=segment_if_missing, overwrite=overwrite,
            labels=files / Files.LABELS / plate.name if plate.name in labels_in_run else None, shards=root,
            digest=digest, crop_on=crop_on, flatfield_path=flatfield_file(plate, params.illumination,
                                                                          files / Files.FLATFIELD),
            plate_upper=plate_upper_bounds(plate, params.crop, files / Files.INTENSITY) if embedding else None,
            nonfinite=params.nonfinite, cellprofiler=params.cellprofiler if embedding else (),
            model_views=tuple((v, v.channel_indices(plate.channel_names)) for v in views) if embedding else ())
        jobs.extend(FieldJob(FieldId(plate.name, well, str(fld)), shared)
                    for well in plate.wells for fld in plate.fields(well))
    return jobs


def flatfield_file(plate: Plate, illumination: str | Sequence[str] | Mapping[str, str] | None,
                   folder: str | os.PathLike | RunPath) -> RunPath | None:
    """The flat field of a plate as a file in ``folder`` that workers read: estimated from the plate
    once, or the given file(s) checked against the plate.

    ``illumination`` is None, ``"estimate"``, one ``.npy`` (c, y, x) or 2-D path, a list of 2-D
    ``.npy`` paths in plate channel order, a mapping of plate channel name to path (other channels
    uncorrected), or a path template with ``{plate}`` and ``{channel}`` fields, one file per channel:
    the Broad's illumination functions are ``"{plate}_Illum{channel}.npy"``. Given files keep their
    precision (float64 stays float64). An estimate kept in ``out/flatfield/`` is reused when a run
    resumes, so resumed fields are corrected exactly as the first ones were.
    """
    if illumination is None:
        return None
    from ..illumination import estimate_flatfield

    target = RunPath.of(folder) / f"{plate.name}.npy"
    if isinstance(illumination, str) and illumination == "estimate":
        if target.exists():
            return target
        log.info("estimating the flat field of plate %s from its fields", plate.name)
        flat = estimate_flatfield(plate)
    else:
        well = plate.wells[0]
        c, y, x = plate.image(well, plate.fields(well)[0]).shape
        flat = _given_flatfield(plate, illumination, c)
        if flat.shape[-2:] != (y, x):
            msg = f"flat field {illumination}: {flat.shape[-2:]} px, but plate {plate.name} fields are {(y, x)} px"
            raise ConfigError(msg)
        if flat.ndim == 3 and flat.shape[0] != c:
            msg = f"flat field {illumination}: {flat.shape[0]} channels, but plate {plate.name} has {c}"
            raise ChannelMismatchError(msg)
    target.write_bytes(_npy(np.asarray(flat, dtype=np.float64 if flat.dtype == np.float64 else np.float32)))
    return target


def _given_flatfield(plate: Plate, illumination: str | Sequence[str] | Mapping[str, str],
                     n_channels: int) -> np.ndarray:
    """Read the flat field ``illumination`` names for ``plate`` (see :func:`flatfield_file`)."""
    from ..illumination import load_flatfield

    names = [str(n) for n in plate.channel_names]
    if isinstance(illumination, Mapping):
        unknown = sorted(set(illumination) - set(names))
        if unknown:
            msg = f"illumination names channel(s) {unknown} that plate {plate.name} lacks (channels {names})"
            raise ChannelMismatchError(msg)
        planes = {name: load_flatfield(path, dtype=None) for name, path in illumination.items()}
        shape = next(iter(planes.values())).shape[-2:]
        dtype = np.result_type(*(p.dtype for p in planes.values()))
        return np.concatenate([planes[n] if n in planes else np.ones((1, *shape), dtype) for n in names])
    if isinstance(illumination, str | os.PathLike):
        text = os.fspath(illumination)
        if "{channel}" in text:
            return load_flatfield([text.format(plate=plate.name, channel=n) for n in names], dtype=None)
        return load_flatfield(text.format(plate=plate.name) if "{plate}" in text else text, dtype=None)
    paths = list(illumination)
    if len(paths) != n_channels:
        msg = (f"illumination lists {len(paths)} flat field files, but plate {plate.name} has {n_channels} "
               f"channels {names}; give one per channel in that order, or a mapping channel -> file")
        raise ChannelMismatchError(msg)
    return load_flatfield(paths, dtype=None)


def plate_upper_bounds(plate: Plate, spec: CropSpec, folder: str | os.PathLike | RunPath) -> tuple[float, ...] | None:
    """The plate's upper intensity bound per channel when ``spec`` clips at a plate percentile.

    The histogram of the plate's raw pixels (one pass over every field, before illumination
    correction, as the JUMP crop generator computed it) is kept in ``folder/<plate>.npy`` and reused
    when a run resumes; the percentile is read from it, so changing the percentile needs no new pass.
    """
    if spec.plate_upper_percentile is None:
        return None
    from ..intensity import HISTOGRAM_BINS, histogram_percentile, plate_histogram

    target = RunPath.of(folder) / f"{plate.name}.npy"
    shape = (len(plate.channel_names), HISTOGRAM_BINS)
    try:
        histogram = np.load(io.BytesIO(target.read_bytes()), allow_pickle=False)
    except FileNotFoundError:
        histogram = None
    if histogram is None or histogram.shape != shape:
        histogram = plate_histogram(plate)
        target.write_bytes(_npy(histogram))
    bounds = histogram_percentile(histogram, spec.plate_upper_percentile)
    log.info("plate %s: %s %% intensity bounds %s", plate.name, spec.plate_upper_percentile, bounds.tolist())
    return tuple(float(v) for v in bounds)


def _npy(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a ``.npy`` file (written whole, locally or to object storage)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def fields_per_task(plates: Sequence[Plate], plans: Sequence[PlatePlan], params: RunParams, batch_size: int,
                    *, most: int = 16) -> int:
    """How many fields to embed together so a task's crops fill about one batch.

    Read from the first field's label image (cells x passes crops per field); a JUMP field
    (hundreds of cells, 3 passes) is a task of its own, an HPA field (10-30 cells) shares one with a
    few others. A plate without labels yet gives 1.
    """
    plate, plan = plates[0], plans[0]
    well = plate.wells[0]
    field = plate.fields(well)[0]
    if params.label_name not in plate.label_names(well, field):
        return 1
    labels = np.asarray(plate.read_labels(well, field, params.label_name))
    crops = max(1, (len(np.unique(labels)) - 1) * len(plan.passes))
    return int(min(most, max(1, -(-batch_size // crops))))
