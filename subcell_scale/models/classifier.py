"""The published MLP localization classifiers (one per training seed) and their ensemble."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError
from .config import ModelConfig

ProbabilityMode = Literal["sigmoid", "softmax"]


class MLPClassifier(nn.Sequential):
    """``Linear -> ReLU -> (Dropout) -> Linear -> ReLU -> (Dropout) -> Linear``, keys ``0.*``, ``3.*``, ``6.*``.

    The Dropout slots of the training layout are Identity here, so the published state_dicts load
    strictly with their own indices. Outputs are logits of a multi-label head.
    """

    def __init__(self, in_features: int, hidden: tuple[int, ...] = (512, 256), num_classes: int = 31) -> None:
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Identity()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)

    @classmethod
    def from_config(cls, config: ModelConfig) -> MLPClassifier:
        return cls(config.embedding_dim, config.classifier_hidden, config.num_classes)


def ensemble_probabilities(logits: torch.Tensor, mode: ProbabilityMode = "sigmoid") -> torch.Tensor:
    """Average the classifiers: ``logits`` ``(B, K, classes)`` -> ``(B, classes)``.

    ``"sigmoid"`` is the mean of per-classifier sigmoids (the published multi-label output).
    ``"softmax"`` additionally applies a softmax over classes to that mean, which is what
    SubCellPortable >= 2025-10 writes; it keeps the ranking but squashes values towards 1/31.
    """
    if mode not in ("sigmoid", "softmax"):
        msg = f"probability mode must be 'sigmoid' or 'softmax' (SubCellPortable >= 2025-10), got {mode!r}"
        raise ConfigError(msg)
    probs = torch.sigmoid(logits.float()).mean(dim=1)
    if mode == "softmax":
        probs = probs.softmax(dim=-1)
    return probs
