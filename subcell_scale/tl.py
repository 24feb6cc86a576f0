"""Computations on the cells or profiles AnnData whose results :mod:`subcell_scale.pl` draws.

As in scanpy, each function takes ``adata`` first, writes its result into it (``key_added``) and
returns None, or works on and returns a copy with ``copy=True``::

    ss.tl.top_localization(cells)                 # obs["top_localization"] (per pass: "top_localization_Mito", ...)
    ss.tl.umap(cells)                             # obsm["X_umap"]
    ss.pl.umap(cells, ["compound", "top_localization"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._anndata import representation
from ._constants import VAR_PREFIX, Keys
from ._docs import doc_params
from .errors import ConfigError
from .models.registry import CLASS_NAMES

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

TOP_LOCALIZATION = "top_localization"
"""Default ``obs`` key of :func:`top_localization`."""
UMAP = "X_umap"
"""Default ``obsm`` key of :func:`umap` (scanpy's)."""

__all__ = ["TOP_LOCALIZATION", "UMAP", "top_localization", "umap"]


@doc_params
def top_localization(adata: AnnData, *, pass_: str | None = None, key_added: str = TOP_LOCALIZATION,
                     copy: bool = False) -> AnnData | None:
    """The most probable localization class of each cell, from ``obsm['localization']``.

    Categories keep the classifier's class order, so legends list classes the way the model does.

    A multi-pass run (``jump-cellpainting``: the ER-DNA-protein model once per Cell Painting stain in
    the protein channel, Mito, AGP and RNA) holds one block of classes per pass, pass after pass
    (``uns['subcell_scale']['localization_layout']``). Each pass then gets its own column,
    ``obs[f"{key_added}_{pass}"]`` (``top_localization_Mito``, ``top_localization_AGP``, ...): the
    passes show the model different stains, so their top classes are not merged into one. Pass names
    are read from ``uns['subcell_scale']['passes']``, else from the var names
    (``subcell_<pass>_0000``), else numbered (``pass1``, ...).

    Parameters
    ----------
    {tl_adata}
        It needs ``obsm['localization']`` (embedded with classifiers).
    pass_
        With a multi-pass run, the one pass whose top class goes into ``obs[key_added]`` (e.g.
        ``"Mito"``), instead of a column per pass.
    key_added
        ``obs`` key of the result (single pass, or ``pass_``), or the prefix of the per-pass columns.
    {tl_copy}

    Returns
    -------
    None, or a copy with ``copy=True``; sets ``obs[key_added]``, or one ``obs[f"{key_added}_{pass}"]``
    per pass of a multi-pass run (categorical class names).

    Raises
    ------
    ConfigError
        No ``obsm['localization']`` (embedded without classifiers), one whose width is not a whole
        number of blocks of the classes in ``uns['localization_classes']``, or a ``pass_`` the run
        does not have.
    """
    adata = adata.copy() if copy else adata
    if Keys.LOCALIZATION not in adata.obsm:
        msg = (f"this AnnData has no obsm['{Keys.LOCALIZATION}'] (embedded without classifiers?); "
               f"colour by an obs column instead of '{TOP_LOCALIZATION}'")
        raise ConfigError(msg)
    probs = np.asarray(adata.obsm[Keys.LOCALIZATION])
    classes = list(adata.uns.get(Keys.LOCALIZATION_CLASSES, CLASS_NAMES))
    if probs.ndim != 2 or not classes or probs.shape[1] % len(classes) or not probs.shape[1]:
        msg = (f"obsm['{Keys.LOCALIZATION}'] has shape {probs.shape} but uns['{Keys.LOCALIZATION_CLASSES}'] "
               f"names {len(classes)} classes (one block of them per pass)")
        raise ConfigError(msg)
    n_passes = probs.shape[1] // len(classes)
    if n_passes == 1:
        if pass_ is not None:
            msg = f"top_localization: pass_={pass_!r}, but this AnnData holds the classes of one pass only"
            raise ConfigError(msg)
        adata.obs[key_added] = _top(probs, classes)
        return adata if copy else None
    passes = _pass_names(adata, n_passes)
    if pass_ is not None and pass_ not in passes:
        msg = f"top_localization: no pass {pass_!r}; this run's passes are {passes}"
        raise ConfigError(msg)
    width = len(classes)
    for i, name in enumerate(passes):
        if pass_ is None or name == pass_:
            key = key_added if pass_ is not None else f"{key_added}_{name}"
            adata.obs[key] = _top(probs[:, i * width:(i + 1) * width], classes)
    return adata if copy else None


def _top(probs: np.ndarray, classes: list[str]) -> pd.Categorical:
    top = np.asarray(classes, dtype=object)[probs.argmax(axis=1)]
    return pd.Categorical(top, categories=[c for c in classes if c in set(top)])


def _pass_names(adata: AnnData, n_passes: int) -> list[str]:
    """The names of a multi-pass run's passes: from the provenance, the var names, or numbered."""
    recorded = adata.uns.get(Keys.PROVENANCE, {}).get("passes")
    if recorded is not None and len(recorded) == n_passes:
        return [str(p) for p in recorded]
    from_vars = list(dict.fromkeys(
        name[len(VAR_PREFIX):].rsplit("_", 1)[0] for name in map(str, adata.var_names)
        if name.startswith(VAR_PREFIX) and name.count("_") >= 2))
    if len(from_vars) == n_passes:
        return from_vars
    return [f"pass{i + 1}" for i in range(n_passes)]


@doc_params
def umap(adata: AnnData, *, use_rep: str = "X", n_neighbors: int = 15, random_state: int = 0,
         key_added: str = UMAP, copy: bool = False) -> AnnData | None:
    """UMAP coordinates of cells or well profiles, from a neighbour graph on ``use_rep``.

    Runs ``sc.pp.neighbors`` + ``sc.tl.umap`` on a scratch object, so only the coordinates are written
    back (no ``obsp`` or ``uns['neighbors']``): the AnnData stays as the pipeline wrote it apart from
    the new ``obsm`` entry.

    Parameters
    ----------
    {tl_adata}
    use_rep
        ``"X"`` (the embedding or profile features) or an ``obsm`` key.
    n_neighbors
        Neighbours of the graph (capped below the number of rows).
    random_state
        Seed of the graph and the layout.
    key_added
        ``obsm`` key of the result (scanpy's).
    {tl_copy}

    Returns
    -------
    None, or a copy with ``copy=True``; sets ``obsm[key_added]`` (float32, n x 2).
    """
    import anndata as ad
    import scanpy as sc

    adata = adata.copy() if copy else adata
    rep = representation(adata, use_rep, dtype=np.float32, what="umap")
    if rep.shape[0] < 3:
        msg = f"umap: need at least 3 rows for a UMAP, found {rep.shape[0]}"
        raise ConfigError(msg)
    work = ad.AnnData(X=np.zeros((rep.shape[0], 0), dtype=np.float32), obsm={"rep": rep})
    sc.pp.neighbors(work, use_rep="rep", n_neighbors=max(2, min(n_neighbors, rep.shape[0] - 1)),
                    random_state=random_state)
    sc.tl.umap(work, random_state=random_state)
    adata.obsm[key_added] = work.obsm["X_umap"].astype(np.float32)
    return adata if copy else None
