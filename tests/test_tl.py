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
    odd = synthetic_cells.copy()
    odd.obsm["localization"] = odd.obsm["localization"][:, :20]  # not whole blocks of the 31 classes
    with pytest.raises(ConfigError, match=r"shape \(\d+, 20\) but uns\['localization_classes'\] names 31 classes"):
        tl.top_localization(odd)
    with pytest.raises(ConfigError, match="pass_='Mito', but this AnnData holds the classes of one pass only"):
        tl.top_localization(synthetic_cells.copy(), pass_="Mito")


@pytest.fixture(scope="module")
def jump_cells(demo_plates):
    """A real jump-cellpainting run (three passes, Mito, AGP, RNA) of a small 3-channel model with a classifier."""
    from subcell_scale import embed_plate
    from subcell_scale.models import SubCell, get_variant
    from subcell_scale.models.config import ModelConfig

    plate = demo_plates(n_plates=1, n_wells=4, n_fields=1, field_size=192, seed=1, cellpainting=True)["plate"]
    config = ModelConfig(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=64, num_channels=3,
                         pool_int_dim=16)
    channels = get_variant("ER-DNA-Protein_MAE-CellS-ProtS-Pool").channels
    model = SubCell.random(config, seed=5, n_classifiers=1, channels=channels, device="cpu")
    return embed_plate(plate, model, preset="jump-cellpainting", out_size=32, progress=False)


def test_top_localization_of_a_multi_pass_run_is_one_column_per_pass(jump_cells):
    cells = jump_cells.copy()
    assert cells.obsm["localization"].shape == (cells.n_obs, 3 * len(CLASS_NAMES)) and cells.n_obs > 0
    passes = ["Mito", "AGP", "RNA"]
    assert tl.top_localization(cells) is None
    assert tl.TOP_LOCALIZATION not in cells.obs
    probs = np.asarray(cells.obsm["localization"])
    for i, name in enumerate(passes):  # pass-major: block i holds the 31 classes of pass i
        top = cells.obs[f"{tl.TOP_LOCALIZATION}_{name}"]
        expected = np.asarray(CLASS_NAMES)[probs[:, 31 * i:31 * (i + 1)].argmax(axis=1)]
        assert list(top) == list(expected)
        assert list(top.cat.categories) == [c for c in CLASS_NAMES if c in set(expected)]
    # the passes' answers differ (different stains, different classifier inputs): not one column copied
    assert len({tuple(cells.obs[f"top_localization_{p}"]) for p in passes}) > 1 or cells.n_obs == 1

    one = tl.top_localization(jump_cells, pass_="AGP", copy=True)
    assert list(one.obs[tl.TOP_LOCALIZATION]) == list(cells.obs["top_localization_AGP"])
    assert not any(k.startswith("top_localization_") for k in one.obs)
    with pytest.raises(ConfigError, match=r"no pass 'DNA'; this run's passes are \['Mito', 'AGP', 'RNA'\]"):
        tl.top_localization(jump_cells, pass_="DNA", copy=True)

    # without the provenance the var names tell the passes; without either they are numbered
    bare = jump_cells.copy()
    del bare.uns["subcell_scale"]
    tl.top_localization(bare, key_added="top")
    assert [k for k in bare.obs if k.startswith("top_")] == ["top_Mito", "top_AGP", "top_RNA"]
    bare.var_names = [f"f{i}" for i in range(bare.n_vars)]
    tl.top_localization(bare, key_added="top")
    assert {"top_pass1", "top_pass2", "top_pass3"} <= set(bare.obs)
    assert list(bare.obs["top_pass2"]) == list(cells.obs["top_localization_AGP"])


def test_a_pass_column_is_drawn_in_the_class_colours(jump_cells):
    from matplotlib.colors import to_hex

    from subcell_scale import pl
    from subcell_scale.models.registry import CLASS_COLORS

    cells = jump_cells.copy()
    tl.top_localization(cells)
    cells.obsm["X_umap"] = np.random.default_rng(0).normal(size=(cells.n_obs, 2)).astype(np.float32)
    ax = pl.umap(cells, ["top_localization_Mito"]).axes[0]
    assert ax.get_title() == "top localization Mito"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == list(cells.obs["top_localization_Mito"].cat.categories)
    handle_colors = [to_hex(h.get_markerfacecolor()) for h in ax.get_legend().legend_handles]
    assert handle_colors == [CLASS_COLORS[CLASS_NAMES.index(c)] for c in legend]


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
