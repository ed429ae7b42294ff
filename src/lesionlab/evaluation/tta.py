"""Test-time augmentation: the model sees each image in several orientations and the class probabilities of
the views are averaged.

Dermoscopic images have no canonical orientation, so flips and 90° rotations are label-preserving views
(named in `lesionlab.views`, whose numpy twins prediction uses). They are applied to the normalised, square
batch with exact tensor operations (no interpolation), after the run's own preprocessing, so every view sees
the same pixels rearranged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from lesionlab.evaluation.calibration import softmax_probabilities
from lesionlab.views import DEFAULT_VIEWS, IDENTITY, parse_views

__all__ = ["DEFAULT_VIEWS", "IDENTITY", "VIEWS", "apply_view", "average_view_probabilities", "parse_views"]

VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    IDENTITY: lambda batch: batch,
    "hflip": lambda batch: torch.flip(batch, dims=(-1,)),
    "vflip": lambda batch: torch.flip(batch, dims=(-2,)),
    "rot90": lambda batch: torch.rot90(batch, 1, dims=(-2, -1)),
    "rot180": lambda batch: torch.rot90(batch, 2, dims=(-2, -1)),
    "rot270": lambda batch: torch.rot90(batch, 3, dims=(-2, -1)),
    "transpose": lambda batch: batch.transpose(-2, -1),
}


def apply_view(name: str, batch: torch.Tensor) -> torch.Tensor:
    """One view of a batch (N, C, H, W)."""
    return VIEWS[name](batch)


def average_view_probabilities(view_logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Mean over views of softmax(logits / T), for logits shaped (N, views, classes).

    Probabilities, not logits, are averaged: each view casts a calibrated vote, and the temperature fitted on
    single-view logits applies to each view as it was fitted.
    """
    return softmax_probabilities(view_logits, temperature).mean(axis=1)
