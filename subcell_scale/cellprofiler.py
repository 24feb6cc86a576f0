"""CellProfiler measurements of the cells a run embeds, with cp_measure, from the same pixels and labels.

Users judge embeddings against the features they already trust; measuring them in the pass that
embeds (on the worker's CPU threads, from the field already read and the cells already kept) saves a
second read of every image and a second segmentation. Intensities are taken as CellProfiler reads
them: integer pixels divided by their dtype's maximum, then divided by the flat field when the run
corrects illumination (CellProfiler's ``CorrectIlluminationApply``, "Divide"). Columns keep
cp_measure's names (``Area``, ``Intensity_MeanIntensity__DNA``), channels the plate's names.

Feature groups are cp_measure's (:data:`GROUPS`). Their cost differs by two orders of magnitude
(``benchmarks/bench_cellprofiler.py``): :data:`DEFAULT_GROUPS` are those a 16-core GPU node measures
at the rate its GPU embeds JUMP fields; ``"all"`` adds granularity, the radial distributions and the
Costes, Manders and RWC colocalisations, whose cost the README states.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError

__all__ = ["DEFAULT_GROUPS", "GROUPS", "cellprofiler_pixels", "feature_names", "measure_cells", "resolve_groups"]

GROUPS = ("sizeshape", "zernike", "feret", "intensity", "texture", "granularity", "radial_distribution",
          "radial_zernikes", "correlation_pearson", "correlation_costes", "correlation_manders_fold",
          "correlation_rwc")
"""cp_measure's feature groups (the switches of ``cp_measure.featurizer.make_featurizer_config``)."""

DEFAULT_GROUPS = ("sizeshape", "feret", "intensity", "texture")
"""What ``cellprofiler=True`` measures: shape, intensity and texture of each channel, cheap enough to
keep pace with a GPU. Measured at the JUMP geometry (1080 px, 5 channels, 250 cells; one thread):
2.2 CPU s per field, 11 cores at 5 fields/s, which leaves a 16-core node 5 for reading and cropping;
adding Zernike shapes (0.8 s) and Pearson correlations (1.0 s) would need 20."""


def resolve_groups(value: bool | str | Sequence[str] | None) -> tuple[str, ...]:
    """The feature groups a ``cellprofiler`` value asks for: ``False``/None none, ``True`` the
    defaults, ``"all"`` every group, or a list of group names.

    Raises
    ------
    ConfigError
        An unknown group name or value (the message lists the groups).
    """
    if value is None or value is False:
        return ()
    if value is True:
        return DEFAULT_GROUPS
    if isinstance(value, str):
        value = GROUPS if value == "all" else [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        msg = f"cellprofiler must be True, False, 'all' or a list of feature groups {list(GROUPS)}, got {value!r}"
        raise ConfigError(msg)
    unknown = [v for v in value if v not in GROUPS]
    if unknown:
        msg = f"cellprofiler: unknown feature group(s) {unknown}; groups are {list(GROUPS)}"
        raise ConfigError(msg)
    return tuple(g for g in GROUPS if g in value)


def cellprofiler_pixels(image: np.ndarray, flatfield: np.ndarray | None = None) -> np.ndarray:
    """A field (c, y, x) as CellProfiler measures it: float64 in [0, 1] (integers over their dtype's
    maximum; floats as stored), divided by ``flatfield`` when given."""
    image = np.asarray(image)
    pixels = image.astype(np.float64)
    if np.issubdtype(image.dtype, np.integer):
        pixels /= float(np.iinfo(image.dtype).max)
    if flatfield is not None:
        pixels /= np.asarray(flatfield, dtype=np.float64)
    return pixels


def scale_of(dtype: Any) -> float:
    """The intensity scale of a stored dtype (what Costes' threshold search steps through)."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 65535.0


def _config(channels: Sequence[str], groups: Sequence[str], scale_max: float) -> dict[str, Any]:
    from cp_measure.featurizer import make_featurizer_config

    switches = {g: g in groups for g in GROUPS}
    return make_featurizer_config(list(channels), objects=["cells"], **switches,
                                  correlation_costes_params={"scale_max": int(scale_max)})


def measure_cells(pixels: np.ndarray, labels: np.ndarray, channels: Sequence[str],
                  groups: Sequence[str] = DEFAULT_GROUPS, *, scale_max: float = 65535.0) -> pd.DataFrame:
    """CellProfiler measurements of every cell of ``labels`` (background 0) on ``pixels`` (c, y, x).

    Parameters
    ----------
    pixels
        The field as :func:`cellprofiler_pixels` makes it.
    labels
        The cells to measure (the run's kept cells: dropped ones are zero here).
    channels
        The plate's channel names, in ``pixels`` order (the suffix of each intensity column).
    groups
        cp_measure feature groups (:data:`GROUPS`).
    scale_max
        The stored intensity scale (65535 for 16-bit fields), for Costes' threshold search.

    Returns
    -------
    One row per label (index ``label``, ascending), cp_measure's columns, float64.
    """
    labels = np.asarray(labels)
    columns = feature_names(tuple(channels), tuple(groups), float(scale_max))
    if not labels.any():
        return pd.DataFrame(np.zeros((0, len(columns))), columns=columns, index=pd.Index([], name="label"))
    from cp_measure.featurizer import featurize

    data, names, rows = featurize(np.asarray(pixels, dtype=np.float64)[None],
                                  labels.astype(np.int32, copy=False)[None, None],
                                  _config(channels, groups, scale_max))
    index = pd.Index([int(r[2]) for r in rows], name="label")
    return pd.DataFrame(np.asarray(data, dtype=np.float64), columns=list(names), index=index)[columns].sort_index()


@functools.lru_cache(maxsize=16)
def feature_names(channels: tuple[str, ...], groups: tuple[str, ...], scale_max: float = 65535.0) -> list[str]:
    """The columns :func:`measure_cells` returns, known before any field is measured (measured on one
    small disc), so a field without cells still has them."""
    from cp_measure.featurizer import featurize

    yy, xx = np.mgrid[:32, :32]
    disc = ((yy - 16) ** 2 + (xx - 15) ** 2 < 100).astype(np.int32)
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0.1, 0.9, (len(channels), 32, 32))
    _, names, _ = featurize(pixels[None], disc[None, None], _config(channels, groups, scale_max))
    return list(names)
