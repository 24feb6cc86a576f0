"""Computations on the cells or profiles AnnData whose results :mod:`subcell_scale.pl` draws.

As in scanpy, each function takes ``adata`` first, writes its result into it (``key_added``) and
returns None, or works on and returns a copy with ``copy=True``::

    ss.tl.top_localization(cells)                 # obs["top_localization"]
    ss.tl.umap(cells)                             # obsm["X_umap"]
    ss.pl.umap(cells, ["compound", "top_localization"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._anndata import representation
from ._constants import Keys
from .errors import ConfigError
from .models.registry import CLASS_NAMES

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

TOP_LOCALIZATION = "top_localization"
"""Default ``obs`` key of :func:`top_localization`."""
UMAP = "X_umap"
"""Default ``obsm`` key of :func:`umap` (scanpy's)."""

__all__ = ["TOP_LOCALIZATION", "UMAP", "top_localization", "umap"]


def top_localization(adata: AnnData, *, key_added: str = TOP_LOCALIZATION, copy: bool = False) -> AnnData | None:
    """The most probable localization class of each cell, from ``obsm['localization']``.

    Categories keep the classifier's class order, so legends list classes the way the model does.
    Multi-pass runs (JUMP: 31 classes per pass) have one block of classes per pass; take one pass's
    block into its own AnnData first.

    Returns
    -------
    None, or a copy with ``copy=True``; sets ``obs[key_added]`` (categorical class names).

    Raises
    ------
    ConfigError
        No ``obsm['localization']`` (embedded without classifiers), or one whose width is not the
        number of classes in ``uns['localization_classes']``.
    """
    adata = adata.copy() if copy else adata
    if Keys.LOCALIZATION not in adata.obsm:
        msg = (f"this AnnData has no obsm['{Keys.LOCALIZATION}'] (embedded without classifiers?); "
               f"colour by an obs column instead of '{TOP_LOCALIZATION}'")
        raise ConfigError(msg)
    probs = np.asarray(adata.obsm[Keys.LOCALIZATION])
    classes = list(adata.uns.get(Keys.LOCALIZATION_CLASSES, CLASS_NAMES))
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        msg = (f"obsm['{Keys.LOCALIZATION}'] has shape {probs.shape} but uns['{Keys.LOCALIZATION_CLASSES}'] "
               f"names {len(classes)} classes")
        raise ConfigError(msg)
    top = np.asarray(classes, dtype=object)[probs.argmax(axis=1)]
    adata.obs[key_added] = pd.Categorical(top, categories=[c for c in classes if c in set(top)])
    return adata if copy else None


def umap(adata: AnnData, *, use_rep: str = "X", n_neighbors: int = 15, random_state: int = 0,
         key_added: str = UMAP, copy: bool = False) -> AnnData | None:
    """UMAP coordinates of cells or well profiles, from a neighbour graph on ``use_rep``.

    Runs ``sc.pp.neighbors`` + ``sc.tl.umap`` on a scratch object, so only the coordinates are written
    back (no ``obsp`` or ``uns['neighbors']``): the AnnData stays as the pipeline wrote it apart from
    the new ``obsm`` entry.

    Parameters
    ----------
    use_rep
        ``"X"`` (the embedding or profile features) or an ``obsm`` key.
    n_neighbors
        Neighbours of the graph (capped below the number of rows).
    random_state
        Seed of the graph and the layout.

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
