"""Checks that a Grad-CAM map says something about the image and the trained model, not about the method.

A map worth showing must move with the lesion: mirror the image and the map must mirror too (the
correlation of the mirrored image's map with the mirrored map should be high, with the unmirrored map low
unless the lesion is symmetric). It must depend on the learned weights: Adebayo et al. (2018, "Sanity checks
for saliency maps") re-initialise the weights and expect a different map. And where a map points at a
region, hiding that region should cost the explained class probability (occlusion). Each check returns
numbers; `scripts/check_explanations.py` prints them for a run and `docs/explanations.md` reports them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lesionlab.explain import view_averaged_heatmap
from lesionlab.views import IDENTITY, apply_view

OCCLUSION_FRACTION = 0.25


def map_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson correlation of two maps of the same shape; 0 where either is constant."""
    a, b = first.ravel().astype(np.float64), second.ravel().astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


@dataclass(frozen=True)
class FlipCheck:
    """How the map of the mirrored image relates to the original map: `follows` the mirrored map (what a
    faithful explanation does) or `stays` where the unmirrored one was (what a positional artefact does)."""

    follows: float
    stays: float


def flip_check(model: nn.Module, arch: str, batch: np.ndarray, class_index: int,
               views: tuple[str, ...] = (IDENTITY,), flip: str = "hflip") -> FlipCheck:
    """Grad-CAM of one pre-processed image and of its mirror image, compared both ways."""
    original = view_averaged_heatmap(model, arch, batch, class_index, views)
    mirrored_input = np.ascontiguousarray(apply_view(flip, batch))
    mirrored = view_averaged_heatmap(model, arch, mirrored_input, class_index, views)
    return FlipCheck(follows=map_correlation(mirrored, apply_view(flip, original)),
                     stays=map_correlation(mirrored, original))


def randomised_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of `model` with every layer re-initialised (the full-randomisation test of Adebayo et al.):
    same architecture and inputs, none of the learned weights. BatchNorm statistics are reset as well."""
    clone = copy.deepcopy(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in clone.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
    finally:
        torch.random.set_rng_state(generator_state)
    return clone.eval()


def region_masks(size: int, fraction: float = OCCLUSION_FRACTION) -> dict[str, np.ndarray]:
    """Boolean masks of the four corner squares and the centre square, each `fraction` of the side."""
    side = max(1, round(size * fraction))
    start, stop = (size - side) // 2, (size - side) // 2 + side
    masks = {name: np.zeros((size, size), dtype=bool) for name in
             ("top-left", "top-right", "bottom-left", "bottom-right", "centre")}
    masks["top-left"][:side, :side] = True
    masks["top-right"][:side, -side:] = True
    masks["bottom-left"][-side:, :side] = True
    masks["bottom-right"][-side:, -side:] = True
    masks["centre"][start:stop, start:stop] = True
    return masks


def occlusion_drops(probabilities: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, class_index: int,
                    fraction: float = OCCLUSION_FRACTION) -> dict[str, float]:
    """How much the class probability falls when each region is filled with the image's mean colour (a
    grey patch that adds no new edge colour); positive = the model relied on that region."""
    size = batch.shape[-1]
    fill = batch.mean(axis=(2, 3), keepdims=True)
    masks = region_masks(size, fraction)
    occluded = np.concatenate([np.where(mask, fill, batch) for mask in masks.values()], axis=0)
    scores = probabilities(np.concatenate([batch, occluded], axis=0).astype(np.float32))[:, class_index]
    return {name: float(scores[0] - score) for name, score in zip(masks, scores[1:], strict=True)}


def hot_spot(heatmap: np.ndarray) -> tuple[float, float]:
    """Where a map peaks, as (x, y) fractions of the side from the top-left corner."""
    row, column = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return (column + 0.5) / heatmap.shape[1], (row + 0.5) / heatmap.shape[0]
