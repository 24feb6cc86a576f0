"""Similarities of query rows against all profiles, one block of rows at a time.

copairs computes a similarity for every listed pair; here one block of query rows is compared with
all profiles by a matrix product (cosine, correlation) or ``scipy.spatial.distance.cdist`` (the other
metrics), so memory stays at one (rows x profiles) block whatever the design. Values are returned as
float32, as copairs stores them, because ranks (and therefore ties) are decided on that precision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Union

import numpy as np
from scipy.spatial.distance import cdist

from ..errors import ProfilingError

if TYPE_CHECKING:  # pragma: no cover
    pass

logger = logging.getLogger(__name__)

Distance = Union[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]
"""A metric name (``"cosine"``, ``"abs_cosine"``, ``"correlation"``, ``"euclidean"``,
``"manhattan"``, ``"chebyshev"`` or any ``scipy.spatial.distance.cdist`` metric) or a callable
``f(x_rows, y_rows) -> 1-D similarities`` of paired rows, as copairs accepts."""

_PRODUCT_METRICS = ("cosine", "abs_cosine", "correlation")
_CDIST_NAMES = {"euclidean": "euclidean", "manhattan": "cityblock", "chebyshev": "chebyshev"}
_BOUNDED_01 = ("jaccard", "hamming")

DEFAULT_BLOCK_VALUES = 1 << 22
"""Similarity values held per block when the caller does not choose (about 4 million)."""


def rows_per_block(n_profiles: int, block_values: int | None) -> int:
    """Number of query rows per block so that a block holds about ``block_values`` similarities."""
    values = DEFAULT_BLOCK_VALUES if block_values is None else int(block_values)
    if values < 1:
        msg = f"batch_size must be a positive number of similarity values per block, got {block_values}"
        raise ProfilingError(msg)
    return max(1, values // max(1, n_profiles))


class Similarity:
    """Block-wise similarity of profiles under one metric.

    Parameters
    ----------
    feats
        (n_profiles, n_features) matrix; converted to float64 so that the float32 similarities
        equal copairs' values for float64 input.
    distance
        See :data:`Distance`. Distances ``d`` become similarities ``1 / (1 + d)`` (``1 - d`` for
        jaccard and hamming), exactly as copairs does.
    """

    def __init__(self, feats: np.ndarray, distance: Distance = "cosine") -> None:
        x = np.asarray(feats, dtype=np.float64)
        if x.ndim != 2:
            msg = f"features must be a 2-D (profiles x features) matrix, got shape {x.shape}"
            raise ProfilingError(msg)
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            msg = (f"features have NaN or infinite values in {rows.size} rows (first: {rows[:5].tolist()}); "
                   "drop or impute them before computing metrics")
            raise ProfilingError(msg)
        self.distance = distance
        self.n = x.shape[0]
        self._callable: Callable | None = None
        self._metric: str | None = None
        if callable(distance):
            self._callable = distance
            self._x = x
        elif not isinstance(distance, str):
            msg = f"distance must be a metric name or a callable, got {type(distance).__name__}"
            raise ProfilingError(msg)
        elif distance in _PRODUCT_METRICS:
            if distance == "correlation":
                x = x - x.mean(axis=1, keepdims=True)
            norms = np.linalg.norm(x, axis=1)
            zero = norms == 0
            if zero.any():
                rows = np.flatnonzero(zero)
                what = "constant" if distance == "correlation" else "all-zero"
                msg = (f"{rows.size} profiles are {what} (first rows: {rows[:5].tolist()}), so their "
                       f"{distance} similarity is undefined; drop them or use another distance")
                raise ProfilingError(msg)
            self._x = x / norms[:, None]
            self._metric = distance
        else:
            name = _CDIST_NAMES.get(distance, distance)
            try:
                cdist(x[:1], x[:1], metric=name)
            except (ValueError, TypeError) as exc:
                msg = (f"unknown distance {distance!r}: use cosine, abs_cosine, correlation, euclidean, "
                       f"manhattan, chebyshev, a scipy.spatial.distance metric or a callable ({exc})")
                raise ProfilingError(msg) from exc
            self._x = x
            self._metric = name

    @property
    def product_rows(self) -> np.ndarray | None:
        """Rows whose products are the similarities (cosine, abs_cosine before ``abs``, correlation), else None.

        Lets another device compute the product itself.
        """
        return self._x if self._metric in _PRODUCT_METRICS else None

    def block(self, rows: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Similarities (len(rows), n_profiles) as float32.

        ``mask`` (same shape, bool) limits the work for callables to the entries that are used;
        other entries are NaN. Built-in metrics ignore it (a full block is as cheap).
        """
        if self._callable is not None:
            out = np.full((len(rows), self.n), np.nan, dtype=np.float32)
            r, c = (np.nonzero(mask) if mask is not None
                    else np.divmod(np.arange(len(rows) * self.n), self.n))
            if r.size:
                values = np.asarray(self._callable(self._x[rows[r]], self._x[c]), dtype=np.float64)
                if values.shape != (r.size,):
                    msg = (f"the distance callable must return one similarity per row pair "
                           f"(shape ({r.size},)), it returned shape {values.shape}")
                    raise ProfilingError(msg)
                out[r, c] = values
            return out
        xq = self._x[rows]
        if self._metric in _PRODUCT_METRICS:
            sims = xq @ self._x.T
            if self._metric == "abs_cosine":
                np.abs(sims, out=sims)
            return sims.astype(np.float32)
        dist = cdist(xq, self._x, metric=self._metric)
        if self._metric in _BOUNDED_01:
            return (1.0 - dist).astype(np.float32)
        return (1.0 / (1.0 + dist)).astype(np.float32)

    def block64(self, rows: np.ndarray) -> np.ndarray:
        """Similarities in float64 for nearest-neighbour searches, where copairs' rounding plays no part."""
        if self._callable is not None:
            return self.block(rows).astype(np.float64)
        xq = self._x[rows]
        if self._metric in _PRODUCT_METRICS:
            sims = xq @ self._x.T
            return np.abs(sims) if self._metric == "abs_cosine" else sims
        dist = cdist(xq, self._x, metric=self._metric)
        return 1.0 - dist if self._metric in _BOUNDED_01 else 1.0 / (1.0 + dist)
