"""CellProfiler measurements in the embedding pass: equal to cp_measure on the same field and cells,
stored beside X through the streamed store, resume and a cluster."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("cp_measure")

from cp_measure.featurizer import featurize, make_featurizer_config

from subcell_scale import embed_plate, read_cells
from subcell_scale._constants import Keys
from subcell_scale.cellprofiler import DEFAULT_GROUPS, GROUPS, resolve_groups
from subcell_scale.errors import ConfigError
from subcell_scale.io import open_plate

SMALL = {"out_size": 32}
CHEAP = ["sizeshape", "intensity", "correlation_pearson"]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every test here runs with one torch thread."""


@pytest.fixture(scope="module")
def demo(demo_plates) -> dict:
    return demo_plates(n_plates=2, n_wells=4, n_fields=1, field_size=384, cells_per_field=16, seed=0)


@pytest.fixture(scope="module")
def measured(demo, tiny_model, tmp_path_factory):
    """A run that measures the default groups, kept in a run directory."""
    out = tmp_path_factory.mktemp("cp")
    adata = embed_plate(demo["plates"], tiny_model, out=out, platemap=demo["platemap"], progress=False,
                        cellprofiler=True, **SMALL)
    return out, adata


def _direct(plate_path: str, well: str, field: str, labels: np.ndarray, groups, flat=None) -> pd.DataFrame:
    """cp_measure called as a user would: the stored field over 65535 (divided by the flat field), the
    given cells only."""
    plate = open_plate(plate_path)
    raw = np.asarray(plate.read_field(well, field))
    pixels = raw.astype(np.float64) / 65535.0
    if flat is not None:
        pixels = pixels / flat
    stored = np.asarray(plate.read_labels(well, field, "cells"))
    mask = np.where(np.isin(stored, labels), stored, 0).astype(np.int32)
    config = make_featurizer_config(list(plate.channel_names), objects=["cells"],
                                    **{g: g in groups for g in GROUPS},
                                    correlation_costes_params={"scale_max": 65535})
    data, columns, rows = featurize(pixels[None], mask[None, None], config)
    return pd.DataFrame(data, columns=columns, index=[int(r[2]) for r in rows])


def _check_field(adata, plate_path: str, plate: str, well: str, groups, flat=None) -> int:
    rows = (adata.obs["plate"].astype(str) == plate).to_numpy() & (adata.obs["well"].astype(str) == well).to_numpy()
    labels = adata.obs["label"].to_numpy()[rows]
    ours = adata.obsm[Keys.CELLPROFILER].iloc[np.flatnonzero(rows)]
    direct = _direct(plate_path, well, "0", labels, groups, flat).loc[labels]
    assert list(ours.columns) == list(direct.columns)
    np.testing.assert_allclose(ours.to_numpy(np.float64), direct.to_numpy(), rtol=1e-6, atol=1e-6)
    return len(labels)


def test_groups_are_named_and_checked():
    assert resolve_groups(False) == () and resolve_groups(None) == ()
    assert resolve_groups(True) == DEFAULT_GROUPS
    assert resolve_groups("all") == GROUPS
    assert resolve_groups(["texture", "intensity"]) == ("intensity", "texture")  # cp_measure's order
    with pytest.raises(ConfigError, match="unknown feature group.*'granular'"):
        resolve_groups(["granular"])


def test_each_kept_cell_is_measured_as_cp_measure_measures_it(demo, measured):
    _, adata = measured
    view = adata.obsm[Keys.CELLPROFILER]
    assert isinstance(view, pd.DataFrame) and list(view.index) == list(adata.obs_names)
    assert {"Area", "Intensity_MeanIntensity__dna", "MaxFeretDiameter",
            "AngularSecondMoment_3_00_256__protein"} <= set(view.columns)
    assert list(adata.uns[Keys.VIEWS][Keys.CELLPROFILER]["groups"]) == list(DEFAULT_GROUPS)
    checked = sum(_check_field(adata, path, f"demo-plate-{i + 1}", well, DEFAULT_GROUPS)
                  for i, path in enumerate(demo["plates"]) for well in ("A01", "A04"))
    assert checked > 10
    # the area CellProfiler measures is the one the filter kept the cell by
    np.testing.assert_array_equal(view["Area"].to_numpy(), adata.obs["area"].to_numpy())


def test_the_view_streams_into_the_store_and_resumes(demo, measured, tiny_model):
    out, adata = measured
    back = read_cells(out)
    pd.testing.assert_frame_equal(back.obsm[Keys.CELLPROFILER], adata.obsm[Keys.CELLPROFILER])
    loaded = read_cells(out, load=True)
    pd.testing.assert_frame_equal(loaded.obsm[Keys.CELLPROFILER], adata.obsm[Keys.CELLPROFILER])
    one = read_cells(out, plates=["demo-plate-2"])
    assert one.obsm[Keys.CELLPROFILER].shape[0] == one.n_obs > 0
    # a view above the memory budget stays in the store, and profiles the same
    from subcell_scale import settings
    from subcell_scale.profiles import aggregate

    previous = settings.memory_budget
    settings.memory_budget = 1000
    try:
        lazy = read_cells(out)
    finally:
        settings.memory_budget = previous
    assert not isinstance(lazy.obsm[Keys.CELLPROFILER], pd.DataFrame)
    a, b = aggregate(lazy, use_rep=Keys.CELLPROFILER), aggregate(back, use_rep=Keys.CELLPROFILER)
    assert list(a.var_names) == list(b.var_names) == list(back.obsm[Keys.CELLPROFILER].columns)
    np.testing.assert_array_equal(a.X, b.X)
    shards = sorted((out / "shards").rglob("*.npz"))
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    again = embed_plate(demo["plates"], tiny_model, out=out, platemap=demo["platemap"], progress=False,
                        cellprofiler=True, **SMALL)
    assert all(p.stat().st_mtime_ns == stamps[p] for p in shards)  # resumed: nothing measured again
    pd.testing.assert_frame_equal(again.obsm[Keys.CELLPROFILER], adata.obsm[Keys.CELLPROFILER])


def test_in_memory_cluster_and_flat_field_runs(demo, measured, tiny_spec, tiny_model, local_client, tmp_path):
    _, adata = measured
    on_cluster = embed_plate(demo["plates"], tiny_spec, client=local_client, platemap=demo["platemap"],
                             progress=False, cellprofiler=True, **SMALL)
    pd.testing.assert_frame_equal(on_cluster.obsm[Keys.CELLPROFILER], adata.obsm[Keys.CELLPROFILER])
    corrected = embed_plate(demo["plate"], tiny_model, out=tmp_path / "flat", progress=False, cellprofiler=CHEAP,
                            illumination="estimate", **SMALL)
    flat = np.load(tmp_path / "flat" / "flatfield" / "demo-plate-1.npy").astype(np.float64)
    assert _check_field(corrected, demo["plate"], "demo-plate-1", "A01", CHEAP, flat) > 0
    plain = embed_plate(demo["plate"], tiny_model, progress=False, **SMALL)
    assert Keys.CELLPROFILER not in plain.obsm and Keys.VIEWS not in plain.uns


def test_shapes_agree_with_cellprofiler_on_a_real_site():
    """CellProfiler's own AreaShape measurements of 5 cells of a real Cell Painting site (masks rebuilt
    from its outlines): the shape groups agree; run ``benchmarks/cellprofiler_real.py`` for the table.
    The site's folder is named by ``SUBCELL_SCALE_CP_SITE`` (see the script)."""
    import os
    import sys
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(benchmarks))
    try:
        import cellprofiler_real
    finally:
        sys.path.remove(str(benchmarks))
    site = Path(os.environ.get("SUBCELL_SCALE_CP_SITE", ""))
    if not os.environ.get("SUBCELL_SCALE_CP_SITE") or not site.is_dir():
        pytest.skip("SUBCELL_SCALE_CP_SITE names no real Cell Painting site")
    table, _ = cellprofiler_real.compare(site)
    found = cellprofiler_real.agreement(table)
    for compartment in ("Cells", "Nuclei"):
        assert found.loc[(compartment, "sizeshape"), "median_rel_diff"] < 0.002
        assert found.loc[(compartment, "sizeshape"), "within_5pct"] > 0.95
        assert found.loc[(compartment, "feret"), "within_5pct"] == 1.0
        assert found.loc[(compartment, "zernike"), "median_abs_diff"] < 0.002
    areas = table[table["feature"] == "Area"]
    np.testing.assert_allclose(areas["ours"], areas["cellprofiler"], rtol=0.01)


@pytest.mark.slow
def test_every_group_equals_cp_measure_on_a_field(demo):
    """All of cp_measure's groups (the slow ones too) through measure_cells, on a few cells of a field."""
    from subcell_scale.cellprofiler import cellprofiler_pixels, measure_cells

    plate = open_plate(demo["plate"])
    raw = np.asarray(plate.read_field("A01", "0"))
    labels = np.asarray(plate.read_labels("A01", "0", "cells")).astype(np.int32)
    labels = np.where(np.isin(labels, np.unique(labels)[1:5]), labels, 0)  # four cells keep Costes quick
    ours = measure_cells(cellprofiler_pixels(raw), labels, list(plate.channel_names), GROUPS)
    config = make_featurizer_config(list(plate.channel_names), objects=["cells"],
                                    correlation_costes_params={"scale_max": 65535})
    data, columns, rows = featurize(raw[None].astype(np.float64) / 65535, labels[None, None], config)
    direct = pd.DataFrame(data, columns=columns, index=[int(r[2]) for r in rows]).sort_index()
    assert list(ours.columns) == list(direct.columns) and len(ours.columns) > 400
    np.testing.assert_allclose(ours.to_numpy(), direct.to_numpy(), rtol=1e-6, atol=1e-6, equal_nan=True)
