"""Names shared by code, CLI and tests: AnnData keys, obs columns and run-directory files."""

from __future__ import annotations


class Keys:
    """AnnData keys written by subcell-scale."""

    LOCALIZATION = "localization"  # obsm: (n_cells, 31) probabilities
    LOCALIZATION_CLASSES = "localization_classes"  # uns: the 31 class names, column order of obsm
    SPATIAL = "spatial"  # obsm: (x, y) centroids in micrometres
    PROVENANCE = "subcell_scale"  # uns: how the cells were made
    PROFILING = "profiling"  # uns: steps applied to profiles, in order
    N_CELLS = "n_cells"  # obs of profiles: cells aggregated into the row
    N_PROFILES = "n_profiles"  # obs of consensus profiles: replicate profiles combined into the row
    CELLPROFILER = "cellprofiler"  # obsm: CellProfiler measurements (cp_measure column names)
    VIEWS = "views"  # uns: each obsm view beside X -> its columns and how it was made


class Obs:
    """Per-cell obs columns of the cells AnnData."""

    PLATE = "plate"
    WELL = "well"
    ROW = "row"
    COLUMN = "column"
    FIELD = "field"
    LABEL = "label"
    AREA = "area"
    CENTROID_Y = "centroid_y"
    CENTROID_X = "centroid_x"
    NONFINITE = "nonfinite_pixels"  # with nonfinite="zero": the cell's NaN or infinite pixels, read as 0
    CATEGORICAL = (PLATE, WELL, ROW, COLUMN, FIELD)


class Files:
    """Names inside a run directory (see ``subcell-scale run``)."""

    CELLS_ZARR = "cells.zarr"
    CELLS_H5AD = "cells.h5ad"
    PROFILES = "profiles.h5ad"
    METRICS = "metrics"
    DESIGN = "design.json"  # in metrics/: the evaluation design the tables were computed with
    FIGURES = "figures"
    REPORT = "report.html"
    MANIFEST = "manifest.json"
    RECORDS = "records"  # folder: the records of each plate's fields, records/<plate>.json
    SHARDS = "shards"
    LOCK = ".lock"
    PLATES = "plates"
    PLATEMAP = "platemap.csv"
    RUN = "run.json"  # the run's description: options, parameters, each plate's plan
    PROFILES_PARQUET = "profiles.parquet"
    FLATFIELD = "flatfield"  # folder: one flat field per plate, <plate>.npy
    INTENSITY = "intensity"  # folder: one raw-pixel histogram per plate, <plate>.npy (plate percentiles)
    MODEL = "model"  # folder: a model instance saved for the workers
    WELLS = "wells"  # folder: each plate's wells aggregated from its shards as it ended, wells/<plate>.h5ad
    LABELS = "labels"  # folder: labels of plates that cannot take them, labels/<plate>/<well>_<field>_<name>.npz


class Status:
    """States of a field in the manifest, and of a run."""

    DONE = "done"
    FAILED = "failed"
    PENDING = "pending"
    SKIPPED = "skipped"  # segmentation: the field already had its labels
    INCOMPLETE = "incomplete"  # a run that finished with failed fields or skipped steps
    RUNNING = "running"  # a run in progress (or killed without a chance to say so)
    INTERRUPTED = "interrupted"  # a run stopped by the user (Ctrl-C)


class DemoSize:
    """Default size of generated demo plates: the demo, ``make-demo-plate`` and ``make_demo_plate`` share it,
    small enough that the whole demo runs in minutes on a laptop."""

    PLATES = 2
    WELLS = 12
    FIELDS = 1  # per well


VAR_PREFIX = "subcell_"
