"""The standard JUMP / SubCell evaluation designs on a profiles AnnData, as tidy tables.

Each function picks the copairs pair rules of a published design (see the table in
``profiling-and-metrics.md`` section 1.6), runs :func:`~subcell_scale.metrics.average_precision`
and :func:`~subcell_scale.metrics.mean_average_precision` on ``adata.obs`` and ``adata.X`` (or an
``obsm`` representation) and returns one row per perturbation (or MoA), for analyses beyond a
protocol; a protocol's whole evaluation, per cell type, is :func:`subcell_scale.metrics.evaluate_profiles`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .._anndata import representation, rows_matching
from ..errors import ProfilingError
from ._pairs import parse_labels
from ._similarity import Distance
from .map import (
    AP_COLUMNS,
    MAP_COLUMNS,
    assign_reference_index,
    average_precision,
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
    drop = rows_matching(obs, exclude, what="exclude")
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
    x = representation(adata, use_rep)
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
    obs, x = _select(obs, representation(adata, use_rep), exclude)
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
    obs, x = _select(obs, representation(adata, use_rep), exclude)
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
    obs, x = _select(obs, representation(adata, use_rep), exclude)
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
