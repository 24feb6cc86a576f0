"""Evaluation of profiles: mAP with p-values (copairs semantics), MoA nearest-neighbour accuracy,
the JUMP / SubCell benchmark designs on AnnData, and localization / clustering scores.

``evaluate_profiles(profiles, preset="jump-cellpainting")`` (or ``design={...}``) is the one
evaluation path: every table of the SubCell JUMP benchmark, per cell type (see
:mod:`subcell_scale.metrics.evaluate`); ``run``, ``subcell-scale evaluate`` and the notebooks write
and show its tables.

``average_precision`` and ``mean_average_precision`` take copairs' arguments and return its columns,
computed block-wise so that 50,000 profiles in a "vs all other perturbations" design fit in a few GB.
"""

from __future__ import annotations

from .designs import (
    moa_nn_accuracy,
    moa_retrieval,
    phenotypic_activity,
    replicate_retrieval,
    to_metadata_frame,
    write_table,
)
from .evaluate import (
    EvaluationDesign,
    evaluate_profiles,
    usable_moa_table,
    write_tables,
)
from .localization import (
    clustering_scores,
    evaluate_localization,
    label_indicator,
    linear_probe,
    localization_scores,
    prediction_scores,
)
from .map import (
    assign_reference_index,
    average_precision,
    benjamini_hochberg,
    expected_average_precision,
    fraction_retrieved,
    mean_average_precision,
    normalized_average_precision,
)
from .nn import nn_accuracy

__all__ = [
    "EvaluationDesign",
    "assign_reference_index",
    "average_precision",
    "benjamini_hochberg",
    "clustering_scores",
    "evaluate_localization",
    "evaluate_profiles",
    "expected_average_precision",
    "fraction_retrieved",
    "label_indicator",
    "linear_probe",
    "localization_scores",
    "mean_average_precision",
    "moa_nn_accuracy",
    "moa_retrieval",
    "nn_accuracy",
    "normalized_average_precision",
    "phenotypic_activity",
    "prediction_scores",
    "replicate_retrieval",
    "to_metadata_frame",
    "usable_moa_table",
    "write_table",
    "write_tables",
]
