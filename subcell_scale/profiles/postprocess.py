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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._anndata import representation
from .._constants import Keys
from .._typecheck import check_arguments
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


@dataclass(frozen=True)
class Step:
    """One step of a chain: a function of :data:`STEPS` and its keyword arguments, checked when made.

    A chain written in a preset, a config file or ``--set postprocess=[...]`` is checked step by
    step here (the step's name, every argument's name and type), so a mistake is reported before a
    run embeds a single cell, not when its profiles are post-processed hours later.
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, step: Mapping[str, Any] | Step, position: int = 0) -> Step:
        """A step from ``{"step": name, **arguments}``.

        Raises
        ------
        ConfigError
            Not a mapping with a ``"step"`` key, an unknown step, or an argument it does not take or of
            the wrong type; the message gives the step's position and name.
        """
        if isinstance(step, Step):
            return step
        if not isinstance(step, Mapping) or "step" not in step:
            raise ConfigError(f"postprocess: step {position} must be a mapping with a 'step' key, got {step!r}")
        name = step["step"]
        if name not in STEPS:
            raise ConfigError(f"postprocess: step {position} names {name!r}; steps are {sorted(STEPS)}")
        params = {k: v for k, v in step.items() if k != "step"}
        check_arguments(STEPS[name], params, f"postprocess step {position} ({name})", skip=("adata", "copy"))
        return cls(str(name), params)

    def to_dict(self) -> dict[str, Any]:
        """``{"step": name, **arguments}``, as presets and config files write it."""
        return {"step": self.name, **_copy.deepcopy(dict(self.params))}

    def __call__(self, adata: AnnData) -> AnnData:
        return STEPS[self.name](adata, **self.params)


def resolve_chain(steps: str | Sequence[Mapping[str, Any] | Step], overrides: Mapping[str, Any] | None = None
                  ) -> tuple[Step, ...]:
    """A chain as checked :class:`Step` objects: the named chain of a preset or of
    :data:`subcell_scale.presets.CHAINS`, or a list of step mappings.

    ``overrides`` are set on every step whose function takes them; one that no step takes is an error.
    """
    if isinstance(steps, str):
        from ..presets import get_chain

        steps = get_chain(steps)
    if isinstance(steps, Mapping) or not isinstance(steps, Sequence):
        raise ConfigError(f"postprocess: expected a list of steps or a chain name, got {steps!r}")
    chain = [Step.from_mapping(step, i) for i, step in enumerate(steps)]
    used: set[str] = set()
    for i, step in enumerate(chain):
        accepted = _keywords(STEPS[step.name])
        given = {k: v for k, v in (overrides or {}).items() if k in accepted}
        used.update(given)
        if given:
            chain[i] = Step.from_mapping({**step.to_dict(), **given}, i)
    unused = sorted(set(overrides or {}) - used)
    if unused:
        raise ConfigError(f"postprocess: no step of the chain takes {unused}")
    return tuple(chain)


def postprocess(
    adata: AnnData,
    preset: str | None = None,
    *,
    steps: Sequence[Mapping[str, Any]] | None = None,
    stratify: str | None = "cell_type",
    use_rep: str | None = None,
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
    use_rep
        The view to post-process: ``"X"`` (None) or an ``obsm`` key of the profiles
        (``"cellprofiler"``), post-processed on its own; its columns that are not finite in every
        profile or are constant are dropped first (CellProfiler measures some features as NaN), and
        ``uns["views"][use_rep]`` records them and the chain's steps.
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
    if steps is None and preset is None:
        raise ConfigError("postprocess: give steps=[{'step': 'normalize', ...}, ...] or a preset name")
    if use_rep not in (None, "X"):
        return _postprocess_view(adata, use_rep, preset, steps, stratify, overrides)
    chain = resolve_chain(steps if steps is not None else preset, overrides)
    column = stratify if stratify is not None and stratify in adata.obs.columns else None
    if stratify is not None and column is None:
        logger.info("postprocess: obs has no %r column; one chain over all %d rows", stratify, adata.n_obs)
    groups = _groups(adata, column)
    before = len(adata.uns.get(Keys.PROFILING, {}))
    pieces: list[AnnData] = []
    for value, rows in groups:
        piece = adata[rows].copy()
        for i, step in enumerate(chain):
            try:
                piece = step(piece)
            except ProfilingError as exc:
                where = f" ({column}={value!r})" if column else ""
                raise ProfilingError(f"postprocess step {i} ({step.name}){where}: {exc}") from exc
        pieces.append(piece)
    result = _assemble(adata, groups, pieces)
    record = dict(adata.uns.get(Keys.PROFILING, {}))
    result.uns[Keys.PROFILING] = record
    record_step(result, "postprocess", preset=preset, stratify=column,
                strata=[str(v) for v, _ in groups] if column else [],
                chain={f"{i:02d}": s.to_dict() for i, s in enumerate(chain)})
    for i in range(len(chain)):
        for (value, _), piece in zip(groups, pieces, strict=True):
            entry = dict(piece.uns[Keys.PROFILING][f"{before + i:02d}"])
            step_name = entry.pop("step")
            dropped = entry.pop("dropped_features", [])
            if column:
                entry["stratum"] = str(value)
            record_step(result, step_name, dropped_features=list(dropped), **entry)
    return result


def _postprocess_view(adata: AnnData, name: str, preset: str | None, steps: Any, stratify: str | None,
                      overrides: Mapping[str, Any]) -> AnnData:
    """``obsm[name]`` post-processed as its own profiles; a copy of ``adata`` holding the result there."""
    values = representation(adata, name, what="postprocess")
    frame = adata.obsm[name]
    columns = ([str(c) for c in frame.columns] if isinstance(frame, pd.DataFrame)
               else [f"{name}_{i:04d}" for i in range(values.shape[1])])
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(values).all(axis=0) & (np.ptp(values, axis=0) > 0)
    if not keep.any():
        raise ProfilingError(f"postprocess: obsm[{name!r}] has no feature that is finite and varies across profiles")
    view = AnnData(X=values[:, keep].astype(np.float32), obs=adata.obs.copy(),
                   var=pd.DataFrame(index=pd.Index(np.asarray(columns)[keep], dtype=str)))
    done = postprocess(view, preset, steps=steps, stratify=stratify, **overrides)
    out = adata.copy()
    out.obsm[name] = pd.DataFrame(np.asarray(done.X), index=adata.obs_names, columns=list(done.var_names))
    views = dict(out.uns.get(Keys.VIEWS, {}))
    views[name] = {**dict(views.get(name, {})), "profiling": done.uns[Keys.PROFILING],
                   "dropped_features": [c for c, k in zip(columns, keep, strict=True) if not k]}
    out.uns[Keys.VIEWS] = views
    return out


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
