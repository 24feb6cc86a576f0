"""Views of a cell side by side: SubCell's ``X`` and each ``obsm`` view (CellProfiler, a user's model).

Users judge an embedding against the features they already trust, so a run with views profiles and
evaluates each one alone and all of them concatenated, with one protocol: each view is aggregated
and post-processed on its own (:func:`subcell_scale.profiles.aggregate` and
:func:`~subcell_scale.profiles.postprocess` with ``use_rep``), the concatenation joins the
post-processed views (so no view's scale leaks into another's normalisation), and every view goes
through the same :func:`subcell_scale.metrics.evaluate_profiles`. The summary gains a ``view``
column; :func:`side_by_side` turns it into one table, a row per view and a column per metric.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._constants import Keys

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = ["SUBCELL", "attach_view", "cell_views", "concatenated", "evaluate_views", "side_by_side", "summary_of",
           "view_names"]

SUBCELL = "subcell"
"""The name of ``X`` (SubCell's embedding) among the views."""


def cell_views(adata: AnnData) -> list[str]:
    """The views a cells (or profiles) AnnData holds beside ``X``: ``uns["views"]`` entries found in ``obsm``."""
    return [name for name in (adata.uns.get(Keys.VIEWS) or {}) if name in adata.obsm]


def view_names(views: Sequence[str]) -> list[str]:
    """Every view a run evaluates: SubCell, each other view, and SubCell with all of them concatenated."""
    return [SUBCELL, *views, "+".join([SUBCELL, *views])] if views else [SUBCELL]


def attach_view(profiles: AnnData, view: AnnData, name: str, record: Mapping[str, Any] | None = None) -> None:
    """Put the profiles ``view`` (``X``: a view aggregated alike) into ``profiles.obsm[name]``, row by row
    on the profile names, as a DataFrame named by its ``var_names``; ``record`` (what made the view,
    from the cells' ``uns["views"]``) goes to ``profiles.uns["views"][name]``."""
    missing = profiles.obs_names.difference(view.obs_names)
    if len(missing):
        msg = f"view {name!r}: no profile for {list(missing[:5])}"
        raise ValueError(msg)
    rows = view.obs_names.get_indexer(profiles.obs_names)
    profiles.obsm[name] = pd.DataFrame(np.asarray(view.X)[rows], index=profiles.obs_names,
                                       columns=[str(v) for v in view.var_names])
    profiles.uns[Keys.VIEWS] = {**dict(profiles.uns.get(Keys.VIEWS) or {}), name: dict(record or {})}


def concatenated(profiles: AnnData, views: Sequence[str]) -> AnnData:
    """Profiles whose ``X`` is ``X`` then each view's columns (each as post-processed on its own);
    columns NaN in every profile (a feature a stratum's selection dropped) stay NaN."""
    from anndata import AnnData

    blocks = [np.asarray(profiles.X, dtype=np.float32)]
    names = [str(v) for v in profiles.var_names]
    for name in views:
        frame = profiles.obsm[name]
        blocks.append(np.asarray(frame, dtype=np.float32))
        names += [f"{name}:{c}" for c in (frame.columns if isinstance(frame, pd.DataFrame) else range(frame.shape[1]))]
    return AnnData(X=np.hstack(blocks), obs=profiles.obs.copy(), var=pd.DataFrame(index=pd.Index(names, dtype=str)),
                   uns={k: v for k, v in profiles.uns.items() if k != Keys.VIEWS})


def evaluate_views(profiles: AnnData, design: Any, out_dir: str | os.PathLike | None = None
                   ) -> dict[str, dict[str, pd.DataFrame]]:
    """Every view of ``profiles`` evaluated with one design (:func:`subcell_scale.metrics.evaluate_profiles`).

    Returns the tables per view (:func:`view_names` order). With ``out_dir``, SubCell's tables are
    written there as without views, each other view's into ``out_dir/views/<view>/``, and
    ``summary.csv`` holds every view's summary with a ``view`` column first.
    """
    from .metrics import evaluate_profiles
    from .metrics.evaluate import write_tables

    views = cell_views(profiles)
    out: dict[str, dict[str, pd.DataFrame]] = {}
    for name in view_names(views):
        if name == SUBCELL:
            adata, rep = profiles, None
        elif name in views:
            adata, rep = profiles, name
        else:
            adata, rep = concatenated(profiles, views), None
        folder = None if out_dir is None else Path(out_dir) / ("" if name == SUBCELL else f"views/{name}")
        out[name] = evaluate_profiles(adata, folder, design=dataclasses.replace(design, use_rep=rep))
    if out_dir is not None and views:
        write_tables({"summary": summary_of(out)}, out_dir)
    return out


def summary_of(tables: Mapping[str, Mapping[str, pd.DataFrame]]) -> pd.DataFrame:
    """The views' summaries stacked, with a ``view`` column first."""
    parts = [t["summary"].assign(view=name) for name, t in tables.items() if "summary" in t]
    frame = pd.concat(parts, ignore_index=True)
    return frame[["view", *[c for c in frame.columns if c != "view"]]]


def side_by_side(summary: pd.DataFrame, metrics: Sequence[str] = ("mAP", "fraction_retrieved", "accuracy@1")
                 ) -> pd.DataFrame:
    """One table from a summary with a ``view`` column: a row per view (and cell type), a column per
    design and metric (``replicate mAP``, ``moa mAP``, ``moa_nn accuracy@1`` ...)."""
    rows = summary[summary["metric"].isin(metrics)].copy()
    rows["column"] = rows["design"].astype(str) + " " + rows["metric"].astype(str)
    index = ["view", "cell_type"] if rows["cell_type"].nunique() > 1 else ["view"]
    order = list(dict.fromkeys(rows["view"]))
    table = rows.pivot_table(index=index, columns="column", values="value", sort=False)
    columns = [c for d in ("replicate", "moa", "moa_nn", "compound_nn") for m in metrics
               if (c := f"{d} {m}") in table.columns]
    table = table[columns]
    return table.reindex(order, level=0) if len(index) > 1 else table.reindex(order)
