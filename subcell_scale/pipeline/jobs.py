"""Plan a run: open the plates, and turn each field into a :class:`~subcell_scale.pipeline.field.FieldJob`.

Planning reads metadata only (and, with illumination correction, estimates one flat field per plate),
so every input problem surfaces here, before a cluster does any work.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._constants import Files
from ..errors import ChannelMismatchError, ConfigError
from ..store import FieldId, ResultsStore
from .field import FieldJob

if TYPE_CHECKING:  # pragma: no cover
    from ..io import Plate
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


def plan_jobs(plates: Sequence[Plate], plans: Sequence[PlatePlan], params: RunParams, *,
              store: ResultsStore | None, scratch: Path, digest: str, batch_size: int, crop_on: str,
              segment_if_missing: bool) -> list[FieldJob]:
    """One job per field of every plate, in plate, well, field order (the order of the cells AnnData).

    Files the workers read (flat fields) go into the run directory, or into ``scratch`` without one.
    """
    jobs = []
    for plate, plan in zip(plates, plans, strict=True):
        folder = store.root / Files.FLATFIELD if store is not None else scratch / Files.FLATFIELD
        flatfield = flatfield_file(plate, params.illumination, folder)
        for well in plate.wells:
            for fld in plate.fields(well):
                fid = FieldId(plate.name, well, str(fld))
                jobs.append(FieldJob(
                    fid=fid, plate_path=str(plate.path), plate_options=plate.open_options, label_name=params.label_name,
                    segment_if_missing=segment_if_missing, segmentation=dict(params.segmentation),
                    cells=params.cells, crop=params.crop, passes=plan.passes, batch_size=batch_size,
                    shard_path=str(store.shard_path(fid)) if store is not None else None, digest=digest,
                    crop_on=crop_on, flatfield_path=flatfield))
    return jobs


def flatfield_file(plate: Plate, illumination: str | None, folder: Path) -> str | None:
    """The flat field of a plate as a file in ``folder`` that workers read: estimated from the plate
    once, or the given file checked against the plate.

    An estimate kept in ``out/flatfield/`` is reused when a run resumes, so resumed fields are
    corrected exactly as the first ones were.
    """
    if illumination is None:
        return None
    from ..illumination import estimate_flatfield, load_flatfield

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
