"""Test-time augmentation: the model sees each image in several orientations, and `lesionlab.scoring`
averages the class probabilities of the views.

Dermoscopic images have no canonical orientation, so flips and 90° rotations are label-preserving views
(named in `lesionlab.views`, whose numpy twins prediction uses). They are applied to the normalised, square
batch with exact tensor operations (no interpolation), after the run's own preprocessing, so every view sees
the same pixels rearranged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lesionlab.views import DEFAULT_VIEWS, IDENTITY, parse_views

__all__ = ["DEFAULT_VIEWS", "IDENTITY", "VIEWS", "apply_view", "parse_views"]

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

