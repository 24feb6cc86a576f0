"""Figures: every plot renders a non-blank PNG of the expected size and draws the numbers it was given."""

from __future__ import annotations

import math

import anndata as ad
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure

from subcell_scale import pl, tl
from subcell_scale.errors import ConfigError
from subcell_scale.models.registry import CLASS_COLORS, CLASS_NAMES

from _shared import COMPOUNDS


def _check_png(path, fig: Figure) -> np.ndarray:
    """The saved image has the figure's pixel size and real content (not one flat colour)."""
    image = mpimg.imread(path)
    width, height = fig.get_size_inches() * pl.DPI
    assert image.shape[:2] == (round(height), round(width))
    rgb = image[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.05
    assert len(np.unique(np.round(rgb * 255).astype(np.uint8), axis=0)) > 20
    return image


@pytest.fixture(scope="module")
def cells(synthetic_cells) -> ad.AnnData:
    return synthetic_cells.copy()


@pytest.fixture(scope="module")
def cells_with_umap(cells) -> ad.AnnData:
    adata = cells.copy()
    tl.umap(adata, n_neighbors=10)
    tl.top_localization(adata)
    return adata


# -- plate heatmaps ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("wells", "expected"), [
    (["A1", "H12"], 96), (["B03", "P24"], 384), (["I1"], 384), (["A13"], 384), (["AF48", "A1"], 1536),
])
def test_plate_layout(wells, expected):
    assert pl.plate_layout(wells) == expected


def test_plate_layout_too_large():
    with pytest.raises(ConfigError, match="1536"):
        pl.plate_layout(["AG1"])


def test_cells_per_well_grid_matches_counts(cells, tmp_path):
    fig = pl.cells_per_well(cells, save=tmp_path / "cells.png")
    _check_png(tmp_path / "cells.png", fig)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_xlabel() for ax in panels] == ["P1", "P2"]
    counts = cells.obs.groupby(["plate", "well"], observed=True).size()
    for ax in panels:
        grid = ax.images[0].get_array()
        assert grid.shape == (8, 12)
        expected = np.ma.masked_all((8, 12))
        for well, n in counts[ax.get_xlabel()].items():
            expected[ord(well[0]) - 65, int(well[1:]) - 1] = n
        assert np.array_equal(grid.mask, expected.mask)  # empty wells stay empty, not zero
        assert np.array_equal(grid.compressed(), expected.compressed())
    texts = {t.get_text() for t in panels[0].texts}
    assert str(counts["P1"]["B02"]) in texts


def test_plate_heatmap_sums_per_field_qc(tmp_path):
    fields = pd.DataFrame({
        "plate": ["P1"] * 6, "well": ["B3", "B03", "C5", "C5", "p24", "P24"], "field": ["0", "1"] * 3,
        "failed": [True, True, False, True, False, False], "n_dropped": [1, 2, 3, 4, 5, 6],
    })
    fig = pl.plate_heatmap(fields, "failed", title="Failed fields", save=tmp_path / "failed.png")
    _check_png(tmp_path / "failed.png", fig)
    grid = fig.axes[0].images[0].get_array()
    assert grid.shape == (16, 24)  # P24 makes it a 384-well plate
    assert grid[1, 2] == 2 and grid[2, 4] == 1 and grid[15, 23] == 0
    assert grid.count() == 3
    mean = pl.plate_heatmap(fields, "n_dropped", agg="mean").axes[0].images[0].get_array()
    assert mean[1, 2] == 1.5 and mean[15, 23] == 5.5


def test_plate_heatmap_bad_input():
    frame = pd.DataFrame({"well": ["B03"], "x": [1]})
    with pytest.raises(ConfigError, match="column 'n_cells' not found.*well, x"):
        pl.plate_heatmap(frame, "n_cells")
    with pytest.raises(ConfigError, match="well name 'Z'"):
        pl.plate_heatmap(pd.DataFrame({"well": ["Z"]}))
    with pytest.raises(ConfigError, match="agg must be one of"):
        pl.plate_heatmap(frame, "x", agg="total")
    with pytest.raises(ConfigError, match="outside the 96-well layout"):
        pl.plate_heatmap(pd.DataFrame({"well": ["P24"]}), layout=96)


# -- colours ----------------------------------------------------------------------------------------


def test_category_colors_are_stable_and_grey_for_controls():
    a = pl.category_colors(["taxol", "DMSO", "brefeldin", "taxol"])
    b = pl.category_colors(pd.Series(["brefeldin", "taxol", "DMSO"]).sample(frac=1, random_state=1))
    assert a == b
    assert a["DMSO"] == "#b0b0b0"
    assert len(set(a.values())) == 3
    many = pl.category_colors([f"c{i}" for i in range(30)])
    assert len(set(many.values())) == 30


# -- cell gallery -----------------------------------------------------------------------------------


def test_composite_uses_the_hpa_colours():
    crop = np.zeros((4, 8, 8), dtype=np.float32)
    crop[3, 2:6, 2:6] = 1.0  # protein only -> green
    rgb = pl.composite(crop, ["microtubules", "er", "nucleus", "protein"])
    assert rgb.shape == (8, 8, 3)
    assert np.allclose(rgb[3, 3], [0, 1, 0]) and np.allclose(rgb[0, 0], 0)
    crop = np.zeros((4, 8, 8), dtype=np.uint16)
    crop[1, 2:6, 2:6] = 1000  # ER only -> yellow
    crop[0, 0:2, 0:2] = 500  # microtubules -> red
    rgb = pl.composite(crop, ["microtubules", "er", "nucleus", "protein"])
    assert np.allclose(rgb[3, 3], [1, 1, 0]) and np.allclose(rgb[0, 0], [1, 0, 0])
    with pytest.raises(ConfigError, match="does not match 3 channel names"):
        pl.composite(crop, ["a", "b", "c"])


def _crops(n: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    crops = np.stack([(r < size * 0.4) * rng.random((size, size)) for _ in range(4 * n)]).reshape(n, 4, size, size)
    crops[:, 2] *= r < size * 0.2
    return crops.astype(np.float32)


def test_cell_gallery_shows_crops_attention_and_top_classes(tmp_path):
    n, rng = 6, np.random.default_rng(2)
    probs = rng.random((n, 31)).astype(np.float32)
    attention = rng.random((n, 2, 2, 2)).astype(np.float32)
    titles = [f"B03/0 #{i}" for i in range(n)]
    fig = pl.cell_gallery(_crops(n), attention, probs, class_names=CLASS_NAMES, titles=titles, n_top=2, ncols=3,
                          save=tmp_path / "gallery.png")
    _check_png(tmp_path / "gallery.png", fig)
    assert len([ax for ax in fig.axes if ax.images]) == 2 * n
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    for i in range(n):
        first, second = np.argsort(probs[i])[::-1][:2]
        assert f"{CLASS_NAMES[first]} {probs[i, first]:.2f}" in texts
        assert f"{CLASS_NAMES[second]} {probs[i, second]:.2f}" in texts
    # the class dot uses the reference colour of the top class
    dots = [t for t in fig.axes[0].texts if t.get_text() == "\u25cf"]
    assert to_hex(dots[0].get_color()) == CLASS_COLORS[int(np.argmax(probs[0]))]
    # the attention panel is the upsampled mean over heads, min-max scaled
    overlay = fig.axes[1].images[1].get_array()
    assert overlay.shape == (32, 32)
    assert overlay.min() == 0 and overlay.max() == 1
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["microtubules", "ER", "nucleus (DNA)", "protein"]


def test_cell_gallery_without_model_outputs(tmp_path):
    fig = pl.cell_gallery(_crops(3), None, None, max_cells=2, save=tmp_path / "g.png")
    _check_png(tmp_path / "g.png", fig)
    assert len([ax for ax in fig.axes if ax.images]) == 2


def test_cell_gallery_checks_shapes():
    with pytest.raises(ConfigError, match="pool_attention must be"):
        pl.cell_gallery(_crops(2), np.zeros((3, 2, 2, 2)), None)
    with pytest.raises(ConfigError, match="probabilities must be \\(N, 31\\)"):
        pl.cell_gallery(_crops(2), None, np.zeros((2, 30)))
    with pytest.raises(ConfigError, match="\\(N, C, H, W\\)"):
        pl.cell_gallery(np.zeros((4, 8, 8)), None, None)


# -- UMAP -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_umap_panels_legends_and_colours(cells_with_umap, tmp_path):
    adata = cells_with_umap
    fig = pl.umap(adata, ["compound", "moa", tl.TOP_LOCALIZATION], ncols=3, save=tmp_path / "umap.png")
    _check_png(tmp_path / "umap.png", fig)
    panels = [ax for ax in fig.axes if ax.collections]
    assert [ax.get_title() for ax in panels] == ["compound", "moa", "top localization"]
    palette = pl.category_colors(adata.obs["compound"])
    legend = panels[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == sorted(COMPOUNDS)
    points = panels[0].collections[0]
    assert np.allclose(points.get_offsets(), adata.obsm["X_umap"][np.random.default_rng(0).permutation(adata.n_obs)])
    colors = [to_hex(c) for c in points.get_facecolors()]
    order = np.random.default_rng(0).permutation(adata.n_obs)
    assert colors == [palette[c] for c in adata.obs["compound"].to_numpy()[order]]
    loc_legend = [t.get_text() for t in panels[2].get_legend().get_texts()]
    assert loc_legend == list(adata.obs[tl.TOP_LOCALIZATION].cat.categories)
    handle_colors = [to_hex(h.get_markerfacecolor()) for h in panels[2].get_legend().legend_handles]
    assert handle_colors == [CLASS_COLORS[CLASS_NAMES.index(c)] for c in loc_legend]


@pytest.mark.slow
def test_umap_many_categories_drop_the_legend(cells_with_umap):
    adata = cells_with_umap.copy()
    adata.obs["cell_id"] = [f"id{i:03d}" for i in range(adata.n_obs)]
    ax = pl.umap(adata, "cell_id").axes[0]
    assert ax.get_legend() is None
    assert ax.get_title() == f"cell id ({adata.n_obs} values, no legend)"
    assert adata.n_obs > pl.MAX_LEGEND_ENTRIES


@pytest.mark.slow
def test_umap_numeric_column_gets_a_colorbar(cells_with_umap):
    fig = pl.umap(cells_with_umap, "area")
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)


@pytest.mark.slow
def test_umap_of_profiles(cells, tmp_path):
    frame = pd.DataFrame(cells.X, index=cells.obs_names)
    keys = [cells.obs["plate"].astype(str), cells.obs["well"].astype(str)]
    x = frame.groupby(keys).median()
    obs = cells.obs.groupby(["plate", "well"], observed=True)[["compound", "moa"]].first().reset_index()
    obs.index = obs.index.astype(str)
    profiles = ad.AnnData(X=x.to_numpy(np.float32), obs=obs)
    tl.umap(profiles)
    fig = pl.umap(profiles, ["compound", "moa"], save=tmp_path / "profiles.png")
    _check_png(tmp_path / "profiles.png", fig)
    assert fig._suptitle.get_text() == f"UMAP of {profiles.n_obs} profiles"


@pytest.mark.slow
def test_umap_draws_only_what_tl_computed(cells, cells_with_umap):
    with pytest.raises(ConfigError, match="'dose' is not an obs column"):
        pl.umap(cells_with_umap, "dose")
    with pytest.raises(ConfigError, match=r"no obsm\['X_umap'\]; compute it with subcell_scale.tl.umap"):
        pl.umap(cells, "compound")
    bare = cells.copy()
    bare.obsm["X_umap"] = cells_with_umap.obsm["X_umap"]
    with pytest.raises(ConfigError, match="run subcell_scale.tl.top_localization"):
        pl.umap(bare, tl.TOP_LOCALIZATION)
    assert "X_umap" not in cells.obsm and "top_localization" not in cells.obs


# -- retrieval metrics ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def map_tables() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(3)

    def table(n):
        return pd.DataFrame({"compound": [f"c{i}" for i in range(n)], "mean_average_precision": rng.random(n),
                             "corrected_p_value": 10 ** (-3 * rng.random(n))})
    return {"replicate": table(30), "moa": table(12)}


def test_map_scatter(map_tables, tmp_path):
    fig = pl.map_scatter(map_tables, save=tmp_path / "map.png")
    _check_png(tmp_path / "map.png", fig)
    for ax, (name, table) in zip(fig.axes, map_tables.items(), strict=True):
        hits = int((table["corrected_p_value"] < 0.05).sum())
        assert ax.get_title() == f"{name}: fraction retrieved {hits / len(table):.2f} ({hits}/{len(table)})"
        assert math.isclose(ax.lines[0].get_ydata()[0], -math.log10(0.05))
        offsets = np.concatenate([c.get_offsets() for c in ax.collections])
        assert len(offsets) == len(table)
        assert np.allclose(np.sort(offsets[:, 1]), np.sort(-np.log10(table["corrected_p_value"])))


def test_map_scatter_long_table_and_missing_column(map_tables):
    long = pd.concat([t.assign(design=k) for k, t in map_tables.items()])
    fig = pl.map_scatter(long, by="design", threshold=0.1)
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["replicate", "moa"]
    with pytest.raises(ConfigError, match="corrected_p_value"):
        pl.map_scatter(pd.DataFrame({"mean_average_precision": [0.5]}))


def test_fraction_retrieved(map_tables, tmp_path):
    fig = pl.fraction_retrieved(map_tables, save=tmp_path / "frac.png")
    _check_png(tmp_path / "frac.png", fig)
    heights = [p.get_height() for p in fig.axes[0].patches]
    expected = [float((t["corrected_p_value"] < 0.05).mean()) for t in map_tables.values()]
    assert np.allclose(heights, expected)
    palette = pl.category_colors(list(map_tables))
    assert [to_hex(p.get_facecolor()) for p in fig.axes[0].patches] == [palette[k] for k in map_tables]


def test_nn_accuracy_lines_per_rule(tmp_path):
    table = pd.DataFrame({
        "rule": ["not same compound"] * 3 + ["not same compound or plate"] * 3,
        "k": [5, 1, 3] * 2, "accuracy": [0.5, 0.8, 0.6, 0.4, 0.7, 0.5],
        "n_queries": 20, "n_hits": 0,
    })
    fig = pl.nn_accuracy(table, by="rule", chance=0.25, save=tmp_path / "nn.png")
    _check_png(tmp_path / "nn.png", fig)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert set(lines) == {"not same compound", "not same compound or plate", "chance (0.25)"}
    assert list(lines["not same compound"].get_xdata()) == [1, 3, 5]
    assert list(lines["not same compound"].get_ydata()) == [0.8, 0.6, 0.5]
    assert to_rgb(lines["not same compound"].get_color()) != to_rgb(lines["not same compound or plate"].get_color())
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["not same compound", "not same compound or plate"]
