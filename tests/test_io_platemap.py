"""Well names normalise one way; platemaps in any format join to wells and refuse what does not fit."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from subcell_scale.errors import PlatemapError, WellNameError
from subcell_scale.io import (
    PlatemapWarning,
    PlateWriter,
    join_platemap,
    normalize_well_name,
    open_plate,
    read_platemap,
)
from subcell_scale.io.consolidated import quiet_consolidation
from subcell_scale.io.wells import parse_well_name, row_index, row_name


@pytest.mark.parametrize(("given", "expected"), [
    ("b3", "B03"), ("B03", "B03"), ("b003", "B03"), ("A1", "A01"), ("a01", "A01"), ("P24", "P24"),
    ("B/3", "B03"), ("c_07", "C07"), (" h12 ", "H12"), ("AF48", "AF48"), ("aa1", "AA01"),
])
def test_normalize_well_name(given, expected):
    assert normalize_well_name(given) == expected


@pytest.mark.parametrize("bad", ["", "3B", "B", "B0", "ABC1", "B3x", "Ä1", "B1234"])
def test_bad_well_names(bad):
    with pytest.raises(WellNameError, match="well name"):
        normalize_well_name(bad)


def test_rows_round_trip_against_spreadsheet_letters():
    import string

    # independent oracle: spreadsheet column letters A..Z, AA..AZ, BA..
    letters = list(string.ascii_uppercase) + [a + b for a in string.ascii_uppercase for b in string.ascii_uppercase]
    for i, name in enumerate(letters[:60]):
        assert row_name(i) == name
        assert row_index(name) == i
    assert parse_well_name("af48") == ("AF", 48)


PLATEMAP = pd.DataFrame({
    "Metadata_Plate": ["P1", "P1", "P1", "P2"],
    "Metadata_Well": ["a1", "A02", "b001", "A1"],
    "Compound": ["dmso", "taxol", "dmso", "dmso"],
    "Dose": ["0", "1.5", "0", ""],
    "control_type": ["negcon", "trt", "negcon", "negcon"],
})


@pytest.mark.parametrize("fmt", ["csv", "tsv", "txt", "parquet", "frame"])
def test_read_platemap_formats(fmt, tmp_path):
    if fmt == "frame":
        source = PLATEMAP
    else:
        source = tmp_path / f"map.{fmt}"
        if fmt == "parquet":
            PLATEMAP.to_parquet(source)
        else:
            PLATEMAP.to_csv(source, sep="," if fmt == "csv" else "\t", index=False)
    frame = read_platemap(source)
    assert list(frame.columns) == ["plate", "well", "compound", "dose", "control_type"]
    assert frame["well"].tolist() == ["A01", "A02", "B01", "A01"]
    assert frame["plate"].tolist() == ["P1", "P1", "P1", "P2"]
    if fmt != "parquet":  # text columns holding numbers become numbers; parquet keeps its types
        assert frame["dose"].iloc[1] == 1.5 and pd.isna(frame["dose"].iloc[3])


def test_read_platemap_errors(tmp_path):
    with pytest.raises(PlatemapError, match="missing.csv: platemap file not found"):
        read_platemap(tmp_path / "missing.csv")
    with pytest.raises(PlatemapError, match="no well column"):
        read_platemap(pd.DataFrame({"plate": ["P1"], "compound": ["x"]}))
    with pytest.raises(PlatemapError, match=r"row 2: well 'Z-1x'"):
        read_platemap(pd.DataFrame({"well": ["A1", "Z-1x"]}))
    with pytest.raises(PlatemapError, match="more than one row for P1 A01"):
        read_platemap(pd.DataFrame({"plate": ["P1", "P1", "P2"], "well": ["a1", "A01", "A01"]}))
    (tmp_path / "map.xlsx").write_text("x")
    with pytest.raises(PlatemapError, match="unknown platemap format"):
        read_platemap(tmp_path / "map.xlsx")


def _cells():
    return pd.DataFrame({
        "plate": pd.Categorical(["P1", "P1", "P1", "P2", "P1"]),
        "well": pd.Categorical(["A01", "B01", "A01", "A01", "A02"]),
        "label": [1, 2, 3, 1, 9],
    }, index=[f"c{i}" for i in range(5)])


def test_join_keeps_rows_and_matches_a_merge():
    cells = _cells()
    joined = join_platemap(cells, PLATEMAP)
    assert joined.index.tolist() == cells.index.tolist()
    # oracle: a plain pandas merge on (plate, well) in the original order
    expected = cells.astype({"plate": str, "well": str}).merge(
        read_platemap(PLATEMAP), on=["plate", "well"], how="left")
    assert joined["compound"].tolist() == expected["compound"].tolist()
    assert joined["control_type"].tolist() == ["negcon", "negcon", "negcon", "negcon", "trt"]
    np.testing.assert_allclose(joined["dose"].to_numpy(dtype=float), expected["dose"].to_numpy(dtype=float))


def test_join_without_plate_column_applies_to_every_plate():
    layout = pd.DataFrame({"well": ["A1", "A2", "B1"], "moa": ["ctrl", "tubulin", "ctrl"]})
    joined = join_platemap(_cells(), layout)
    assert joined["moa"].tolist() == ["ctrl", "ctrl", "ctrl", "ctrl", "tubulin"]


def test_join_errors_and_warning():
    cells = _cells()
    extra = pd.concat([PLATEMAP, pd.DataFrame({"Metadata_Plate": ["P1"], "Metadata_Well": ["H12"]})])
    with pytest.raises(PlatemapError, match="not in the plate: P1 H12"):
        join_platemap(cells, extra)
    with pytest.raises(PlatemapError, match=r"columns \['label'\] already exist"):
        join_platemap(cells, PLATEMAP.assign(label=1))
    with pytest.raises(PlatemapError, match=r"has no \['plate'\] column"):
        join_platemap(cells.drop(columns="plate"), PLATEMAP)
    partial = PLATEMAP.iloc[:2]
    with pytest.warns(PlatemapWarning, match="2 plate well\\(s\\) have no platemap row: P1 B01, P2 A01"):
        joined = join_platemap(cells, partial)
    assert joined["compound"].isna().tolist() == [False, True, False, True, False]


def test_join_checks_against_the_plates_wells(tmp_path):
    path = tmp_path / "P1.zarr"
    with PlateWriter(path, name="P1", channel_names=["dna"], pixel_size=1, levels=1) as writer:
        for well in ("A01", "A02", "B01", "C05"):
            writer.write_field(well, 0, np.zeros((1, 8, 8), np.uint8))
    plate = open_plate(path)
    wells = pd.DataFrame({"plate": ["P1"] * 4, "well": plate.wells})
    layout = PLATEMAP[PLATEMAP["Metadata_Plate"] == "P1"]
    with pytest.warns(PlatemapWarning, match="P1 C05"):
        join_platemap(wells.iloc[:3], layout, plates=plate)  # C05 has no cells yet still is checked
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        join_platemap(wells.iloc[:3], layout, plates={"P1": ["A1", "A2", "B1"]})
    with pytest.raises(PlatemapError, match="P1 B01"):
        join_platemap(wells.iloc[:1], layout, plates={"P1": ["A1", "A2"]})


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data:UserWarning")  # v2 on purpose: stores users have
def test_a_platemap_of_other_plates_warns_naming_both_and_writes_no_nan_text(tmp_path):
    cells = _cells()
    other = PLATEMAP.assign(Metadata_Plate=PLATEMAP["Metadata_Plate"].map({"P1": "BR001", "P2": "BR002"}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        joined = join_platemap(cells, other)
    messages = [str(w.message) for w in caught if issubclass(w.category, PlatemapWarning)]
    assert messages == ["the platemap's plate names ['BR001', 'BR002'] match none of the plates ['P1', 'P2']: "
                        "its columns are left empty; fix the names, or drop the platemap's plate column to "
                        "apply one layout to every plate"]
    assert joined["compound"].isna().all() and joined["dose"].isna().all()
    # written and read back as scanpy users do: missing stays missing, in zarr (both formats) and h5ad alike
    adata = ad.AnnData(np.zeros((len(cells), 2), np.float32), obs=joined.astype({"well": str}))
    for zarr_format in (2, 3):
        with ad.settings.override(zarr_write_format=zarr_format, auto_shard_zarr_v3=False), quiet_consolidation():
            adata.write_zarr(tmp_path / f"cells-v{zarr_format}.zarr")
    adata.write_h5ad(tmp_path / "cells.h5ad")
    backs = [ad.read_zarr(tmp_path / f"cells-v{zarr_format}.zarr") for zarr_format in (2, 3)]
    for back in (*backs, ad.read_h5ad(tmp_path / "cells.h5ad")):
        for column in ("compound", "control_type"):
            assert back.obs[column].isna().all(), (column, back.obs[column].tolist())
        assert "nan" not in set(back.obs["compound"].astype(object).dropna())


def test_partly_described_text_columns_keep_their_values_and_missing(tmp_path):
    cells = _cells()
    with pytest.warns(PlatemapWarning):  # wells without a row (tested above)
        joined = join_platemap(cells, PLATEMAP.iloc[:2])
    assert isinstance(joined["compound"].dtype, pd.CategoricalDtype)
    assert joined["compound"].isna().tolist() == [False, True, False, True, False]
    adata = ad.AnnData(np.zeros((len(cells), 2), np.float32), obs=joined.astype({"well": str}))
    with ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=False), quiet_consolidation():
        adata.write_zarr(tmp_path / "cells.zarr")
    back = ad.read_zarr(tmp_path / "cells.zarr").obs["compound"]
    assert back.isna().tolist() == [False, True, False, True, False]
    assert back.dropna().tolist() == joined["compound"].dropna().tolist()


def test_platemap_rows_without_a_plate_name_are_named(tmp_path):
    frame = PLATEMAP.copy()
    frame.loc[1, "Metadata_Plate"] = None
    with pytest.raises(PlatemapError, match=r"row\(s\) 2 have no plate name"):
        read_platemap(frame)
    path = tmp_path / "pm.csv"
    PLATEMAP.assign(Metadata_Plate=["P1", "", "P1", "P2"]).to_csv(path, index=False)
    with pytest.raises(PlatemapError, match=r"pm.csv: row\(s\) 2 have no plate name"):
        read_platemap(path)
