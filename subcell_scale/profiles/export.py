"""Profiles as tables pycytominer and copairs read unchanged, and back into AnnData.

A table has one row per profile: obs columns prefixed ``Metadata_`` (``plate`` -> ``Metadata_plate``),
then one column per feature named as ``var_names``. Parquet files also carry ``uns["profiling"]``
(as JSON in the schema metadata), so a profile's history survives the round trip.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._constants import Keys
from ..errors import ProfilingError
from ._steps import profiling_steps

logger = logging.getLogger(__name__)

METADATA_PREFIX = "Metadata_"
PARQUET_STEPS_KEY = b"subcell_scale.profiling"


def to_dataframe(adata: AnnData, *, prefix: str = METADATA_PREFIX) -> pd.DataFrame:
    """One row per profile: ``Metadata_<obs column>`` columns, then the features (float32).

    Use the frame with pycytominer by naming the features explicitly, e.g.
    ``pycytominer.normalize(df, features=list(adata.var_names), meta_features=[c for c in df if
    c.startswith("Metadata_")])``, and with copairs as ``meta = df.filter(like="Metadata_")``.
    """
    meta = adata.obs.copy()
    meta.columns = [f"{prefix}{c}" for c in meta.columns]
    clash = sorted(set(meta.columns) & set(adata.var_names))
    if clash:
        raise ProfilingError(f"to_dataframe: feature names {clash} collide with prefixed obs columns")
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    features = pd.DataFrame(x, index=adata.obs_names, columns=list(adata.var_names))
    return pd.concat([meta, features], axis=1).reset_index(drop=True)


def from_dataframe(frame: pd.DataFrame, *, features: Sequence[str] | None = None,
                   prefix: str = METADATA_PREFIX) -> AnnData:
    """AnnData from a profile table: ``Metadata_`` columns become obs (prefix removed), features X.

    Parameters
    ----------
    frame
        A table written by :func:`to_dataframe`, or by pycytominer.
    features
        Feature columns, in order; by default every column that does not start with ``prefix``.
    """
    meta_columns = [c for c in frame.columns if str(c).startswith(prefix)]
    if features is None:
        features = [c for c in frame.columns if not str(c).startswith(prefix)]
    features = list(features)
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise ProfilingError(f"from_dataframe: feature columns {missing[:10]} not in the table")
    non_numeric = [f for f in features if not pd.api.types.is_numeric_dtype(frame[f])]
    if non_numeric:
        raise ProfilingError(f"from_dataframe: columns {non_numeric[:10]} are not numeric; prefix metadata columns "
                             f"with {prefix!r} or pass features=")
    obs = frame[meta_columns].copy()
    obs.columns = [str(c)[len(prefix):] for c in meta_columns]
    obs.index = pd.Index([str(i) for i in range(len(frame))], dtype=str)
    x = frame[features].to_numpy(dtype=np.float32)
    return AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index([str(f) for f in features], dtype=str)))


def write_parquet(adata: AnnData, path: str | os.PathLike, *, partition_by: str | None = None) -> Path:
    """Write :func:`to_dataframe` as parquet, with the profiling steps in the file's metadata.

    With ``partition_by`` (an obs column, e.g. ``"plate"``), ``path`` is a folder holding one file per
    value (``Metadata_plate=<name>/``), as a screen's profiles are read one plate at a time;
    ``pandas.read_parquet`` and :func:`read_profiles` read the folder as one table.
    """
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    table = pa.Table.from_pandas(to_dataframe(adata), preserve_index=False)
    steps = json.dumps(profiling_steps(adata), default=str)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), PARQUET_STEPS_KEY: steps.encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if partition_by is None:
        pq.write_table(table, path)
    else:
        pq.write_to_dataset(table, path, partition_cols=[f"{METADATA_PREFIX}{partition_by}"])
    logger.info("wrote %d profiles x %d features to %s", adata.n_obs, adata.n_vars, path)
    return path


def write_csv(adata: AnnData, path: str | os.PathLike) -> Path:
    """Write :func:`to_dataframe` as CSV (``.csv.gz`` is compressed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_dataframe(adata).to_csv(path, index=False)
    return path


def read_profiles(path: str | os.PathLike, *, features: Sequence[str] | None = None) -> AnnData:
    """Read profiles into AnnData: an ``.h5ad`` written here, or a table (parquet, CSV or CSV.gz) written
    here or by pycytominer (``Metadata_`` columns and features)."""
    path = Path(path)
    if not path.is_file() and not (path.is_dir() and path.name.lower().endswith((".parquet", ".pq"))):
        raise ProfilingError(f"profile table not found: {path}")
    name = path.name.lower()
    steps = []
    if name.endswith(".h5ad"):
        import anndata

        try:
            return anndata.read_h5ad(path)
        except (OSError, KeyError, ValueError) as exc:
            raise ProfilingError(f"{path}: not a readable .h5ad AnnData ({exc})") from exc
    if name.endswith(".parquet") or name.endswith(".pq"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)  # a folder partitioned by plate reads as one table
        frame = table.to_pandas()
        raw = (table.schema.metadata or {}).get(PARQUET_STEPS_KEY)
        steps = json.loads(raw) if raw else []
    elif name.endswith(".csv") or name.endswith(".csv.gz"):
        frame = pd.read_csv(path)
    else:
        raise ProfilingError(f"{path}: profiles must be .h5ad, .parquet, .csv or .csv.gz")
    adata = from_dataframe(frame, features=features)
    if steps:
        adata.uns[Keys.PROFILING] = {f"{i:02d}": step for i, step in enumerate(steps)}
    return adata
