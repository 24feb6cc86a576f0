"""The record of profiling steps kept in ``uns["profiling"]``.

AnnData cannot write a list of dicts to h5ad or zarr, so the steps are stored as a mapping with
zero-padded keys ("00", "01", ...) in the order they were applied; :func:`profiling_steps` gives
them back as a list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from anndata import AnnData

from .._constants import Keys


def profiling_steps(adata: AnnData) -> list[dict[str, Any]]:
    """The profiling steps applied to ``adata``, oldest first, each a dict with ``"step"``.

    Works on an AnnData fresh from :func:`aggregate` as well as one read back from h5ad/zarr, where
    lists come back as arrays; ``dropped_features`` is always a list of str.
    """
    record = adata.uns.get(Keys.PROFILING, {})
    steps = []
    for key in sorted(record, key=int):
        step = {name: _plain(value) for name, value in record[key].items()}
        step["dropped_features"] = [str(f) for f in step.get("dropped_features", [])]
        steps.append(step)
    return steps


def record_step(adata: AnnData, step: str, *, dropped_features: list[str] = (), **params: Any) -> None:
    """Append one step with its parameters and the features it removed to ``uns["profiling"]``."""
    record = dict(adata.uns.get(Keys.PROFILING, {}))
    entry = {"step": step, **{k: _storable(v) for k, v in params.items()},
             "dropped_features": [str(f) for f in dropped_features]}
    record[f"{len(record):02d}"] = entry
    adata.uns[Keys.PROFILING] = record


def _storable(value: Any) -> Any:
    """Values AnnData can write: tuples become lists, mappings are converted recursively."""
    if isinstance(value, Mapping):
        return {str(k): _storable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_storable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value
