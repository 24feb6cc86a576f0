"""Evaluation of profiles: mAP with p-values (copairs semantics), MoA nearest-neighbour accuracy,
the JUMP / SubCell benchmark designs on AnnData, and localization / clustering scores.

``average_precision`` and ``mean_average_precision`` take copairs' arguments and return its columns,
computed block-wise so that 50,000 profiles in a "vs all other perturbations" design fit in a few GB.
"""

from __future__ import annotations

from .map import (
    assign_reference_index,
    average_precision,
    benjamini_hochberg,
    expected_average_precision,
    fraction_retrieved,
    mean_average_precision,
    normalized_average_precision,
)

__all__ = [
    "assign_reference_index",
    "average_precision",
    "benjamini_hochberg",
    "expected_average_precision",
    "fraction_retrieved",
    "mean_average_precision",
    "normalized_average_precision",
]
