"""tl: computations on the cells/profiles AnnData, written into it as scanpy's tools do."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from subcell_scale import tl
from subcell_scale.errors import ConfigError
from subcell_scale.models.registry import CLASS_NAMES


def test_top_localization_is_the_argmax(synthetic_cells):
    cells = synthetic_cells.copy()
    assert tl.top_localization(cells) is None
    top = cells.obs[tl.TOP_LOCALIZATION]
    expected = np.asarray(CLASS_NAMES)[cells.obsm["localization"].argmax(axis=1)]
    assert list(top) == list(expected)
    assert list(top.cat.categories) == [c for c in CLASS_NAMES if c in set(expected)]
    copy = tl.top_localization(synthetic_cells, key_added="top", copy=True)
    assert list(copy.obs["top"]) == list(expected) and "top" not in synthetic_cells.obs


def test_top_localization_needs_probabilities(synthetic_cells):
    bare = ad.AnnData(X=synthetic_cells.X.copy(), obs=synthetic_cells.obs.copy())
    with pytest.raises(ConfigError, match="no obsm\\['localization'\\]"):
        tl.top_localization(bare)
    wide = synthetic_cells.copy()
    wide.obsm["localization"] = np.hstack([wide.obsm["localization"]] * 3)  # a three-pass run
    with pytest.raises(ConfigError, match="names 31 classes"):
        tl.top_localization(wide)


def test_umap_writes_only_coordinates(synthetic_cells):
    adata = tl.umap(synthetic_cells, n_neighbors=10, copy=True)
    xy = adata.obsm["X_umap"]
    assert xy.shape == (adata.n_obs, 2) and np.isfinite(xy).all()
    assert "X_umap" not in synthetic_cells.obsm
    assert "neighbors" not in adata.uns and len(adata.obsp) == 0
    # neighbours in the embedding stay neighbours: most cells' nearest UMAP neighbour shares the compound
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    same = adata.obs["compound"].to_numpy()[d.argmin(1)] == adata.obs["compound"].to_numpy()
    assert same.mean() > 0.9
    with pytest.raises(ConfigError, match="use_rep 'X_pca'"):
        tl.umap(adata, use_rep="X_pca")
