"""tl: computations on the cells/profiles AnnData, written into it as scanpy's tools do."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from subcell_scale import tl
from subcell_scale.errors import ConfigError, ProfilingError
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
    with pytest.raises(ProfilingError, match="umap: adata.obsm has no 'X_pca'"):
        tl.umap(adata, use_rep="X_pca")


def test_representations_and_queries_read_the_same_everywhere(synthetic_cells):
    """One helper picks use_rep and one evaluates obs queries for tl, profiles and metrics alike."""
    from subcell_scale import metrics, profiles
    from subcell_scale._anndata import representation, rows_matching

    cells = synthetic_cells.copy()
    assert representation(cells).dtype == np.float64 and representation(cells, "X").shape == cells.shape
    assert representation(cells, "localization", dtype=np.float32).shape == (cells.n_obs, 31)
    for call in (lambda: representation(cells, "X_pca"), lambda: tl.umap(cells, use_rep="X_pca"),
                 lambda: metrics.replicate_retrieval(cells, use_rep="X_pca")):
        with pytest.raises(ProfilingError, match=r"obsm has no 'X_pca' \(keys: \['localization'\]\)"):
            call()
    mask = rows_matching(cells.obs, "compound == 'DMSO'")
    assert mask.sum() == (cells.obs["compound"] == "DMSO").sum() and rows_matching(cells.obs, "all").all()
    for bad in ("dose > 1", "compound"):
        with pytest.raises(ProfilingError, match="cannot evaluate|is not a condition"):
            rows_matching(cells.obs, bad)
    with pytest.raises(ProfilingError, match="normalize: reference: cannot evaluate 'dose > 1'"):
        profiles.normalize(cells, method="standardize", reference="dose > 1")
