"""One evaluation of well profiles, per cell type, with the SubCell JUMP benchmark's semantics.

:func:`evaluate_profiles` with a ``design`` (a mapping of :class:`EvaluationDesign` fields) or a
``preset`` computes, separately for each value of ``obs["cell_type"]`` (the benchmark evaluates A549
and U2OS apart), every table of the SubCell JUMP benchmark (zwefers/subcell_jump_analysis,
``scripts/compute_map.py``):

- replicate retrieval: copairs AP / mAP with positives = the same compound on another plate and
  negatives = other compounds on the same plate; p-values from ``null_size`` random rank lists
  seeded with ``seed``, Benjamini-Hochberg over compounds, retrieved = corrected p < ``threshold``;
- MoA retrieval: multilabel (a compound may carry several MoAs, one query per well and MoA),
  positives = another compound on another plate sharing the MoA, negatives = the same plate and no
  shared MoA, only compounds with a usable MoA (a provided table, or MoAs carried by at least
  ``min_moa_compounds`` compounds);
- MoA k-NN accuracy for k = 1 ... ``nn_k`` (neighbours on the same plate or of the same compound
  skipped; a query is a hit at k when one of its k nearest neighbours matches; every query counts);
- compound k-NN accuracy (neighbours on the same plate skipped; a hit is the same compound).

Negative controls are never queries. The benchmark removes them before evaluating (``df =
df[df["compound"] != "DMSO"]``), which is ``negcon_in_pool=False`` (default); with ``True`` they
stay as negatives of the replicate and MoA rankings and as (never matching) neighbours.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .._anndata import representation, rows_matching
from .._folders import make_folder
from .._typecheck import check_fields
from ..errors import ConfigError, ProfilingError
from ._joint import ap_and_nn
from .map import average_precision, fraction_retrieved, mean_average_precision
from .nn import nn_accuracy

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

ALL_CELL_TYPES = "all"
"""``cell_type`` value of the tables when ``obs`` has no cell-type column."""

TABLES = ("replicate_ap", "replicate_map", "moa_ap", "moa_map", "moa_nn", "compound_nn", "summary")
"""Tables :func:`evaluate_profiles` returns (and writes as ``<name>.csv``) on the design path."""

SUMMARY_COLUMNS = ("cell_type", "design", "metric", "value", "n_groups")
NN_TABLE_COLUMNS = ("cell_type", "k", "accuracy", "n_queries", "n_hits")


@dataclass(frozen=True)
class EvaluationDesign:
    """What to evaluate and how; the defaults are the SubCell JUMP benchmark's.

    Parameters
    ----------
    pert_col, plate_col, moa_col, cell_type_col
        obs columns: compound, plate, MoA labels (a list, or ``"|"``-separated), and the column
        evaluated separately (``None``: all rows together).
    negcon
        pandas query on obs selecting the negative controls (DMSO); ``None``: there are none.
    negcon_in_pool
        ``False`` (the benchmark): negative controls are removed before evaluating. ``True``: they
        are never queries but stay as negatives and as neighbours.
    moa_table
        Usable MoAs per compound: a DataFrame or CSV path with the compound column (``pert_col`` or
        ``"compound"``) and a MoA column (``moa_col`` or ``"moas"``) holding lists, Python list
        literals (the benchmark's ``metadata/usable_moa_metadata.csv``) or ``"|"``-separated
        strings. Compounds missing from it have no usable MoA. ``None``: derived from ``moa_col``
        (see :func:`usable_moa_table`).
    min_moa_compounds
        Without a table, a MoA is usable when at least this many compounds carry it (2: it can be
        retrieved by another compound).
    replicate_rules, moa_rules
        copairs pair rules (``pos_sameby``, ``pos_diffby``, ``neg_sameby``, ``neg_diffby``);
        ``None``: the benchmark's (above).
    null_size, threshold, seed
        mAP null rank lists per configuration, significance level, seed (benchmark: 10000, 0.05, 42).
    distance
        Similarity of profiles (cosine in the benchmark).
    device
        torch device (``"cuda"``) for the similarity sweeps of AP and k-NN; ``None``: the CPU kernels.
    nn_k
        k-NN accuracy for k = 1 ... ``nn_k`` (50).
    nn_match
        MoA neighbour match: ``"identical"`` (the benchmark's computation: the neighbour's usable
        MoA list equals the query's) or ``"any"`` (they share a MoA, what the benchmark's docstring
        describes).
    moa_nn_exclude, compound_nn_exclude
        Neighbours sharing any of these columns with the query are skipped; ``None``: plate and
        compound (MoA), plate (compound).
    summary_k
        k values reported in the summary table.
    use_rep
        Evaluate ``obsm[use_rep]`` instead of ``X``.
    """

    pert_col: str = "compound"
    plate_col: str = "plate"
    moa_col: str = "moa"
    cell_type_col: str | None = "cell_type"
    negcon: str | None = "control_type == 'negcon'"
    negcon_in_pool: bool = False
    moa_table: pd.DataFrame | str | os.PathLike | None = field(default=None, compare=False)
    min_moa_compounds: int = 2
    replicate_rules: Mapping[str, Sequence[str]] | None = None
    moa_rules: Mapping[str, Sequence[str]] | None = None
    null_size: int = 10000
    threshold: float = 0.05
    seed: int = 42
    distance: str = "cosine"
    device: str | None = None
    nn_k: int = 50
    nn_match: Literal["identical", "any"] = "identical"
    moa_nn_exclude: Sequence[str] | None = None
    compound_nn_exclude: Sequence[str] | None = None
    summary_k: Sequence[int] = (1, 5, 10)
    use_rep: str | None = None

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | EvaluationDesign | None = None,
                     **overrides: Any) -> EvaluationDesign:
        """A design from a mapping (e.g. a preset's ``"design"``) with keyword overrides; unknown keys fail."""
        base = dataclasses.asdict(mapping) if isinstance(mapping, EvaluationDesign) else dict(mapping or {})
        if isinstance(mapping, EvaluationDesign):
            base["moa_table"] = mapping.moa_table
        base.update(overrides)
        check_fields(cls, base, "evaluation design")
        for name in ("summary_k", "moa_nn_exclude", "compound_nn_exclude"):  # one form, whatever was given
            if base.get(name) is not None:
                base[name] = tuple(base[name])
        for name in ("replicate_rules", "moa_rules"):
            if base.get(name) is not None:
                base[name] = {k: list(v) for k, v in base[name].items()}
        design = cls(**base)
        design.check()
        return design

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON; a ``moa_table`` given as a frame is recorded as ``"<DataFrame>"``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        table = out["moa_table"]
        out["moa_table"] = None if table is None else (os.fspath(table) if isinstance(table, str | os.PathLike)
                                                       else "<DataFrame>")
        for name in ("replicate_rules", "moa_rules"):
            if out[name] is not None:
                out[name] = {k: list(v) for k, v in out[name].items()}
        for name in ("moa_nn_exclude", "compound_nn_exclude", "summary_k"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    def check(self) -> None:
        """Reject values that cannot describe an evaluation, naming the key."""
        if self.nn_match not in ("identical", "any"):
            raise ConfigError(f"evaluation design: nn_match must be 'identical' or 'any', got {self.nn_match!r}")
        if int(self.nn_k) < 1 or int(self.null_size) < 1 or int(self.min_moa_compounds) < 1:
            raise ConfigError("evaluation design: nn_k, null_size and min_moa_compounds must be positive, got "
                              f"{self.nn_k}, {self.null_size}, {self.min_moa_compounds}")
        if not 0 < float(self.threshold) < 1:
            raise ConfigError(f"evaluation design: threshold must be in (0, 1), got {self.threshold}")
        for name in ("replicate_rules", "moa_rules"):
            rules = getattr(self, name)
            wanted = {"pos_sameby", "pos_diffby", "neg_sameby", "neg_diffby"}
            if rules is not None and set(rules) != wanted:
                raise ConfigError(f"evaluation design: {name} needs exactly the keys {sorted(wanted)}, "
                                  f"got {sorted(rules)}")

    def rules(self, task: Literal["replicate", "moa"]) -> dict[str, list[str]]:
        """copairs pair rules of a task (the benchmark's unless set)."""
        given = self.replicate_rules if task == "replicate" else self.moa_rules
        if given is not None:
            return {k: list(v) for k, v in given.items()}
        if task == "replicate":
            return {"pos_sameby": [self.pert_col], "pos_diffby": [self.plate_col],
                    "neg_sameby": [self.plate_col], "neg_diffby": [self.pert_col]}
        return {"pos_sameby": [self.moa_col], "pos_diffby": [self.plate_col, self.pert_col],
                "neg_sameby": [self.plate_col], "neg_diffby": [self.moa_col]}


def evaluate_profiles(
    profiles: AnnData,
    out_dir: str | os.PathLike | None = None,
    *,
    design: Mapping[str, Any] | EvaluationDesign | None = None,
    preset: str | None = None,
    **options: Any,
) -> dict[str, pd.DataFrame]:
    """Evaluate well profiles: replicate and MoA mAP, MoA and compound k-NN accuracy, per cell type.

    Parameters
    ----------
    profiles
        Well profiles (e.g. from :func:`subcell_scale.profiles.postprocess`).
    out_dir
        Write every table as ``<name>.csv`` here (lists joined by ``"|"``).
    design
        The evaluation (fields of :class:`EvaluationDesign`); with neither ``design`` nor ``preset``,
        the SubCell JUMP benchmark's (the defaults of :class:`EvaluationDesign`).
    preset
        A preset name whose ``"design"`` entry is the design (``"jump-cellpainting"``); ``design``
        entries given too replace the preset's.
    **options
        Design fields overriding both (``seed=0``, ``nn_match="any"``, ``null_size=1000``).

    Returns
    -------
    dict of pandas.DataFrame
        ``replicate_ap`` (one row per query well), ``replicate_map`` (one row per compound:
        copairs' ``mean_average_precision``, ``p_value``, ``corrected_p_value``, ``below_p``,
        ``below_corrected_p`` ...), ``moa_ap``, ``moa_map`` (one row per MoA), ``moa_nn`` and
        ``compound_nn`` (``cell_type``, ``k``, ``accuracy``, ``n_queries``, ``n_hits``; k = 1 ...
        ``nn_k``) and ``summary`` (``cell_type``, ``design``, ``metric``, ``value``,
        ``n_groups``: mAP, fraction retrieved, groups and queries per task; accuracy at
        ``summary_k``). Every table starts with ``cell_type`` (``"all"`` without that column).
        A task that cannot be computed for a cell type (no MoA labels, a single plate) is left out
        of its tables with a warning.
    """
    if preset is not None:
        from ..presets import get_design

        base = get_design(preset)
        if design is not None:
            base.update(dict(design) if not isinstance(design, EvaluationDesign) else dataclasses.asdict(design))
        design = base
    spec = EvaluationDesign.from_mapping(design, **options)
    obs = profiles.obs.reset_index(drop=True)
    x = representation(profiles, spec.use_rep, what="evaluate_profiles")
    _require(obs, [spec.pert_col, spec.plate_col])
    usable = _usable_lists(obs, spec)
    tables: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}
    for cell_type, rows in _cell_types(obs, spec.cell_type_col):
        logger.info("evaluating %d profiles of cell type %s", rows.size, cell_type)
        result = _evaluate_one(obs.iloc[rows].reset_index(drop=True), x[rows], usable[rows], spec, cell_type)
        for name, table in result.items():
            tables[name].append(table)
    out = {name: _stack(parts, name) for name, parts in tables.items()}
    if out_dir is not None:
        write_tables(out, out_dir)
    return out


def usable_moa_table(meta: pd.DataFrame, *, pert_col: str = "compound", moa_col: str = "moa",
                     min_compounds: int = 2, negcon: str | None = None) -> pd.DataFrame:
    """Usable MoAs per compound derived from the profiles' own MoA column.

    A MoA is usable when at least ``min_compounds`` distinct compounds carry it (counted over all
    rows given, negative controls left out): only then can a compound retrieve another one of the
    same MoA. Each compound keeps its usable MoAs in their original order; compounds left without
    one are not listed. This is the rule the SubCell JUMP benchmark states for its
    ``metadata/usable_moa_metadata.csv`` ("MoA class with >=2 members", ``utils/metadata.py``).

    Returns
    -------
    pandas.DataFrame
        Columns ``pert_col`` and ``moa_col`` (a tuple of labels per compound), sorted by compound.
    """
    _require(meta, [pert_col, moa_col])
    frame = meta if negcon is None else meta[~_query(meta, negcon)]
    per_compound: dict[str, tuple[str, ...]] = {}
    for compound, labels in zip(frame[pert_col].astype(str), _parse(frame[moa_col]), strict=True):
        merged = per_compound.get(compound, ())
        per_compound[compound] = tuple(dict.fromkeys(merged + labels))
    counts: dict[str, int] = {}
    for labels in per_compound.values():
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
    rows = []
    for compound in sorted(per_compound):
        kept = tuple(m for m in per_compound[compound] if counts[m] >= min_compounds)
        if kept:
            rows.append({pert_col: compound, moa_col: kept})
    return pd.DataFrame(rows, columns=[pert_col, moa_col])


def write_tables(tables: Mapping[str, pd.DataFrame], out_dir: str | os.PathLike) -> list[Path]:
    """Write each table as ``<name>.csv`` (lists and tuples joined by ``"|"``); same tables, same bytes."""
    folder = make_folder(out_dir, "output folder")
    written = []
    for name, table in tables.items():
        frame = table.copy()
        for column in frame.columns:
            if frame[column].dtype == object:
                frame[column] = frame[column].map(
                    lambda v: "|".join(map(str, v)) if isinstance(v, list | tuple | np.ndarray) else v)
        path = folder / f"{name}.csv"
        frame.to_csv(path, index=False)
        written.append(path)
    logger.info("wrote %d metric tables to %s", len(written), folder)
    return written


# ------------------------------------------------------------------------------------------------


def _require(obs: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in obs.columns]
    if missing:
        raise ProfilingError(f"evaluate_profiles: obs has no column(s) {missing} (columns: {list(obs.columns)})")


def _query(obs: pd.DataFrame, query: str) -> np.ndarray:
    return rows_matching(obs, query, what="evaluate_profiles")


def _parse(values: pd.Series) -> list[tuple[str, ...]]:
    """MoA labels of each row: lists, Python list literals (``"['a', 'b']"``) or ``"|"``-separated strings."""
    out = []
    for value in values:
        if isinstance(value, str) and value.strip().startswith("["):
            try:
                value = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError) as exc:
                raise ProfilingError(f"evaluate_profiles: cannot read the MoA list {value!r}: {exc}") from exc
        if isinstance(value, str):
            labels = tuple(p.strip() for p in value.split("|") if p.strip())
        elif isinstance(value, list | tuple | np.ndarray):
            labels = tuple(str(v) for v in value if not (v is None or (isinstance(v, float) and np.isnan(v))))
        elif value is None or (isinstance(value, float) and np.isnan(value)):
            labels = ()
        else:
            labels = (str(value),)
        out.append(tuple(dict.fromkeys(labels)))
    return out


def _moa_table(spec: EvaluationDesign) -> dict[str, tuple[str, ...]] | None:
    table = spec.moa_table
    if table is None:
        return None
    if isinstance(table, str | os.PathLike):
        path = Path(table)
        if not path.is_file():
            raise ProfilingError(f"evaluate_profiles: MoA table not found: {path}")
        table = pd.read_csv(path)
    pert = spec.pert_col if spec.pert_col in table.columns else "compound"
    moa = spec.moa_col if spec.moa_col in table.columns else "moas"
    if pert not in table.columns or moa not in table.columns:
        raise ProfilingError(f"evaluate_profiles: the MoA table needs columns {spec.pert_col!r} (or 'compound') and "
                             f"{spec.moa_col!r} (or 'moas'); it has {list(table.columns)}")
    return {str(c): labels for c, labels in zip(table[pert], _parse(table[moa]), strict=True) if labels}


def _usable_lists(obs: pd.DataFrame, spec: EvaluationDesign) -> np.ndarray:
    """Each row's usable MoA tuple (empty for negative controls and compounds without one)."""
    table = _moa_table(spec)
    if table is None:
        if spec.moa_col not in obs.columns:
            logger.warning("evaluate_profiles: obs has no %r column and no MoA table is given; no MoA tasks",
                           spec.moa_col)
            table = {}
        else:
            derived = usable_moa_table(obs, pert_col=spec.pert_col, moa_col=spec.moa_col,
                                       min_compounds=spec.min_moa_compounds, negcon=spec.negcon)
            table = dict(zip(derived[spec.pert_col], derived[spec.moa_col], strict=True))
    negcon = _negcon_mask(obs, spec)
    out = np.empty(len(obs), dtype=object)
    for i, (compound, is_negcon) in enumerate(zip(obs[spec.pert_col].astype(str), negcon, strict=True)):
        out[i] = () if is_negcon else table.get(compound, ())
    return out


def _negcon_mask(obs: pd.DataFrame, spec: EvaluationDesign) -> np.ndarray:
    if spec.negcon is None:
        return np.zeros(len(obs), dtype=bool)
    return _query(obs, spec.negcon)


def _cell_types(obs: pd.DataFrame, column: str | None) -> list[tuple[str, np.ndarray]]:
    if column is None or column not in obs.columns:
        return [(ALL_CELL_TYPES, np.arange(len(obs)))]
    values = obs[column]
    if values.isna().any():
        raise ProfilingError(f"evaluate_profiles: obs[{column!r}] is missing for some profiles")
    codes, uniques = pd.factorize(values.astype(str), sort=True)
    return [(str(value), np.flatnonzero(codes == i)) for i, value in enumerate(uniques)]


def _features_of(x: np.ndarray, cell_type: str) -> np.ndarray:
    """The cell type's features: columns missing for all its rows go; any other NaN is an error."""
    present = ~np.isnan(x).all(axis=0)
    x = x[:, present]
    if np.isnan(x).any():
        rows = np.flatnonzero(np.isnan(x).any(axis=1))[:5].tolist()
        raise ProfilingError(f"evaluate_profiles: cell type {cell_type}: profiles (first rows {rows}) have missing "
                             "feature values; impute or drop them first")
    if x.shape[1] == 0:
        raise ProfilingError(f"evaluate_profiles: cell type {cell_type} has no features")
    return x


def _evaluate_one(obs: pd.DataFrame, x: np.ndarray, usable: np.ndarray, spec: EvaluationDesign,
                  cell_type: str) -> dict[str, pd.DataFrame]:
    x = _features_of(x, cell_type)
    negcon = _negcon_mask(obs, spec)
    keep = ~negcon | spec.negcon_in_pool
    obs, x, usable, negcon = obs[keep].reset_index(drop=True), x[keep], usable[keep], negcon[keep]
    pert = obs[spec.pert_col].astype(str).to_numpy(dtype=object)
    # negative controls kept in the pool: each its own "compound", never a positive of anything
    pert = np.where(negcon, [f"__negcon_{i}" for i in range(len(obs))], pert)
    base_cols = [c for c in (spec.plate_col, "well", spec.pert_col) if c in obs.columns]
    meta = obs[base_cols].copy()
    for c in meta.columns:
        meta[c] = meta[c].astype(str)
    meta[spec.pert_col] = pert
    out: dict[str, pd.DataFrame] = {}
    summary: list[dict[str, Any]] = []

    ks = list(range(1, int(spec.nn_k) + 1))
    compound_exclude = list(spec.compound_nn_exclude or [spec.plate_col])
    try:  # replicate AP and compound k-NN rank the same profiles: one sweep of similarity blocks for both
        joint = ap_and_nn(meta, x, spec.rules("replicate"), spec.pert_col, compound_exclude, ks,
                          distance=spec.distance, query_rows=~negcon, count_all_queries=True, device=spec.device)
    except ProfilingError:
        joint = None  # each computed apart below reports its own problem
    rep = _retrieval(meta, x, negcon, spec.rules("replicate"), spec, "replicate", cell_type, None,
                     joint.ap if joint is not None else None)
    if rep is not None:
        out["replicate_ap"], out["replicate_map"] = rep
        summary += _map_summary(cell_type, "replicate", *rep)
    in_moa = negcon | np.array([len(u) > 0 for u in usable], dtype=bool)
    moa_meta = meta[in_moa].reset_index(drop=True)
    moa_meta[spec.moa_col] = [list(u) for u in usable[in_moa]]
    moa = None
    if (~negcon[in_moa]).any():
        moa = _retrieval(moa_meta, x[in_moa], negcon[in_moa], spec.rules("moa"), spec, "moa", cell_type,
                         spec.moa_col)
    else:
        logger.warning("evaluate_profiles: cell type %s has no compound with a usable MoA; no MoA tasks", cell_type)
    if moa is not None:
        out["moa_ap"], out["moa_map"] = moa
        summary += _map_summary(cell_type, "moa", *moa)

    nn = _knn(meta, x, spec.pert_col, compound_exclude, ks, negcon, "any", spec, cell_type, "compound",
              joint.nn if joint is not None else None)
    if nn is not None:
        out["compound_nn"] = nn
        summary += _nn_summary(cell_type, "compound_nn", nn, spec.summary_k)
    if (~negcon[in_moa]).any():
        moa_labels = moa_meta.copy()
        moa_labels[spec.moa_col] = [tuple(u) if u else (f"__negcon_{i}",)
                                    for i, u in enumerate(moa_meta[spec.moa_col])]
        moa_exclude = list(spec.moa_nn_exclude or [spec.plate_col, spec.pert_col])
        nn = _knn(moa_labels, x[in_moa], spec.moa_col, moa_exclude, ks, negcon[in_moa], spec.nn_match, spec,
                  cell_type, "MoA")
        if nn is not None:
            out["moa_nn"] = nn
            summary += _nn_summary(cell_type, "moa_nn", nn, spec.summary_k)
    out["summary"] = pd.DataFrame(summary, columns=list(SUMMARY_COLUMNS))
    return out


def _retrieval(meta: pd.DataFrame, x: np.ndarray, negcon: np.ndarray, rules: Mapping[str, list[str]],
               spec: EvaluationDesign, task: str, cell_type: str, multilabel_col: str | None,
               swept: Callable[[], pd.DataFrame] | None = None) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    sameby = rules["pos_sameby"]
    try:
        ap = swept() if swept is not None else average_precision(
            meta, x, **rules, distance=spec.distance, multilabel_col=multilabel_col, device=spec.device)
        if negcon.any():  # controls are never queries
            is_control = ap[spec.pert_col].astype(str).str.startswith("__negcon_")
            ap = ap[~is_control.to_numpy()].reset_index(drop=True)
        res = mean_average_precision(ap, sameby, int(spec.null_size), float(spec.threshold), int(spec.seed))
    except ProfilingError as exc:
        logger.warning("evaluate_profiles: %s retrieval of cell type %s could not be computed: %s", task,
                       cell_type, exc)
        return None
    ap.insert(0, "cell_type", cell_type)
    res.insert(0, "cell_type", cell_type)
    return ap, res


def _knn(meta: pd.DataFrame, x: np.ndarray, label_col: str, exclude: list[str], ks: list[int],
         negcon: np.ndarray, match: str, spec: EvaluationDesign, cell_type: str, what: str,
         swept: Callable[[], pd.DataFrame] | None = None) -> pd.DataFrame | None:
    try:
        acc = swept() if swept is not None else nn_accuracy(
            meta, x, label_col, exclude_sameby=exclude, k=ks, distance=spec.distance, match=match,
            count_all_queries=True, query_rows=~negcon, device=spec.device)
    except ProfilingError as exc:
        logger.warning("evaluate_profiles: %s k-NN accuracy of cell type %s could not be computed: %s", what,
                       cell_type, exc)
        return None
    acc.insert(0, "cell_type", cell_type)
    return acc[list(NN_TABLE_COLUMNS)]


def _map_summary(cell_type: str, design: str, ap: pd.DataFrame, res: pd.DataFrame) -> list[dict[str, Any]]:
    n_groups = len(res)
    n_queries = int(ap["average_precision"].notna().sum())
    return [
        {"cell_type": cell_type, "design": design, "metric": "mAP",
         "value": float(res["mean_average_precision"].mean()), "n_groups": n_groups},
        {"cell_type": cell_type, "design": design, "metric": "fraction_retrieved", "value": fraction_retrieved(res),
         "n_groups": n_groups},
        {"cell_type": cell_type, "design": design, "metric": "n_retrieved",
         "value": float(res["below_corrected_p"].sum()), "n_groups": n_groups},
        {"cell_type": cell_type, "design": design, "metric": "n_queries", "value": float(n_queries),
         "n_groups": n_groups},
    ]


def _nn_summary(cell_type: str, design: str, nn: pd.DataFrame, ks: Sequence[int]) -> list[dict[str, Any]]:
    rows = nn[nn["k"].isin([int(k) for k in ks])]
    return [{"cell_type": cell_type, "design": design, "metric": f"accuracy@{int(r.k)}", "value": float(r.accuracy),
             "n_groups": int(r.n_queries)} for r in rows.itertuples()]


def _stack(parts: list[pd.DataFrame], name: str) -> pd.DataFrame:
    if not parts:
        columns = {"summary": SUMMARY_COLUMNS, "moa_nn": NN_TABLE_COLUMNS, "compound_nn": NN_TABLE_COLUMNS}
        return pd.DataFrame(columns=list(columns.get(name, ("cell_type",))))
    return pd.concat(parts, ignore_index=True)
