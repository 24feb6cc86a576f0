"""Pair rules as integer group codes: which profiles pair with a query, without listing pairs.

A rule ``(sameby, diffby)`` holds for rows i and j when they share every ``sameby`` value and differ
in every ``diffby`` value (copairs' definition). Columns are turned into integer codes once; the
masks of one block of query rows against all profiles are then a few vectorised comparisons.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._anndata import rows_matching
from ..errors import ProfilingError

logger = logging.getLogger(__name__)

_QUERY_COLUMN = re.compile(r"(\w+)\s*[=<>!]+")


def as_list(columns: str | Iterable[str] | None) -> list[str]:
    """Column arguments as a list (a lone string is one column)."""
    if columns is None:
        return []
    if isinstance(columns, str):
        return [columns]
    return list(columns)


def query_columns(query: str) -> list[str]:
    """Column names a pandas query compares (``"control_type == 'negcon'"`` -> ``["control_type"]``)."""
    return _QUERY_COLUMN.findall(query)


def split_queries(meta: pd.DataFrame, *rules: Sequence[str]) -> tuple[list[list[str]], list[str]]:
    """Separate pandas-query entries from column names in each rule list.

    copairs lets a rule list hold query strings such as ``"control_type != 'negcon'"``; they select
    the rows that take part and are not pairing constraints themselves.
    """
    queries: list[str] = []
    cleaned: list[list[str]] = []
    for rule in rules:
        kept = []
        for entry in as_list(rule):
            if entry in meta.columns:
                kept.append(entry)
                continue
            named = [c for c in _QUERY_COLUMN.findall(entry) if c in meta.columns]
            if not named:
                msg = (f"{entry!r} is neither a metadata column nor a query on one "
                       f"(columns: {', '.join(map(str, meta.columns[:20]))})")
                raise ProfilingError(msg)
            if entry not in queries:
                queries.append(entry)
        cleaned.append(kept)
    return cleaned, queries


def apply_queries(meta: pd.DataFrame, queries: list[str]) -> np.ndarray:
    """Positions of the rows that satisfy every query (all rows when there is none)."""
    if not queries:
        return np.arange(len(meta))
    combined = " & ".join(f"({q})" for q in queries)
    rows = np.flatnonzero(rows_matching(meta, combined, what="query"))
    if rows.size == 0:
        msg = f"no profile matches the query {combined!r}"
        raise ProfilingError(msg)
    logger.info("query %s keeps %d of %d profiles", combined, rows.size, len(meta))
    return rows


def check_columns(meta: pd.DataFrame, columns: Iterable[str], *, label_col: str | None = None) -> None:
    """Every rule column exists and has no missing value (a NaN never pairs reliably)."""
    for col in dict.fromkeys(columns):
        if col not in meta.columns:
            msg = f"metadata has no column {col!r} (columns: {', '.join(map(str, meta.columns[:20]))})"
            raise ProfilingError(msg)
        if col == label_col:
            continue
        missing = meta[col].isna().to_numpy()
        if missing.any():
            rows = np.flatnonzero(missing)
            msg = (f"metadata column {col!r} has {rows.size} missing values (first rows: "
                   f"{rows[:5].tolist()}); fill or drop them before computing metrics")
            raise ProfilingError(msg)


def codes_of(meta: pd.DataFrame, columns: Iterable[str]) -> dict[str, np.ndarray]:
    """Integer code per row for each column (equal values, equal codes)."""
    return {c: pd.factorize(meta[c], use_na_sentinel=True)[0].astype(np.int64) for c in dict.fromkeys(columns)}


@dataclass(frozen=True)
class Rule:
    """One pair rule on coded columns."""

    sameby: tuple[str, ...]
    diffby: tuple[str, ...]

    def mask(self, codes: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """(len(rows), n) bool: which profiles satisfy the rule with each query row (self excluded)."""
        n = len(next(iter(codes.values()))) if codes else 0
        out = np.ones((len(rows), n), dtype=bool)
        for c in self.sameby:
            out &= codes[c][rows, None] == codes[c][None, :]
        for c in self.diffby:
            out &= codes[c][rows, None] != codes[c][None, :]
        out[np.arange(len(rows)), rows] = False
        return out


def make_rule(sameby: Sequence[str], diffby: Sequence[str], what: str) -> Rule:
    """Validate one rule as copairs does: disjoint lists, at least one column."""
    overlap = set(sameby) & set(diffby)
    if overlap:
        msg = f"{what}: sameby and diffby must be disjoint, both name {sorted(overlap)}"
        raise ProfilingError(msg)
    if not sameby and not diffby:
        msg = f"{what}: give at least one sameby or diffby column"
        raise ProfilingError(msg)
    return Rule(tuple(sameby), tuple(diffby))


def parse_labels(values: pd.Series, sep: str = "|") -> list[tuple[str, ...]]:
    """Labels of each row from lists, tuples, sets, arrays or ``sep``-separated strings.

    Missing values and empty strings give no label.
    """
    out: list[tuple[str, ...]] = []
    for v in values:
        if isinstance(v, str):
            labels = tuple(p.strip() for p in v.split(sep) if p.strip())
        elif isinstance(v, (list, tuple, set, frozenset, np.ndarray, pd.api.extensions.ExtensionArray)):
            labels = tuple(str(x) for x in v if not (x is None or (isinstance(x, float) and np.isnan(x))))
        elif v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
            labels = ()
        else:
            labels = (str(v),)
        out.append(tuple(dict.fromkeys(labels)))
    return out


def label_matrix(labels: list[tuple[str, ...]]) -> tuple[np.ndarray, list[str]]:
    """(n, n_labels) bool indicator and the sorted label names."""
    names = sorted({x for row in labels for x in row})
    index = {name: i for i, name in enumerate(names)}
    ind = np.zeros((len(labels), len(names)), dtype=bool)
    for r, row in enumerate(labels):
        for x in row:
            ind[r, index[x]] = True
    return ind, names


def label_lists(labels: list[tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Each row's label ids as CSR (``ids[ptr[r]:ptr[r + 1]]``, ascending) and the sorted label names."""
    names = sorted({x for row in labels for x in row})
    index = {name: i for i, name in enumerate(names)}
    ptr = np.zeros(len(labels) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum([len(row) for row in labels])
    ids = np.fromiter((i for row in labels for i in sorted(index[x] for x in row)), dtype=np.int64, count=int(ptr[-1]))
    return ptr, ids, names
