"""The cells AnnData: what it holds, how its rows and ``obs`` are made, and how a run's store is read back.

This module holds the contract scanpy users rely on (the cells AnnData):

- ``X`` float32 embeddings (passes concatenated), ``var_names`` ``subcell_0000`` ... (multi-pass:
  ``subcell_<pass>_0000`` ...);
- ``obs_names`` ``"{plate}_{well}_{field}_{label}"``; ``obs``: plate, well, row, column, field
  (categoricals), label, area, centroid_y, centroid_x (pixels at level 0), then the platemap's columns;
- ``obsm["spatial"]`` (x, y) in micrometres, ``obsm["localization"]`` (n, 31 x passes, pass-major),
  ``uns["localization_classes"]``, ``uns["subcell_scale"]`` (provenance, the unit of each column, and
  each plate's rows).

Rows follow the fields in plate, well, field order and cells by label within a field, whatever order
the fields were computed in, so a resumed or distributed run gives the same AnnData. ``obs`` has the
same columns, categories and dtypes however its rows are made (all at once, a chunk at a time, one
plate at a time): they come from the run's plates and platemap (:class:`ObsSchema`), not from the
cells. :mod:`subcell_scale.cellwriter` writes the store.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._constants import VAR_PREFIX, Files, Keys, Obs
from ._docs import doc_params
from ._version import __version__
from .errors import RunDirectoryError
from .rundir import FieldId, RunPath
from .store import Shard

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from .io import Plate
    from .models import ResolvedModel
    from .params import PlatePlan, RunParams

log = logging.getLogger(__name__)

FORMATS = ("zarr", "h5ad")
"""File formats of the cells AnnData in a run directory."""

OBS_UNITS = {
    Obs.LABEL: "value of the cell in the field's label image",
    Obs.AREA: "pixels of the field at level 0 (square micrometres: area x pixel_size y x x)",
    Obs.CENTROID_Y: "pixels of the field at level 0, from its top edge",
    Obs.CENTROID_X: "pixels of the field at level 0, from its left edge",
    Keys.SPATIAL: "obsm: micrometres (x, y) from the field's top-left corner",
}
"""Units of the per-cell columns, recorded in ``uns["subcell_scale"]["obs_units"]``: areas and centroids are
in the field's own pixels (level 0), as the label image counts them; the cell filter's bounds
(``min_area_um2``, ``max_area_um2``) and ``obsm["spatial"]`` are in micrometres."""

PLATE_ROWS = "plate_rows"
"""Key of ``uns["subcell_scale"]`` holding each plate's rows, ``{plate: [start, stop]}``."""


@dataclass(frozen=True)
class RunContext:
    """What the cells AnnData records beside the cells: the run's plates, plans, parameters and model."""

    plates: Sequence[Plate]
    plans: Sequence[PlatePlan]
    params: RunParams
    model: ResolvedModel
    platemap: Any = None
    views: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def plan_of(self, plate_name: str) -> PlatePlan:
        return next(p for p in self.plans if p.name == plate_name)


def var_names(width: int, pass_names: Sequence[str]) -> list[str]:
    """``subcell_0000`` ...; with passes ``subcell_<pass>_0000`` ..., pass after pass."""
    if not pass_names:
        return [f"{VAR_PREFIX}{i:04d}" for i in range(width)]
    per = width // len(pass_names)
    return [f"{VAR_PREFIX}{name}_{i:04d}" for name in pass_names for i in range(per)]


class ObsSchema:
    """The columns of a run's ``obs``, their categories and dtypes, from its plates and platemap alone.

    Known before a cell is read, so ``obs`` can be written a chunk of rows at a time (a screen's obs
    never has to be in memory) and every way of making it gives the same columns and dtypes:
    ``plate``, ``well``, ``row``, ``column`` and ``field`` are categoricals over the run's plates,
    wells and fields; the platemap's columns are joined per well (text as categoricals).

    Parameters
    ----------
    plates
        The run's plates (metadata only).
    pixel_sizes
        Plate name -> (y, x) micrometres per pixel, for ``obsm["spatial"]``.
    platemap
        A platemap (file or frame), or None.
    nonfinite
        Keep each cell's count of NaN or infinite pixels read as 0 (a run with ``nonfinite="zero"``).
    """

    def __init__(self, plates: Sequence[Plate], pixel_sizes: Mapping[str, Sequence[float]],
                 platemap: Any = None, *, nonfinite: bool = False) -> None:
        self.nonfinite = nonfinite
        wells = [(p.name, w) for p in plates for w in p.wells]
        rows_columns = {(p.name, w): p.row_column(w) for p in plates for w in p.wells}
        self.pixel_sizes = {k: tuple(float(v) for v in vals) for k, vals in pixel_sizes.items()}
        self.categories: dict[str, list[Any]] = {
            Obs.PLATE: sorted({p for p, _ in wells}),
            Obs.WELL: sorted({w for _, w in wells}),
            Obs.ROW: sorted({r for r, _ in rows_columns.values()}),
            Obs.COLUMN: sorted({int(c) for _, c in rows_columns.values()}),
            Obs.FIELD: sorted({str(f) for p in plates for w in p.wells for f in p.fields(w)}),
        }
        self._index = {name: {v: i for i, v in enumerate(values)} for name, values in self.categories.items()}
        self._row_column = {key: (self._index[Obs.ROW][r], self._index[Obs.COLUMN][int(c)])
                            for key, (r, c) in rows_columns.items()}
        table = pd.DataFrame(wells, columns=[Obs.PLATE, Obs.WELL])
        if platemap is not None:
            from .io.platemap import join_platemap, read_platemap

            table = join_platemap(table, read_platemap(platemap), plates=list(plates))
        self.extra = [c for c in table.columns if c not in (Obs.PLATE, Obs.WELL)]
        self._wells = table[self.extra].reset_index(drop=True)
        self._well_row = {key: i for i, key in enumerate(wells)}

    @property
    def columns(self) -> list[str]:
        """The obs columns, in order."""
        return [Obs.PLATE, Obs.WELL, Obs.ROW, Obs.COLUMN, Obs.FIELD, Obs.LABEL, Obs.AREA, Obs.CENTROID_Y,
                Obs.CENTROID_X, *([Obs.NONFINITE] if self.nonfinite else []), *self.extra]

    def dtype(self, column: str) -> Any:
        """The pandas dtype of an obs column."""
        if column in self.categories:
            return pd.CategoricalDtype(self.categories[column])
        if column == Obs.LABEL:
            return np.dtype(np.int64)
        if column in (Obs.AREA, Obs.NONFINITE):
            return np.dtype(np.int64)
        if column in (Obs.CENTROID_Y, Obs.CENTROID_X):
            return np.dtype(np.float64)
        return self._wells[column].dtype

    def frame(self, pieces: Iterable[tuple[FieldId, pd.DataFrame]]) -> tuple[pd.DataFrame, np.ndarray]:
        """``obs`` and ``obsm["spatial"]`` of the cells of ``pieces`` (a field and its cells, in label order).

        Rows are the pieces' cells in the order given; a field may be given in parts (the rows of a
        chunk), each part's names and values are those of its cells.
        """
        pieces = [(fid, cells) for fid, cells in pieces]
        counts = np.asarray([len(cells) for _, cells in pieces], dtype=np.int64)
        n = int(counts.sum())
        per_field = {
            Obs.PLATE: [self._index[Obs.PLATE][f.plate] for f, _ in pieces],
            Obs.WELL: [self._index[Obs.WELL][f.well] for f, _ in pieces],
            Obs.ROW: [self._row_column[(f.plate, f.well)][0] for f, _ in pieces],
            Obs.COLUMN: [self._row_column[(f.plate, f.well)][1] for f, _ in pieces],
            Obs.FIELD: [self._index[Obs.FIELD][f.field] for f, _ in pieces],
        }
        columns: dict[str, Any] = {}
        for name, codes in per_field.items():
            codes = np.repeat(np.asarray(codes, dtype=np.int32), counts) if pieces else np.zeros(0, np.int32)
            columns[name] = pd.Categorical.from_codes(codes, dtype=self.dtype(name))
        labels = [cells[Obs.LABEL].to_numpy(dtype=np.int64) for _, cells in pieces]
        columns[Obs.LABEL] = np.concatenate(labels) if pieces else np.zeros(0, np.int64)
        columns[Obs.AREA] = (np.concatenate([cells[Obs.AREA].to_numpy(dtype=np.int64) for _, cells in pieces])
                             if pieces else np.zeros(0, np.int64))
        spatial = np.empty((n, 2), dtype=np.float64)
        names = np.empty(n, dtype=object)
        lo = 0
        for (fid, cells), label in zip(pieces, labels, strict=True):
            hi = lo + len(cells)
            py, px = self.pixel_sizes[fid.plate]
            y = cells[Obs.CENTROID_Y].to_numpy(dtype=np.float64)
            x = cells[Obs.CENTROID_X].to_numpy(dtype=np.float64)
            spatial[lo:hi, 0], spatial[lo:hi, 1] = x * px, y * py
            names[lo:hi] = [f"{fid.obs_prefix}_{v}" for v in label]
            lo = hi
        for name in (Obs.CENTROID_Y, Obs.CENTROID_X):
            columns[name] = (np.concatenate([cells[name].to_numpy(dtype=np.float64) for _, cells in pieces])
                             if pieces else np.zeros(0, np.float64))
        if self.nonfinite:
            columns[Obs.NONFINITE] = np.concatenate(
                [cells[Obs.NONFINITE].to_numpy(dtype=np.int64) if Obs.NONFINITE in cells
                 else np.zeros(len(cells), np.int64) for _, cells in pieces]) if pieces else np.zeros(0, np.int64)
        if self.extra:
            rows = np.repeat(np.asarray([self._well_row[(f.plate, f.well)] for f, _ in pieces], dtype=np.int64),
                             counts) if pieces else np.zeros(0, np.int64)
            for name in self.extra:
                columns[name] = self._wells[name].take(rows).array  # the platemap's dtype, categoricals included
        return pd.DataFrame(columns, index=pd.Index(names, dtype=object, copy=False)), spatial


def sorted_cells(cells: pd.DataFrame) -> np.ndarray:
    """The order that sorts a field's cell table by label (the order of its rows in the AnnData)."""
    return np.argsort(cells[Obs.LABEL].to_numpy(), kind="stable")


def schema_of(context: RunContext) -> ObsSchema:
    """The :class:`ObsSchema` of a run."""
    return ObsSchema(context.plates, {p.name: p.pixel_size for p in context.plans}, context.platemap,
                     nonfinite=context.params.nonfinite == "zero")


def assemble(fields: Sequence[tuple[FieldId, Shard]], context: RunContext, failed: Sequence[str]) -> AnnData:
    """Concatenate the fields' shards, in the order given, into the cells AnnData (held in memory)."""
    pieces, emb, probs = [], [], []
    views: dict[str, list[pd.DataFrame]] = {}
    for fid, shard in fields:
        order = sorted_cells(shard.cells)
        pieces.append((fid, shard.cells.iloc[order].reset_index(drop=True)))
        emb.append(shard.embedding[order])
        if shard.probabilities is not None:
            probs.append(shard.probabilities[order])
        for name, frame in shard.views.items():
            if len(frame):  # a field without cells may not know a model view's width
                views.setdefault(name, []).append(frame.iloc[order])
    width = int(emb[0].shape[1]) if emb else default_width(context)
    X = np.concatenate(emb).astype(np.float32, copy=False) if emb else np.zeros((0, width), np.float32)
    localization = np.concatenate(probs).astype(np.float32, copy=False) if probs and len(probs) == len(emb) else None
    obs, spatial = schema_of(context).frame(pieces)
    columns = {name: list(frames[0].columns) for name, frames in views.items()}
    adata = cells_anndata(obs, spatial, X, localization, width, context, failed, classes=localization is not None,
                          views=columns)
    for name, frames in views.items():
        adata.obsm[name] = pd.DataFrame(np.concatenate([f.to_numpy(np.float32) for f in frames]),
                                        index=obs.index, columns=columns[name])
    return adata


def plate_cells(fields: Sequence[tuple[FieldId, Any, int]], plate: Plate, pixel_size: Sequence[float],
                pass_names: Sequence[str] = (), platemap: Any = None) -> AnnData:
    """The cells of one plate as the cells store holds them, ``X`` left in the shards.

    ``obs`` is built from the shards' cell tables (in memory: one plate's worth), ``X`` is a dask array
    reading each field's shard when its rows are asked for: what a plate's well profiles are
    aggregated from as soon as its last field has ended, without the run's cells store.
    """
    import anndata as ad
    import dask
    import dask.array as da

    from .store import read_shard_array, read_shard_cells

    pieces, blocks = [], []
    for fid, path, n in fields:
        if not n:
            continue
        cells, shapes, _ = read_shard_cells(path)
        order = sorted_cells(cells)
        pieces.append((fid, cells.iloc[order].reset_index(drop=True)))
        rows = dask.delayed(_sorted_rows)(read_shard_array, path, order)
        blocks.append(da.from_delayed(rows, shape=(len(order), shapes["embedding"][1]), dtype=np.float32))
    obs, spatial = ObsSchema([plate], {plate.name: pixel_size}, platemap).frame(pieces)
    X = da.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32)
    var = pd.DataFrame(index=var_names(int(X.shape[1]), pass_names))
    return ad.AnnData(X=X, obs=obs, var=var, obsm={Keys.SPATIAL: spatial})


def _sorted_rows(read: Any, path: Any, order: np.ndarray) -> np.ndarray:
    return read(path, "embedding")[order]


def default_width(context: RunContext) -> int:
    """Width of ``X`` from the model and the passes, for a run without a single cell."""
    return context.model.embedding_dim * len(context.plans[0].passes)


def cells_anndata(obs: pd.DataFrame, spatial: np.ndarray, X: Any, localization: Any, width: int,
                  context: RunContext, failed: Sequence[str], *, classes: bool,
                  plate_rows: Mapping[str, Sequence[int]] | None = None,
                  views: Mapping[str, Sequence[str]] | None = None) -> AnnData:
    """The cells AnnData around ``X`` and ``localization`` (either may be None: a store writes them itself).

    ``classes`` records the localization class names; ``plate_rows`` each plate's rows (default: from
    ``obs["plate"]``, whose rows are contiguous per plate); ``views`` the columns of each other view
    of the cells (``uns["views"]``; the caller puts the values in ``obsm``).
    """
    import anndata as ad

    from .models.registry import CLASS_NAMES

    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=var_names(width, context.plans[0].pass_names)))
    adata.obsm[Keys.SPATIAL] = spatial
    if localization is not None:
        adata.obsm[Keys.LOCALIZATION] = localization
    if classes:
        adata.uns[Keys.LOCALIZATION_CLASSES] = list(CLASS_NAMES)
    adata.uns[Keys.PROVENANCE] = provenance(context, failed, width)
    if plate_rows is None:
        plate_rows = _plate_rows(obs)
    adata.uns[Keys.PROVENANCE][PLATE_ROWS] = {k: [int(a), int(b)] for k, (a, b) in plate_rows.items()}
    if views:
        adata.uns[Keys.VIEWS] = {name: view_record(name, columns, context) for name, columns in views.items()}
    return adata


def view_record(name: str, columns: Sequence[str], context: RunContext) -> dict[str, Any]:
    """``uns["views"][name]``: the view's columns and what made it."""
    record: dict[str, Any] = {"columns": [str(c) for c in columns]}
    record.update(context.views.get(name, {}))
    if name == Keys.CELLPROFILER:
        record.update(kind="cellprofiler", groups=list(context.params.cellprofiler),
                      intensities="pixels / dtype max" + (", divided by the flat field"
                                                          if context.params.illumination else ""))
    return record


def _plate_rows(obs: pd.DataFrame) -> dict[str, tuple[int, int]]:
    codes = np.asarray(obs[Obs.PLATE].cat.codes)
    out = {}
    for i, name in enumerate(obs[Obs.PLATE].cat.categories):
        rows = np.flatnonzero(codes == i)
        if len(rows):
            out[str(name)] = (int(rows[0]), int(rows[-1]) + 1)
    return out


def provenance(context: RunContext, failed: Sequence[str], width: int) -> dict[str, Any]:
    """``uns["subcell_scale"]``: how the cells were made (model, parameters, channels, plates)."""
    params, model, first = context.params, context.model, context.plans[0]
    mapping: dict[str, Any] = {}
    for plan in context.plans:
        if plan.pass_names:
            mapping[plan.name] = {name: dict(m) for name, m in zip(plan.pass_names, plan.channel_mapping, strict=True)}
        else:
            mapping[plan.name] = dict(plan.channel_mapping[0])
    record = params.to_dict()
    return {
        "version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "preset": params.preset,
        "variant": model.identity.get("variant") or model.variant or "",
        "checkpoint_sha256": model.checkpoint_sha256 or "",
        "model": json.dumps(model.identity, sort_keys=True, default=str),
        "model_channels": list(first.model_channels),
        "embedding_dim": int(width // max(1, len(first.passes))),
        "passes": list(first.pass_names),
        "channel_mapping": mapping,
        "crop": {k: v for k, v in record["crop"].items() if v is not None},
        "normalization": params.crop.normalization,
        "mask_mode": params.crop.mask_mode,
        "pixel_size": {p.name: list(p.pixel_size) for p in context.plans},
        "crop_window_px": {p.name: list(p.window_px) for p in context.plans},
        "plates": {p.name: str(p.path) for p in context.plates},
        "label_name": params.label_name,
        "localization_layout": "pass-major: column p * 31 + k is class k of pass p",
        "obs_units": dict(OBS_UNITS),
        "failed_fields": sorted(failed),
        "parameters": json.dumps(record, sort_keys=True),
    }


def cells_name(fmt: str = "zarr") -> str:
    """The name of a run directory's cells AnnData in format ``fmt``."""
    return Files.CELLS_H5AD if fmt == "h5ad" else Files.CELLS_ZARR


def cells_path(root: str | os.PathLike[str], fmt: str = "zarr") -> Path:
    """Where a local run directory keeps its cells AnnData."""
    return Path(root) / cells_name(fmt)


# -- reading a run's cells ------------------------------------------------------------------------------
@doc_params
def read_cells(run: str | os.PathLike[str] | RunPath, *, plates: Sequence[str] | None = None, load: bool = False,
               lazy: bool | None = None, storage_options: Mapping[str, Any] | None = None) -> AnnData:
    """The cells AnnData of a run directory (or a ``cells.zarr`` / ``cells.h5ad`` path).

    Parameters
    ----------
    run
        The run directory, or the cells store itself: a local path or an fsspec URL
        (``s3://bucket/run``), as :func:`subcell_scale.embed_plate` wrote it.
    plates
        Open only these plates' rows (their ``obs`` read, ``X`` sliced): a screen's store is opened
        one plate at a time with memory for one plate's ``obs``.
    load
        Read everything into memory. By default ``X`` and ``obsm["localization"]`` stay in the store
        (dask arrays for ``cells.zarr``, anndata's backed mode for ``cells.h5ad``): the object opens
        at once whatever the number of cells, scanpy and :func:`subcell_scale.profiles.aggregate`
        read it in chunks, and ``adata.to_memory()`` loads it when it fits. The object reads the
        store as it is on disk: a later run into the same directory replaces the store, so load a
        copy first to keep the cells of an earlier run.
    lazy
        Leave ``obs`` in the store too (anndata's lazy reading: ``obs`` columns read when used), so
        opening a screen's store holds only the cell names, as Arrow strings (pandas ``str`` dtype,
        about 25 bytes a cell). ``to_memory()`` reads the names of its rows from the store as Python
        strings, as anndata writes them: names set on the lazy object are not carried over, so rename
        cells after loading them. Default: for stores of more than :attr:`subcell_scale.settings.lazy_obs`
        cells.
    {storage_options}

    Raises
    ------
    RunDirectoryError
        The directory holds no cells AnnData (the run did not finish its first step), or ``plates``
        names a plate it does not hold.
    """
    import anndata as ad

    path = RunPath.of(run, storage_options)
    if not path.name.endswith(".h5ad") and not _is_zarr(path):
        candidates = [path / cells_name(fmt) for fmt in FORMATS if (path / cells_name(fmt)).exists()]
        if not candidates:
            msg = f"{path}: no {Files.CELLS_ZARR} or {Files.CELLS_H5AD} (has the run finished embedding?)"
            raise RunDirectoryError(msg)
        path = candidates[0]
    if path.name.endswith(".h5ad"):
        with path.local_copy() as local:  # a cells.h5ad on object storage is read whole
            adata = ad.read_h5ad(local) if load or not path.is_local else ad.read_h5ad(local, backed="r")
        return views_as_frames(adata if plates is None else _plates_of(adata, plates, path))
    if plates is not None:
        return open_zarr(path, plates=plates, load=load)
    if load:
        return views_as_frames(ad.read_zarr(path.zarr_store(read_only=True)))
    return open_zarr(path, lazy=lazy)


def _is_zarr(path: RunPath) -> bool:
    """Whether ``path`` is a zarr store itself (its root metadata is there)."""
    return (path / "zarr.json").exists() or (path / ".zgroup").exists()


def _plates_of(adata: AnnData, plates: Sequence[str], path: RunPath) -> AnnData:
    rows = _rows_of(adata.uns.get(Keys.PROVENANCE, {}), plates, path)
    return adata[np.concatenate([np.arange(a, b) for a, b in rows]) if rows else []]


def _rows_of(provenance: Mapping[str, Any], plates: Sequence[str], path: Any) -> list[tuple[int, int]]:
    known = {str(k): (int(v[0]), int(v[1])) for k, v in (provenance.get(PLATE_ROWS) or {}).items()}
    unknown = [p for p in plates if p not in known]
    if unknown:
        msg = f"{path}: no cells of plate(s) {unknown}; its plates are {sorted(known)}"
        raise RunDirectoryError(msg)
    return [known[p] for p in plates]


def open_zarr(path: RunPath, obs: pd.DataFrame | None = None, *, plates: Sequence[str] | None = None,
              lazy: bool | None = None, load: bool = False) -> AnnData:
    """A zarr cells store with its matrices as dask arrays over the store's row chunks.

    ``obs`` as given when the caller holds it already; only the rows of ``plates`` (``obs`` read for
    those rows only); or ``obs`` left in the store (``lazy``).
    """
    import anndata as ad
    import dask.array as da
    import zarr
    from anndata.io import read_elem

    from ._settings import settings

    group = zarr.open_group(path.zarr_store(read_only=True), mode="r")
    uns = read_elem(group["uns"]) if "uns" in group else {}
    n_obs = int(group["obs"]["_index"].shape[0]) if "_index" in group["obs"] else None
    lazy = lazy if lazy is not None else n_obs is not None and n_obs > settings.lazy_obs
    left = plates is None and obs is None and lazy
    rows = None
    if plates is not None:
        spans = _rows_of(uns.get(Keys.PROVENANCE, {}), plates, path)
        rows = np.concatenate([np.arange(a, b) for a, b in spans]) if spans else np.zeros(0, np.int64)

    def lazy_array(node: Any) -> Any:
        dense = isinstance(node, zarr.Array) and node.attrs.get("encoding-type") == "array" and node.ndim == 2
        value = da.from_zarr(node) if dense else read_elem(node)
        return value if rows is None else value[rows]

    obsm = {k: lazy_array(v) for k, v in group["obsm"].members()} if "obsm" in group else {}
    for key in (Keys.SPATIAL,):  # small: in memory, as users index it freely (left in the store with obs)
        if key in obsm and isinstance(obsm[key], da.Array) and not left:
            obsm[key] = obsm[key].compute()
    X = lazy_array(group["X"]) if "X" in group else None
    if left:
        with ad.settings.override(check_uniqueness=False):  # unique as written; the check would hash every name
            return ad.AnnData(X=X, obs=_obs_in_store(group["obs"]), var=read_elem(group["var"]), uns=uns, obsm=obsm)
    if obs is None:
        obs = read_elem(group["obs"]) if rows is None else _obs_rows(group["obs"], rows)
    adata = ad.AnnData(X=X, obs=obs, var=read_elem(group["var"]), uns=uns, obsm=obsm)
    return views_as_frames(adata.to_memory() if load else adata)


def views_as_frames(adata: AnnData) -> AnnData:
    """Each view of ``uns["views"]`` in ``obsm`` as a DataFrame with its named columns (stored as a
    float32 matrix: one array, chunked by rows like ``X``). A view larger than
    :attr:`subcell_scale.settings.memory_budget` stays in the store (a dask array; its column names in
    ``uns["views"]``), so opening a screen's store does not read every cell's measurements."""
    from ._settings import settings

    for name, record in (adata.uns.get(Keys.VIEWS) or {}).items():
        value = adata.obsm.get(name)
        if value is not None and hasattr(value, "dask") and value.nbytes > settings.memory_budget:
            log.info("obsm[%r] (%.1f GB) left in the store; its columns are uns['views'][%r]['columns']",
                     name, value.nbytes / 1e9, name)
        elif value is not None and not isinstance(value, pd.DataFrame):
            adata.obsm[name] = pd.DataFrame(np.asarray(value), index=adata.obs_names,
                                            columns=[str(c) for c in record["columns"]])
    return adata


def _obs_rows(group: Any, rows: np.ndarray) -> pd.DataFrame:
    """The ``obs`` rows ``rows`` (contiguous runs) of a store, each column read for those rows only."""
    from anndata.io import read_elem

    order = list(group.attrs.get("column-order", []))
    index_key = group.attrs.get("_index", "_index")
    lo, hi = (int(rows.min()), int(rows.max()) + 1) if len(rows) else (0, 0)
    picked = rows - lo

    def column(node: Any) -> Any:
        if node.attrs.get("encoding-type") == "categorical":
            categories = read_elem(node["categories"])
            codes = np.asarray(node["codes"][lo:hi])[picked]
            return pd.Categorical.from_codes(codes, categories=categories, ordered=bool(node.attrs.get("ordered")))
        return np.asarray(node[lo:hi])[picked]

    frame = pd.DataFrame({name: column(group[name]) for name in order},
                         index=pd.Index(np.asarray(group[index_key][lo:hi])[picked].astype(object)))
    return frame


NAMES_DIM = "obs_names"
"""Dimension of ``obs`` left in the store: its coordinate holds the names, its ``_index`` variable reads them."""


def _obs_in_store(group: Any) -> Any:
    """``obs`` left in the store (anndata's ``Dataset2D``): columns read when used, names held compactly.

    The names are one Arrow string buffer (about 25 bytes a cell; Python strings cost about 75), read a
    chunk at a time. ``to_memory()`` takes its index from the stored names, read for the rows it has:
    Python strings, which anndata writes as it always has (an Arrow-backed index it refuses to write, in 0.12
    and, unless pandas infers strings, in later releases).
    """
    import xarray as xr
    from anndata.experimental import read_elem_lazy
    from anndata.experimental.backed import Dataset2D

    index_key = group.attrs.get("_index", "_index")
    variables = {}
    for name in [*group.attrs.get("column-order", []), index_key]:
        value = read_elem_lazy(group[name])
        if hasattr(value, "dask"):
            variables[name] = xr.Variable([NAMES_DIM], value)
        else:  # anndata's lazy categorical or nullable column, wrapped as anndata's read_lazy does
            attrs = {"base_path_or_zarr_group": value.base_path_or_zarr_group, "elem_name": value.elem_name,
                     "is_nullable_string": isinstance(value.dtype, pd.StringDtype)}
            variables[name] = xr.Variable([NAMES_DIM], xr.core.indexing.LazilyIndexedArray(value), attrs=attrs)
    variables[NAMES_DIM] = xr.Variable([NAMES_DIM], _arrow_names(group[index_key]))
    frame = Dataset2D(xr.Dataset(variables))
    frame.is_backed = True
    frame.true_index_dim = index_key
    return frame


def _arrow_names(array: Any) -> pd.Index:
    """The strings of a zarr array as an Arrow-backed index, read a chunk at a time.

    Built in the system allocator (Arrow's own pool keeps what it frees), as the large strings pandas
    holds (no cast copy), with large blocks returned when freed and the heap trimmed after: the chunks
    read leave nothing behind (a 400k-cell store: the names' 25 bytes a cell held, not 36).
    """
    import pyarrow as pa

    from ._allocator import large_blocks_returned, trim_heap

    pool, kind, step = pa.system_memory_pool(), pa.large_string(), max(1, int(array.chunks[0]))
    with large_blocks_returned():
        parts = [pa.array(np.asarray(array[lo:lo + step]), type=kind, memory_pool=pool)
                 for lo in range(0, array.shape[0], step)]
        values = pd.array(pa.chunked_array(parts, type=kind), dtype=pd.StringDtype("pyarrow", na_value=np.nan))
    trim_heap()
    return pd.Index(values, copy=False)
