"""Platemaps: which perturbation is in which well, read from CSV, TSV or parquet and joined to wells.

Column names are lower-cased and stripped; the usual spellings of the well and plate columns
(``Metadata_Well``, ``well_position``, ``Metadata_Plate``, ...) become ``well`` and ``plate``, and
well names are normalised ("a1" -> "A01"), so a platemap written by any tool joins to any plate.
A platemap row for a well the plate does not have, or two rows for one well, is an error naming
them: either means the platemap belongs to another layout, and joining anyway would silently
mislabel cells. Plate wells without a platemap row only warn (:class:`PlatemapWarning`); their
platemap columns stay empty, as does every column when the platemap's plate names match none of
the plates (a warning naming both). Text columns join as categoricals, so an empty value stays
missing in the files written (an object column of missing values is written as the text "nan").
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..errors import PlatemapError, WellNameError
from .wells import normalize_well_name

if TYPE_CHECKING:
    from .plate import Plate

logger = logging.getLogger(__name__)

WELL_ALIASES = ("well", "metadata_well", "well_position", "metadata_well_position", "wellname", "well_name")
PLATE_ALIASES = ("plate", "metadata_plate", "plate_name", "metadata_plate_name", "barcode", "plate_barcode")


class PlatemapWarning(UserWarning):
    """Plate wells without a platemap row, or a platemap naming none of the plates (columns left empty)."""


def _read_file(path: Path) -> pd.DataFrame:
    suffixes = "".join(path.suffixes[-2:]).lower()
    if not path.is_file():
        msg = f"{path}: platemap file not found"
        raise PlatemapError(msg)
    try:
        if suffixes.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        if suffixes.endswith((".tsv", ".tsv.gz", ".txt", ".txt.gz")):
            return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        if suffixes.endswith((".csv", ".csv.gz")):
            return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        msg = f"{path}: cannot read the platemap ({type(exc).__name__}: {exc})"
        raise PlatemapError(msg) from exc
    msg = f"{path}: unknown platemap format; use .csv, .tsv/.txt or .parquet"
    raise PlatemapError(msg)


def _text(value: object) -> str:
    """A cell as stripped text; missing (None, NaN, NA) is "" rather than "nan"."""
    return "" if value is None or value is pd.NA or (isinstance(value, float) and value != value) else str(value).strip()


def _infer_types(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns that are all numbers become numbers (doses, concentrations); '' becomes missing."""
    out = frame.copy()
    for column in out.columns:
        if column in ("well", "plate") or out[column].dtype != object:
            continue
        values = out[column].replace("", pd.NA)
        numeric = pd.to_numeric(values, errors="coerce")
        out[column] = numeric if numeric.notna().sum() == values.notna().sum() and values.notna().any() else values
    return out


def read_platemap(path_or_frame: str | os.PathLike[str] | pd.DataFrame) -> pd.DataFrame:
    """Read a platemap (CSV, TSV/TXT, parquet or a DataFrame) with normalised ``well`` names.

    Returns a new DataFrame: lower-cased column names, ``well`` as "B03", ``plate`` (if the
    platemap has one) as text, every other column as given (numeric text read as numbers).

    Raises
    ------
    PlatemapError
        The file is missing or unreadable, has no well column, a well name cannot be read (row
        named), or two rows describe the same (plate, well).
    """
    where = "platemap" if isinstance(path_or_frame, pd.DataFrame) else str(path_or_frame)
    if isinstance(path_or_frame, pd.DataFrame):
        frame = path_or_frame.copy()
    else:
        frame = _read_file(Path(path_or_frame))
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    if len(set(frame.columns)) != len(frame.columns):
        msg = f"{where}: column names repeat after lower-casing: {list(frame.columns)}"
        raise PlatemapError(msg)
    for target, aliases in (("well", WELL_ALIASES), ("plate", PLATE_ALIASES)):
        if target not in frame.columns:
            found = next((a for a in aliases if a in frame.columns), None)
            if found is not None:
                frame = frame.rename(columns={found: target})
    if "well" not in frame.columns:
        msg = f"{where}: no well column (looked for {', '.join(WELL_ALIASES)}); columns are {list(frame.columns)}"
        raise PlatemapError(msg)
    wells = []
    for i, value in enumerate(frame["well"].tolist()):
        try:
            wells.append(normalize_well_name(str(value)))
        except WellNameError:
            msg = f"{where}: row {i + 1}: well {value!r} is not a well name like 'B03'"
            raise PlatemapError(msg) from None
    frame["well"] = wells
    if "plate" in frame.columns:
        plates = [_text(v) for v in frame["plate"].tolist()]
        unnamed = [i + 1 for i, p in enumerate(plates) if not p]
        if unnamed:
            rows = ", ".join(map(str, unnamed[:10])) + (" ..." if len(unnamed) > 10 else "")
            msg = (f"{where}: row(s) {rows} have no plate name; fill the plate column, or drop it to apply "
                   "one layout to every plate")
            raise PlatemapError(msg)
        frame["plate"] = plates
    keys = ["plate", "well"] if "plate" in frame.columns else ["well"]
    duplicated = frame.duplicated(keys, keep=False)
    if duplicated.any():
        rows = frame.loc[duplicated, keys].drop_duplicates().astype(str).agg(" ".join, axis=1).tolist()
        msg = f"{where}: more than one row for {', '.join(rows[:10])}" + (" ..." if len(rows) > 10 else "")
        raise PlatemapError(msg)
    return _infer_types(frame).reset_index(drop=True)


def _plate_wells(
    plates: Plate | Sequence[Plate] | Mapping[str, Iterable[str]] | None, frame: pd.DataFrame
) -> dict[str, set[str]]:
    """Plate name -> the wells it has."""
    from .plate import Plate

    if plates is None:
        if "plate" in frame.columns:
            grouped = frame.groupby(frame["plate"].astype(str), observed=True)["well"]
            return {str(p): {normalize_well_name(str(w)) for w in ws.unique()} for p, ws in grouped}
        return {"": {normalize_well_name(str(w)) for w in frame["well"].unique()}}
    if isinstance(plates, Plate):
        plates = [plates]
    if isinstance(plates, Mapping):
        return {str(p): {normalize_well_name(str(w)) for w in ws} for p, ws in plates.items()}
    return {p.name: set(p.wells) for p in plates}


def join_platemap(
    frame: pd.DataFrame,
    platemap: pd.DataFrame | str | os.PathLike[str],
    *,
    plates: Plate | Sequence[Plate] | Mapping[str, Iterable[str]] | None = None,
) -> pd.DataFrame:
    """Add the platemap's columns to ``frame`` (cells ``obs`` or a table of wells), joined on the well.

    Parameters
    ----------
    frame
        Has a ``well`` column and, when the platemap has a ``plate`` column, a ``plate`` column.
        Its index and row order are kept.
    platemap
        A platemap (as :func:`read_platemap` returns, or anything it reads). Without a ``plate``
        column it describes every plate (one layout); with one, rows of other plates are ignored.
    plates
        The plates, to check the platemap against all their wells (also wells without cells);
        Plate objects or ``{plate name: wells}``. Default: the plates and wells in ``frame``.

    Raises
    ------
    PlatemapError
        A platemap well is not in its plate, a platemap column would overwrite a column of
        ``frame``, or ``frame`` lacks the join columns.
    """
    platemap = read_platemap(platemap)
    keys = ["plate", "well"] if "plate" in platemap.columns else ["well"]
    missing = [k for k in keys if k not in frame.columns]
    if missing:
        msg = f"cannot join the platemap on {keys}: the table has no {missing} column (columns: {list(frame.columns)})"
        raise PlatemapError(msg)
    clashes = [c for c in platemap.columns if c not in keys and c in frame.columns]
    if clashes:
        msg = f"platemap columns {clashes} already exist in the table; rename them in the platemap"
        raise PlatemapError(msg)
    available = _plate_wells(plates, frame)

    unmatched = False
    if "plate" in platemap.columns:
        known = platemap[platemap["plate"].isin(available)]
        ignored = sorted(set(platemap["plate"]) - set(available))
        if known.empty:
            unmatched = True
            warnings.warn(f"the platemap's plate names {ignored} match none of the plates {sorted(available)}: "
                          "its columns are left empty; fix the names, or drop the platemap's plate column to "
                          "apply one layout to every plate", PlatemapWarning, stacklevel=2)
        elif ignored:
            logger.info("platemap rows of other plates ignored: %s", ignored)
        unknown = [f"{p} {w}" for p, w in zip(known["plate"], known["well"]) if w not in available[p]]
        described = {p: set(known.loc[known["plate"] == p, "well"]) for p in available}
    else:
        all_wells = set().union(*available.values())
        unknown = [w for w in platemap["well"] if w not in all_wells]
        described = {p: set(platemap["well"]) for p in available}
    if unknown:
        msg = (f"platemap lists {len(unknown)} well(s) that are not in the plate: {', '.join(unknown[:10])}"
               + (" ..." if len(unknown) > 10 else ""))
        raise PlatemapError(msg)
    without = [f"{p} {w}".strip() for p, wells in sorted(available.items()) for w in sorted(wells - described[p])]
    if without and not unmatched:
        warnings.warn(f"{len(without)} plate well(s) have no platemap row: {', '.join(without[:10])}"
                      + (" ..." if len(without) > 10 else ""), PlatemapWarning, stacklevel=2)

    table = pd.DataFrame(index=frame.index)
    table["well"] = _normalized(frame["well"])
    if "plate" in keys:
        table["plate"] = frame["plate"].astype(str).to_numpy()
    lookup = platemap.set_index(keys)
    columns = [c for c in platemap.columns if c not in keys]
    index = pd.MultiIndex.from_frame(table[keys]) if len(keys) > 1 else pd.Index(table["well"])
    joined = lookup.reindex(index)[columns]
    joined.index = frame.index
    for column in columns:
        values = platemap[column].dropna()
        if platemap[column].dtype == object and values.map(lambda v: isinstance(v, str)).all():
            # text as categories: a well without a row is missing, never the text "nan" once written
            joined[column] = pd.Categorical(joined[column], categories=pd.unique(values))
    return pd.concat([frame, joined], axis=1)


def _normalized(wells: pd.Series) -> list[str]:
    mapping = {w: normalize_well_name(str(w)) for w in pd.unique(wells.astype(str))}
    return [mapping[str(w)] for w in wells]
