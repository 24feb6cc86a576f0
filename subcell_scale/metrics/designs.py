"""The standard JUMP / SubCell evaluation designs on a profiles AnnData, as tidy tables.

Each function picks the copairs pair rules of a published design (see the table in
``profiling-and-metrics.md`` section 1.6), runs :func:`~subcell_scale.metrics.average_precision`
and :func:`~subcell_scale.metrics.mean_average_precision` on ``adata.obs`` and ``adata.X`` (or an
``obsm`` representation) and returns one row per perturbation (or MoA). :func:`evaluate_designs`
runs them all and writes ``metrics/*.csv``; the protocol evaluation per cell type is
:func:`subcell_scale.metrics.evaluate_profiles` with a design.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from ..errors import ProfilingError
from ._pairs import parse_labels, query_columns
from ._similarity import Distance, feature_matrix
from .map import (
    AP_COLUMNS,
    MAP_COLUMNS,
    assign_reference_index,
    average_precision,
    fraction_retrieved,
    mean_average_precision,
)
from .nn import NN_COLUMNS, nn_accuracy

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

METADATA_PREFIX = "Metadata_"
_REFERENCE_COL = "__reference_index"
_RESULT_COLUMNS = frozenset({*AP_COLUMNS, *MAP_COLUMNS, *NN_COLUMNS, "p_value_method", "design", "metric",
                             "value", "n_groups"})

DESIGNS = ("replicate", "activity", "moa")
"""Designs :func:`evaluate_designs` knows, in the order it runs them."""

METRIC_FILES = {
    "replicate": ("replicate_ap.csv", "replicate_map.csv"),
    "activity": ("activity_ap.csv", "activity_map.csv"),
    "moa": ("moa_ap.csv", "moa_map.csv"),
    "moa_nn": "moa_nn_accuracy.csv",
    "summary": "summary.csv",
}
"""File names inside a run directory's ``metrics/`` folder: per-profile AP and per-group mAP tables."""


def _obs(adata: AnnData, columns: Sequence[str]) -> pd.DataFrame:
    missing = [c for c in columns if c not in adata.obs.columns]
    if missing:
        msg = f"adata.obs has no column(s) {missing} (columns: {list(adata.obs.columns)})"
        raise ProfilingError(msg)
    obs = adata.obs.reset_index(drop=True).copy()
    for c in obs.columns:
        if isinstance(obs[c].dtype, pd.CategoricalDtype):
            obs[c] = obs[c].astype(object)
    return obs


def _select(obs: pd.DataFrame, x: np.ndarray, exclude: str | None) -> tuple[pd.DataFrame, np.ndarray]:
    if exclude is None:
        return obs, x
    try:
        drop = np.asarray(obs.eval(exclude), dtype=bool)
    except Exception as exc:  # pandas raises many types for a bad expression
        msg = f"cannot evaluate exclude={exclude!r} on adata.obs: {exc}"
        raise ProfilingError(msg) from exc
    logger.info("leaving out %d profiles matching %r", int(drop.sum()), exclude)
    return obs[~drop].reset_index(drop=True), x[~drop]


def _n_plates(obs: pd.DataFrame, plate_col: str | None) -> int:
    return 1 if plate_col is None else int(obs[plate_col].nunique())


def _finish(ap: pd.DataFrame, sameby: list[str], null_size: int, threshold: float, seed: int,
            exact: bool | Literal["auto"], return_ap: bool) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    result = mean_average_precision(ap, sameby, null_size, threshold, seed, exact=exact)
    return (ap, result) if return_ap else result


def phenotypic_activity(
    adata: AnnData,
    *,
    pert_col: str = "compound",
    control_query: str = "control_type == 'negcon'",
    plate_col: str | None = None,
    null_size: int = 10000,
    threshold: float = 0.05,
    seed: int = 0,
    distance: Distance = "cosine",
    use_rep: str | None = None,
    exact: bool | Literal["auto"] = False,
    return_ap: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Can each perturbation's replicates be told apart from negative controls? (copairs activity design)

    Replicates of a perturbation are positives; the negative controls (rows matching
    ``control_query``) are its negatives, marked with a reference index so controls never pair
    with each other. With ``plate_col``, negatives are limited to controls on the query's plate.

    Returns
    -------
    pandas.DataFrame
        One row per perturbation (controls left out) with copairs' mAP columns; with
        ``return_ap=True`` the per-profile AP table first, then this one.
    """
    obs = _obs(adata, [pert_col] + ([plate_col] if plate_col else []))
    x = feature_matrix(adata, use_rep)
    obs = assign_reference_index(obs, control_query, reference_col=_REFERENCE_COL)
    if not (obs[_REFERENCE_COL] >= 0).any():
        msg = f"no profile matches control_query={control_query!r}; phenotypic activity needs negative controls"
        raise ProfilingError(msg)
    neg_sameby = [plate_col] if plate_col else []
    ap = average_precision(obs, x, [pert_col, _REFERENCE_COL], [], neg_sameby, [pert_col, _REFERENCE_COL],
                           distance=distance)
    ap = ap[ap[_REFERENCE_COL] < 0].drop(columns=[_REFERENCE_COL]).reset_index(drop=True)
    return _finish(ap, [pert_col], null_size, threshold, seed, exact, return_ap)


def replicate_retrieval(
    adata: AnnData,
    *,
    pert_col: str = "compound",
    plate_col: str | None = "plate",
    exclude: str | None = None,
    null_size: int = 10000,
    threshold: float = 0.05,
    seed: int = 0,
    distance: Distance = "cosine",
    use_rep: str | None = None,
    exact: bool | Literal["auto"] = False,
    return_ap: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Does a perturbation retrieve its own replicates among other perturbations? (JUMP / SubCell design)

    With several plates: positives are the same perturbation on OTHER plates, negatives are other
    perturbations on the SAME plate (``pos_sameby=[pert]``, ``pos_diffby=[plate]``,
    ``neg_sameby=[plate]``, ``neg_diffby=[pert]``), so neither plate effects nor well position
    can make a replicate easy to find. With one plate (or ``plate_col=None``): replicates versus all
    other perturbations. ``exclude`` (a query, e.g. ``"control_type == 'negcon'"``) leaves rows
    out first, as the SubCell benchmark drops DMSO.
    """
    obs = _obs(adata, [pert_col] + ([plate_col] if plate_col else []))
    obs, x = _select(obs, feature_matrix(adata, use_rep), exclude)
    if _n_plates(obs, plate_col) > 1:
        rules = ([pert_col], [plate_col], [plate_col], [pert_col])
    else:
        rules = ([pert_col], [], [], [pert_col])
    ap = average_precision(obs, x, *rules, distance=distance)
    return _finish(ap, [pert_col], null_size, threshold, seed, exact, return_ap)


def moa_retrieval(
    adata: AnnData,
    *,
    moa_col: str = "moa",
    pert_col: str = "compound",
    plate_col: str | None = "plate",
    exclude: str | None = None,
    null_size: int = 10000,
    threshold: float = 0.05,
    seed: int = 0,
    distance: Distance = "cosine",
    use_rep: str | None = None,
    exact: bool | Literal["auto"] = False,
    return_ap: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Do compounds of one MoA retrieve each other? (SubCell benchmark MoA design, multilabel)

    ``moa_col`` may hold several MoAs per row (lists or ``"|"``-separated). Positives share an MoA
    but are a different compound on a different plate; negatives are on the same plate and share
    no MoA. Rows without an MoA are left out. One output row per MoA.
    """
    obs = _obs(adata, [moa_col, pert_col] + ([plate_col] if plate_col else []))
    obs, x = _select(obs, feature_matrix(adata, use_rep), exclude)
    labelled = np.array([len(v) > 0 for v in parse_labels(obs[moa_col])], dtype=bool)
    obs, x = obs[labelled].reset_index(drop=True), x[labelled]
    if _n_plates(obs, plate_col) > 1:
        rules = ([moa_col], [plate_col, pert_col], [plate_col], [moa_col])
    else:
        rules = ([moa_col], [pert_col], [], [moa_col])
    ap = average_precision(obs, x, *rules, distance=distance, multilabel_col=moa_col)
    return _finish(ap, [moa_col], null_size, threshold, seed, exact, return_ap)


def moa_nn_accuracy(
    adata: AnnData,
    *,
    moa_col: str = "moa",
    pert_col: str = "compound",
    plate_col: str | None = "plate",
    batch_col: str | None = None,
    exclude: str | None = None,
    k: int | Sequence[int] = (1, 5, 10),
    distance: Distance = "cosine",
    mode: Literal["any", "vote"] = "any",
    use_rep: str | None = None,
) -> pd.DataFrame:
    """MoA k-NN accuracy, not-same-compound (and not-same-plate / not-same-batch when given)."""
    columns = [moa_col, pert_col] + [c for c in (plate_col, batch_col) if c]
    obs = _obs(adata, columns)
    obs, x = _select(obs, feature_matrix(adata, use_rep), exclude)
    return nn_accuracy(obs, x, moa_col, exclude_sameby=columns[1:], k=k, distance=distance, mode=mode)


def to_metadata_frame(frame: pd.DataFrame, *, prefix: str = METADATA_PREFIX) -> pd.DataFrame:
    """A result table with metadata columns renamed ``Metadata_<name>`` (pycytominer / copairs style).

    Result columns (``average_precision``, ``p_value``, ``accuracy``, ...) keep their names; list
    cells (``indices``) become ``"|"``-joined strings so the table survives CSV.
    """
    out = frame.copy()
    rename = {c: f"{prefix}{c}" for c in out.columns
              if c not in _RESULT_COLUMNS and not str(c).startswith(prefix)}
    out = out.rename(columns=rename)
    for c in out.columns:
        if out[c].dtype == object and out[c].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
            out[c] = out[c].map(lambda v: "|".join(map(str, v)) if isinstance(v, (list, tuple, np.ndarray)) else v)
    return out


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a result table as CSV or parquet (by suffix) with ``Metadata_`` prefixes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = to_metadata_frame(frame)
    if path.suffix == ".parquet":
        table.to_parquet(path, index=False)
    elif path.suffix in (".csv", ".gz"):
        table.to_csv(path, index=False)
    else:
        msg = f"{path}: write results as .csv, .csv.gz or .parquet"
        raise ProfilingError(msg)
    return path


def evaluate_designs(
    adata: AnnData,
    out_dir: str | Path | None = None,
    *,
    designs: Sequence[str] | str = "all",
    pert_col: str = "compound",
    moa_col: str = "moa",
    plate_col: str | None = "plate",
    control_query: str | None = "control_type == 'negcon'",
    null_size: int = 10000,
    threshold: float = 0.05,
    seed: int = 0,
    k: Sequence[int] = (1, 5, 10),
    distance: Distance = "cosine",
    use_rep: str | None = None,
    exact: bool | Literal["auto"] = False,
) -> dict[str, pd.DataFrame]:
    """Run the evaluation designs on profiles and (with ``out_dir``) write ``*.csv`` tables there.

    This is what ``evaluate_profiles(adata, out_dir, designs=..., pert_col=...)`` (no ``design`` or
    ``preset``) runs; the protocol evaluation with the SubCell JUMP benchmark's semantics per cell
    type is ``evaluate_profiles(adata, design={...})``.

    ``designs="all"`` runs every design whose columns exist (a design without them is skipped
    with a log line); naming designs explicitly makes a missing column an error. Controls
    (``control_query``) are the negatives of ``activity`` and are left out of ``replicate`` and
    ``moa``. Returns the tables by name: ``replicate_ap``, ``replicate_map``, ``activity_*``,
    ``moa_*``, ``moa_nn`` and ``summary`` (design, mAP, fraction retrieved, groups; NN accuracy per k).
    ``exact`` is passed to :func:`~subcell_scale.metrics.mean_average_precision`.
    """
    explicit = designs != "all"
    chosen = list(DESIGNS) if designs == "all" else [designs] if isinstance(designs, str) else list(designs)
    unknown = [d for d in chosen if d not in DESIGNS]
    if unknown:
        msg = f"unknown design(s) {unknown}; choose from {list(DESIGNS)} or 'all'"
        raise ProfilingError(msg)
    columns = set(adata.obs.columns)
    if plate_col is not None and plate_col not in columns:
        if explicit:
            msg = f"adata.obs has no plate column {plate_col!r}; pass plate_col=None for a single plate"
            raise ProfilingError(msg)
        plate_col = None
    control_cols = _query_columns(control_query, columns)
    has_controls = control_query is not None and control_cols is not None
    exclude = control_query if has_controls else None
    needs = {"replicate": [pert_col], "activity": [pert_col], "moa": [pert_col, moa_col]}
    common = dict(null_size=null_size, threshold=threshold, seed=seed, distance=distance, use_rep=use_rep,
                  exact=exact, return_ap=True)
    tables: dict[str, pd.DataFrame] = {}
    summary = []
    for design in chosen:
        missing = [c for c in needs[design] if c not in columns]
        if design == "activity" and not has_controls:
            missing.append(f"controls ({control_query!r})")
        if missing:
            if explicit:
                msg = f"design {design!r} needs {missing} in adata.obs"
                raise ProfilingError(msg)
            logger.info("skipping design %r: adata.obs lacks %s", design, missing)
            continue
        try:
            if design == "replicate":
                ap, res = replicate_retrieval(adata, pert_col=pert_col, plate_col=plate_col, exclude=exclude, **common)
            elif design == "activity":
                ap, res = phenotypic_activity(adata, pert_col=pert_col, control_query=control_query,
                                              plate_col=plate_col, **common)
            else:
                ap, res = moa_retrieval(adata, moa_col=moa_col, pert_col=pert_col, plate_col=plate_col,
                                        exclude=exclude, **common)
        except ProfilingError as exc:
            if explicit:
                raise
            logger.warning("design %r could not be evaluated: %s", design, exc)
            continue
        tables[f"{design}_ap"], tables[f"{design}_map"] = ap, res
        summary.append({"design": design, "metric": "mAP", "value": float(res["mean_average_precision"].mean()),
                        "n_groups": len(res)})
        summary.append({"design": design, "metric": "fraction_retrieved", "value": fraction_retrieved(res),
                        "n_groups": len(res)})
        if design == "moa":
            try:
                nn = moa_nn_accuracy(adata, moa_col=moa_col, pert_col=pert_col, plate_col=plate_col,
                                     exclude=exclude, k=k, distance=distance, use_rep=use_rep)
            except ProfilingError as exc:
                logger.warning("MoA nearest-neighbour accuracy could not be evaluated: %s", exc)
            else:
                tables["moa_nn"] = nn
                summary.extend({"design": "moa_nn", "metric": f"accuracy@{int(r.k)}", "value": float(r.accuracy),
                                "n_groups": int(r.n_queries)} for r in nn.itertuples())
    tables["summary"] = pd.DataFrame(summary, columns=["design", "metric", "value", "n_groups"])
    if out_dir is not None:
        _write_all(tables, Path(out_dir))
    return tables


def _query_columns(query: str | None, columns: set[str]) -> list[str] | None:
    """Columns a query names, or None when it names one that does not exist."""
    if query is None:
        return None
    named = query_columns(query)
    return named if named and all(c in columns for c in named) else None


def _write_all(tables: dict[str, pd.DataFrame], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for design in DESIGNS:
        for key, name in zip((f"{design}_ap", f"{design}_map"), METRIC_FILES[design]):
            if key in tables:
                write_table(tables[key], out_dir / name)
    if "moa_nn" in tables:
        write_table(tables["moa_nn"], out_dir / METRIC_FILES["moa_nn"])
    tables["summary"].to_csv(out_dir / METRIC_FILES["summary"], index=False)
    logger.info("wrote %d metric tables to %s", len(tables), out_dir)
