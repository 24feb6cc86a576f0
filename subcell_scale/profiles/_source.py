"""Row-block access to a cells AnnData, in memory or on disk (zarr or h5ad), without loading X.

A plate's cells AnnData can hold a million cells by 1536 features (6 GB float32), so aggregation
reads the feature matrix in row windows aligned to the store's chunks; only ``obs`` is read whole.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._constants import Keys
from ..errors import ProfilingError

logger = logging.getLogger(__name__)

# Target bytes per read window; windows are rounded to whole chunks of the stored matrix.
WINDOW_BYTES = 64 * 2**20


class CellsSource:
    """The obs table, feature names and a row reader of one cells AnnData.

    Parameters
    ----------
    adata
        An in-memory (or backed) AnnData, or the path of a ``.zarr`` / ``.h5ad`` cells AnnData;
        a path is opened read-only and only ``obs``, ``var`` and ``uns`` are loaded.
    layer, obsm
        Read ``layers[layer]`` or ``obsm[obsm]`` instead of ``X`` (at most one of them).
    """

    def __init__(self, adata: AnnData | str | os.PathLike, *, layer: str | None = None,
                 obsm: str | None = None) -> None:
        if layer is not None and obsm is not None:
            raise ProfilingError(f"aggregate: give layer= or obsm=, not both (got layer={layer!r}, obsm={obsm!r})")
        self._file: Any = None
        self._window: tuple[int, np.ndarray] | None = None
        if isinstance(adata, AnnData):
            self.description = "AnnData in memory" if not adata.isbacked else f"backed AnnData {adata.filename}"
            self.obs = adata.obs if isinstance(adata.obs, pd.DataFrame) else adata.obs.to_memory()  # left in the store
            self.uns = dict(adata.uns)
            self._matrix, self.var_names, self.source = _in_memory_matrix(adata, layer, obsm)
            self.var = adata.var.copy() if layer is not None or obsm is None else None
        elif isinstance(adata, (str, os.PathLike)):
            self._open_path(Path(adata), layer, obsm)
        else:
            raise ProfilingError(f"aggregate: expected an AnnData or the path of a .zarr/.h5ad file, "
                                 f"got {type(adata).__name__}")
        self.n_rows, self.n_features = int(self._matrix.shape[0]), int(self._matrix.shape[1])
        if self.n_rows != len(self.obs):
            raise ProfilingError(f"{self.description}: {self.source} has {self.n_rows} rows but obs has "
                                 f"{len(self.obs)}")
        chunk_rows = _chunk_rows(self._matrix)
        per_window = max(1, WINDOW_BYTES // max(1, self.n_features * 4) // chunk_rows)
        self.window_rows = chunk_rows * per_window

    def _open_path(self, path: Path, layer: str | None, obsm: str | None) -> None:
        from anndata.io import read_elem

        self.description = str(path)
        if not path.exists():
            raise ProfilingError(f"cells AnnData not found: {path}")
        if path.is_dir() or path.suffix == ".zarr":
            import zarr

            try:
                group = zarr.open_group(str(path), mode="r")
            except Exception as exc:  # zarr raises several unrelated types for a non-zarr folder
                raise ProfilingError(f"{path}: not a zarr AnnData ({type(exc).__name__}: {exc})") from exc
        elif path.suffix in (".h5ad", ".h5"):
            import h5py

            try:
                group = self._file = h5py.File(path, "r")
            except OSError as exc:
                raise ProfilingError(f"{path}: not an h5ad AnnData ({exc})") from exc
        else:
            raise ProfilingError(f"{path}: a cells AnnData must be a .zarr folder or an .h5ad file")
        for key in ("obs", "var"):
            if key not in group:
                raise ProfilingError(f"{path}: no '{key}' group; not an AnnData store")
        self.obs = read_elem(group["obs"])
        self.uns = read_elem(group["uns"]) if "uns" in group else {}
        var = read_elem(group["var"])
        if obsm is not None:
            if "obsm" not in group or obsm not in group["obsm"]:
                raise ProfilingError(f"{path}: no obsm['{obsm}']")
            element, self.source, self.var = group["obsm"][obsm], f"obsm['{obsm}']", None
        elif layer is not None:
            if "layers" not in group or layer not in group["layers"]:
                raise ProfilingError(f"{path}: no layers['{layer}']")
            element, self.source, self.var = group["layers"][layer], f"layers['{layer}']", var
        else:
            if "X" not in group:
                raise ProfilingError(f"{path}: no X matrix")
            element, self.source, self.var = group["X"], "X", var
        self._matrix = _disk_matrix(element, path, self.source)
        if self.var is not None:
            self.var_names = pd.Index(self.var.index.astype(str))
        else:
            self.var_names = _obsm_names(obsm, self._matrix.shape[1], self.uns)

    def read(self, start: int, stop: int, *, cache: bool = True) -> np.ndarray:
        """Rows ``start:stop`` as a dense array (a view for in-memory arrays).

        With ``cache`` the window is kept, so groups gathered one after the other share its read.
        """
        if cache and self._window is not None and self._window[0] == start and len(self._window[1]) == stop - start:
            return self._window[1]
        block = self._matrix[start:stop]
        if sp.issparse(block):
            block = block.toarray()
        block = np.asarray(block)
        if block.dtype.kind not in "fiu":
            raise ProfilingError(f"{self.description}: {self.source} has dtype {block.dtype}; features must be numeric")
        if cache:
            self._window = (start, block)
        return block

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at the sorted positions ``rows``, read window by window (only windows that hold some)."""
        out = None
        w = self.window_rows
        starts = np.unique(rows // w) * w
        filled = 0
        for start in starts:
            stop = min(start + w, self.n_rows)
            lo, hi = np.searchsorted(rows, [start, stop])
            block = self.read(int(start), int(stop))
            if out is None:
                out = np.empty((len(rows), self.n_features), dtype=block.dtype)
            out[filled:filled + hi - lo] = block[rows[lo:hi] - start]
            filled += hi - lo
        if out is None:
            return np.empty((0, self.n_features), dtype=np.float32)
        return out

    def close(self) -> None:
        """Release the open file (h5ad) and the cached window."""
        self._window = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> CellsSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _in_memory_matrix(adata: AnnData, layer: str | None, obsm: str | None) -> tuple[Any, pd.Index, str]:
    if obsm is not None:
        if obsm not in adata.obsm:
            raise ProfilingError(f"aggregate: no obsm['{obsm}'] in the AnnData (has {sorted(adata.obsm)})")
        value = adata.obsm[obsm]
        if isinstance(value, pd.DataFrame):
            return value.to_numpy(), pd.Index(value.columns.astype(str)), f"obsm['{obsm}']"
        return value, _obsm_names(obsm, value.shape[1], adata.uns), f"obsm['{obsm}']"
    if layer is not None:
        if layer not in adata.layers:
            raise ProfilingError(f"aggregate: no layers['{layer}'] in the AnnData (has {sorted(adata.layers)})")
        return adata.layers[layer], pd.Index(adata.var_names.astype(str)), f"layers['{layer}']"
    if adata.X is None:
        raise ProfilingError("aggregate: the AnnData has no X matrix")
    return adata.X, pd.Index(adata.var_names.astype(str)), "X"


def _disk_matrix(element: Any, path: Path, source: str) -> Any:
    encoding = element.attrs.get("encoding-type", "array")
    if encoding in ("csr_matrix", "csc_matrix"):
        from anndata.io import sparse_dataset

        return sparse_dataset(element)
    if encoding != "array" or not hasattr(element, "shape") or len(element.shape) != 2:
        raise ProfilingError(f"{path}: {source} is a '{encoding}' element, not a 2-D feature matrix")
    return element


def _obsm_names(key: str, n: int, uns: dict) -> pd.Index:
    names = uns.get(Keys.LOCALIZATION_CLASSES) if key == Keys.LOCALIZATION else None
    if names is None:
        names = ((uns.get(Keys.VIEWS) or {}).get(key) or {}).get("columns")
    if names is not None and len(names) == n:
        return pd.Index([str(name) for name in names])
    return pd.Index([f"{key}_{i:04d}" for i in range(n)])


def _chunk_rows(matrix: Any) -> int:
    chunks = getattr(matrix, "chunks", None)
    if isinstance(chunks, tuple) and chunks and chunks[0]:
        first = chunks[0]
        return int(first[0] if isinstance(first, tuple) else first)  # dask: a tuple of chunk sizes per axis
    return 1024
