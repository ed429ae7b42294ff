"""Test-time augmentation: the model sees each image in several orientations and the class probabilities of
the views are averaged.

Dermoscopic images have no canonical orientation, so flips and 90° rotations are label-preserving views. They
are applied to the normalised, square batch with exact tensor operations (no interpolation), after the run's
own preprocessing, so every view sees the same pixels rearranged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from lesionlab.errors import ConfigError
from lesionlab.evaluation.calibration import softmax_probabilities

IDENTITY = "identity"

VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    IDENTITY: lambda batch: batch,
    "hflip": lambda batch: torch.flip(batch, dims=(-1,)),
    "vflip": lambda batch: torch.flip(batch, dims=(-2,)),
    "rot90": lambda batch: torch.rot90(batch, 1, dims=(-2, -1)),
    "rot180": lambda batch: torch.rot90(batch, 2, dims=(-2, -1)),
    "rot270": lambda batch: torch.rot90(batch, 3, dims=(-2, -1)),
    "transpose": lambda batch: batch.transpose(-2, -1),
}

DEFAULT_VIEWS: tuple[str, ...] = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270")


def parse_views(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Turn `hflip,rot90` (or a list) into views starting with the identity; None gives the default set.

    The identity always comes first so that the same inference pass also yields the plain (no-TTA)
    predictions.
    """
    if text is None:
        return DEFAULT_VIEWS
    names = [name.strip() for name in (text.split(",") if isinstance(text, str) else text) if name.strip()]
    unknown = [name for name in names if name not in VIEWS]
    if unknown:
        raise ConfigError(f"unknown TTA view(s) {', '.join(unknown)}; choose from {', '.join(VIEWS)}")
    return (IDENTITY, *dict.fromkeys(name for name in names if name != IDENTITY))


def apply_view(name: str, batch: torch.Tensor) -> torch.Tensor:
    """One view of a batch (N, C, H, W)."""
    return VIEWS[name](batch)


def average_view_probabilities(view_logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Mean over views of softmax(logits / T), for logits shaped (N, views, classes).

    Probabilities, not logits, are averaged: each view casts a calibrated vote, and the temperature fitted on
    single-view logits applies to each view as it was fitted.
    """
    return softmax_probabilities(view_logits, temperature).mean(axis=1)
