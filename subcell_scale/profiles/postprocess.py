"""Apply an ordered chain of profile steps, separately for each cell type: a protocol's post-processing.

A chain is a list of step dicts, each naming a step and its keyword arguments::

    [{"step": "normalize", "method": "spherize", "spherize_method": "PCA-cor",
      "reference": "control_type == 'negcon'", "spherize_epsilon": 1e-6, "spherize_variant": "legacy"},
     {"step": "normalize", "method": "standardize", "reference": "all", "by": "plate"}]

Steps: ``normalize``, ``feature_select``, ``select_variant_features``, ``rank_inverse_normal`` and
``harmony`` (the functions of this package with those names). When ``obs`` has the ``stratify``
column (``"cell_type"``), the chain runs on each cell type's rows alone, so no statistic (a
spherize fit on DMSO wells, a feature selection) mixes cell types, as the SubCell JUMP benchmark
post-processes A549 and U2OS separately (``scripts/postprocess.py``). A preset holds its chain (the
list of step dicts) under the key ``"postprocess"``.
"""

from __future__ import annotations

import copy as _copy
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._constants import Keys
from ..errors import ConfigError, ProfilingError
from ._steps import record_step
from .feature_select import feature_select, select_variant_features
from .harmony import harmony
from .inverse_normal import rank_inverse_normal
from .normalize import normalize

logger = logging.getLogger(__name__)

STEPS: dict[str, Callable[..., AnnData]] = {
    "normalize": normalize,
    "feature_select": feature_select,
    "select_variant_features": select_variant_features,
    "rank_inverse_normal": rank_inverse_normal,
    "harmony": harmony,
}
"""Step names a chain may use and the functions they call."""


def postprocess(
    adata: AnnData,
    preset: str | None = None,
    *,
    steps: Sequence[Mapping[str, Any]] | None = None,
    stratify: str | None = "cell_type",
    **overrides: Any,
) -> AnnData:
    """Run a chain of profile steps in order, per stratum (cell type) when ``obs`` has that column.

    Parameters
    ----------
    adata
        Well profiles, e.g. from :func:`aggregate`.
    preset
        Name of a preset (``"jump-cellpainting"``) whose ``"postprocess"`` entry holds the chain, or of a
        chain in :data:`subcell_scale.presets.CHAINS` (``"jump-recipe"``);
        ``steps`` given here replace it.
    steps
        The chain: dicts with ``"step"`` (a key of :data:`STEPS`) and that function's keyword
        arguments (no ``copy``). Required without ``preset``.
    stratify
        obs column whose values are post-processed separately (``"cell_type"``); ``None``, or a
        column ``obs`` does not have, runs the chain once on all rows.
    **overrides
        Keyword arguments set on every step whose function takes them, e.g.
        ``spherize_variant="corrected"``; a keyword no step takes is an error.

    Returns
    -------
    AnnData
        New post-processed profiles in the input row order (``adata`` is left as it was). When strata end with different
        features (a feature selection keeps different ones) the columns are their union and a
        stratum's missing features are NaN; :func:`subcell_scale.metrics.evaluate_profiles`
        evaluates each cell type on its own features. ``uns["profiling"]`` gains a
        ``"postprocess"`` entry (``chain``: the steps by position ``"00"``, ``"01"`` ..., the stratify
        column, the strata) and one entry per step and stratum
        (``stratum`` names the cell type), in chain order.
    """
    chain = _resolve_chain(preset, steps, overrides)
    column = stratify if stratify is not None and stratify in adata.obs.columns else None
    if stratify is not None and column is None:
        logger.info("postprocess: obs has no %r column; one chain over all %d rows", stratify, adata.n_obs)
    groups = _groups(adata, column)
    before = len(adata.uns.get(Keys.PROFILING, {}))
    pieces: list[AnnData] = []
    for value, rows in groups:
        piece = adata[rows].copy()
        for i, step in enumerate(chain):
            params = {k: v for k, v in step.items() if k != "step"}
            try:
                piece = STEPS[step["step"]](piece, **params)
            except ProfilingError as exc:
                where = f" ({column}={value!r})" if column else ""
                raise ProfilingError(f"postprocess step {i} ({step['step']}){where}: {exc}") from exc
        pieces.append(piece)
    result = _assemble(adata, groups, pieces)
    record = dict(adata.uns.get(Keys.PROFILING, {}))
    result.uns[Keys.PROFILING] = record
    record_step(result, "postprocess", preset=preset, stratify=column,
                strata=[str(v) for v, _ in groups] if column else [],
                chain={f"{i:02d}": dict(s) for i, s in enumerate(chain)})
    for i in range(len(chain)):
        for (value, _), piece in zip(groups, pieces, strict=True):
            entry = dict(piece.uns[Keys.PROFILING][f"{before + i:02d}"])
            step_name = entry.pop("step")
            dropped = entry.pop("dropped_features", [])
            if column:
                entry["stratum"] = str(value)
            record_step(result, step_name, dropped_features=list(dropped), **entry)
    return result


def preset_chain(name: str) -> list[dict[str, Any]]:
    """The step list of a preset (its ``"postprocess"`` entry) or of a named chain (``"jump-recipe"``)."""
    from ..presets import get_chain

    return [dict(step) for step in get_chain(name)]


def _resolve_chain(preset: str | None, steps: Sequence[Mapping[str, Any]] | None,
                   overrides: Mapping[str, Any]) -> list[dict[str, Any]]:
    if preset is not None and steps is None:
        steps = preset_chain(preset)
    if steps is None:
        raise ConfigError("postprocess: give steps=[{'step': 'normalize', ...}, ...] or a preset name")
    chain = []
    used: set[str] = set()
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping) or "step" not in step:
            raise ConfigError(f"postprocess: step {i} must be a dict with a 'step' key, got {step!r}")
        name = step["step"]
        if name not in STEPS:
            raise ConfigError(f"postprocess: step {i} names {name!r}; steps are {sorted(STEPS)}")
        accepted = _keywords(STEPS[name])
        unknown = sorted(set(step) - {"step"} - accepted)
        if unknown:
            raise ConfigError(f"postprocess: step {i} ({name}) has unknown argument(s) {unknown}; "
                              f"{name} takes {sorted(accepted)}")
        params = dict(step)
        for key, value in overrides.items():
            if key in accepted:
                params[key] = value
                used.add(key)
        chain.append(params)
    unused = sorted(set(overrides) - used)
    if unused:
        raise ConfigError(f"postprocess: no step of the chain takes {unused}")
    return chain


def _keywords(function: Callable[..., Any]) -> set[str]:
    parameters = inspect.signature(function).parameters
    return {name for name, p in parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "copy"}


def _groups(adata: AnnData, column: str | None) -> list[tuple[Any, np.ndarray]]:
    if column is None:
        return [(None, np.arange(adata.n_obs))]
    values = adata.obs[column]
    if values.isna().any():
        rows = np.flatnonzero(values.isna().to_numpy())[:5].tolist()
        raise ProfilingError(f"postprocess: obs[{column!r}] is missing for rows {rows}; every profile needs one")
    codes, uniques = pd.factorize(values.astype(str), sort=True)
    return [(value, np.flatnonzero(codes == i)) for i, value in enumerate(uniques)]


def _assemble(adata: AnnData, groups: list[tuple[Any, np.ndarray]], pieces: list[AnnData]) -> AnnData:
    """One AnnData in the input row order; columns are the union of the pieces' features."""
    seen = {v for piece in pieces for v in piece.var_names}
    names = [v for v in adata.var_names if v in seen]  # input order first, then new names (PC1, ...)
    for piece in pieces:
        names.extend(v for v in piece.var_names if v not in set(names))
    same = all(list(p.var_names) == names for p in pieces)
    if not same:
        logger.warning("postprocess: strata kept different features; their union (%d) is returned with NaN "
                       "where a stratum lacks one", len(names))
    x = np.full((adata.n_obs, len(names)), np.nan, dtype=np.float32)
    index = {name: j for j, name in enumerate(names)}
    for (_, rows), piece in zip(groups, pieces, strict=True):
        columns = [index[v] for v in piece.var_names]
        x[np.ix_(rows, columns)] = np.asarray(piece.X, dtype=np.float32)
    obs = adata.obs.copy()
    uns = {k: _copy.deepcopy(v) for k, v in adata.uns.items() if k != Keys.PROFILING}
    var = pd.DataFrame(index=pd.Index(names, dtype=str))
    return AnnData(X=x, obs=obs, var=var, uns=uns, obsm={k: v.copy() for k, v in adata.obsm.items()})
