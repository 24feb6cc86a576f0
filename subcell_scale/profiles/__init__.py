"""Well profiles from cells: aggregate, normalize, select features, build consensus, export.

Each step takes and returns AnnData (profiles: one row per well or per consensus group) and appends
what it did, with its parameters and the features it removed, to ``uns["profiling"]`` (read it as a
list with :func:`profiling_steps`). Names and arithmetic follow pycytominer 1.7.1, so a JUMP recipe
reads the same here::

    from subcell_scale import profiles as pf

    wells = pf.aggregate("run/cells.zarr", operation="median")          # streamed from disk
    wells = pf.normalize(wells, method="mad_robustize", reference="control_type == 'negcon'", by="plate")
    wells = pf.feature_select(wells, operation=["variance_threshold", "correlation_threshold"])
    compounds = pf.consensus(wells, by="compound", operation="median")
    pf.write_parquet(wells, "run/profiles.parquet")                    # Metadata_ columns + features

A protocol's whole chain, per cell type, in one call (:func:`postprocess`)::

    wells = pf.postprocess(wells, steps=[
        {"step": "normalize", "method": "spherize", "spherize_method": "PCA-cor",
         "reference": "control_type == 'negcon'", "spherize_variant": "legacy"},
        {"step": "normalize", "method": "standardize", "by": "plate"},
    ])
"""

from __future__ import annotations

from ._steps import profiling_steps
from .aggregate import aggregate
from .consensus import consensus
from .export import (
    from_dataframe,
    read_profiles,
    to_dataframe,
    write_csv,
    write_parquet,
)
from .feature_select import feature_select, select_variant_features
from .harmony import harmony
from .inverse_normal import rank_inverse_normal
from .normalize import normalize
from .postprocess import postprocess

__all__ = [
    "aggregate",
    "consensus",
    "feature_select",
    "from_dataframe",
    "harmony",
    "normalize",
    "postprocess",
    "profiling_steps",
    "rank_inverse_normal",
    "read_profiles",
    "select_variant_features",
    "to_dataframe",
    "write_csv",
    "write_parquet",
]
