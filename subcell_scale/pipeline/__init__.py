"""A run's work on its fields: planning, the field stages and their execution on the one scheduler.

- :mod:`.jobs`: open the plates (metadata only) and turn every field into a
  :class:`~.field.FieldJob` that references its plate's shared :class:`~.field.JobPlan`;
- :mod:`.field`: what a worker does with a field (labels, segmentation, crops, embedding, shards);
- :mod:`.execute`: the fields without a finished shard through
  :func:`~subcell_scale.distributed.scheduler.map_tasks`, each recorded in the manifest.

The stages that use them are in :mod:`subcell_scale.stages`; :func:`field_crops` shows one field's
crops as a run would cut them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import PlateNotFoundError
from ..params import RunParams
from ..rundir import FieldId
from .field import prepare_field
from .jobs import open_plates, plan_jobs

if TYPE_CHECKING:  # pragma: no cover
    from ..io import Plate

__all__ = ["field_crops"]


def field_crops(plate: str | os.PathLike | Plate, well: str, field: str, *, preset: str | RunParams | None = None,
                model_channels: Sequence[str] | None = None,
                channel_map: Mapping[str, str | Sequence[str]] | None = None, label_name: str | None = None,
                storage_options: dict[str, Any] | None = None, **overrides: Any) -> tuple[np.ndarray, pd.DataFrame]:
    """The crops :func:`subcell_scale.embed_plate` gives the model for one field, to look at or check.

    Takes the same preset, channel map and overrides as :func:`subcell_scale.embed_plate`; ``model_channels``
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
        jobs = plan_jobs([opened], [plan], params, root=None, scratch=Path(scratch), batch_size=1, crop_on="cpu",
                         segment_if_missing=False)
        prepared = prepare_field(next(j for j in jobs if j.fid == fid))
    return prepared.crops, prepared.cells
