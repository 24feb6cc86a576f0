"""Well names: one spelling everywhere ("B03"), whatever the plate, platemap or index file wrote.

Plates store wells as ``row/column`` paths ("B/3" or "B/03"), platemaps write "B3", "b03" or
"B003", and image indexes anything in between. Every well name that enters subcell-scale goes
through :func:`normalize_well_name`, so joins between plates, platemaps and cells never depend on
how a tool padded its columns.
"""

from __future__ import annotations

import re

from ..errors import WellNameError

_WELL_RE = re.compile(r"^\s*([A-Za-z]{1,2})[\s/_-]*0*(\d{1,3})\s*$")


def row_index(row: str) -> int:
    """0-based index of a row name: "A" -> 0, "P" -> 15, "AA" -> 26 (1536-well plates)."""
    letters = row.strip().upper()
    if not letters.isalpha() or not 1 <= len(letters) <= 2 or not letters.isascii():
        msg = f"row name {row!r} is not one or two letters (A..Z, AA..AF)"
        raise WellNameError(msg)
    index = 0
    for ch in letters:
        index = index * 26 + (ord(ch) - ord("A") + 1)
    return index - 1


def row_name(index: int) -> str:
    """Row name of a 0-based row index: 0 -> "A", 26 -> "AA"."""
    if index < 0 or index >= 26 * 27:
        msg = f"row index {index} is outside 0..{26 * 27 - 1}"
        raise WellNameError(msg)
    if index < 26:
        return chr(ord("A") + index)
    return chr(ord("A") + index // 26 - 1) + chr(ord("A") + index % 26)


def parse_well_name(name: str) -> tuple[str, int]:
    """Split a well name into (row letters, 1-based column number): "b003" -> ("B", 3).

    Separators between row and column ("B/3", "B_03", "B-3") are accepted, since paths and some
    instrument exports use them.
    """
    match = _WELL_RE.match(str(name))
    if match is None:
        msg = f"well name {name!r} is not row letters followed by a column number (e.g. 'B03')"
        raise WellNameError(msg)
    row, column = match.group(1).upper(), int(match.group(2))
    if column < 1:
        msg = f"well name {name!r} has column {column}; columns are numbered from 1"
        raise WellNameError(msg)
    return row, column


def well_name(row: str, column: int) -> str:
    """The normalised name of a well: row letters upper-case, column zero-padded to two digits."""
    return f"{row.upper()}{int(column):02d}"


def normalize_well_name(name: str) -> str:
    """Normalise any common spelling of a well: "b3", "B03", "b003", "B/3" -> "B03"."""
    row, column = parse_well_name(name)
    return well_name(row, column)
