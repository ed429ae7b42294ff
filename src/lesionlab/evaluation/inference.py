"""Run a model over a dataset and keep its raw logits, one set per test-time view.

Logits, not probabilities, are kept: temperature scaling divides logits, and the plain, TTA and calibrated
variants of one evaluation all come from this single pass (the identity view is always first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from lesionlab.data.dataset import LesionDataset
from lesionlab.device import to_device
from lesionlab.models.fold import fold_for
from lesionlab.precision import forward_precision
from lesionlab.views import IDENTITY, apply_view


@dataclass(frozen=True)
class InferenceSettings:
    """Where and how batches run: device, batch size, loader workers, memory layout, resolved precision."""

    device: torch.device
    batch_size: int
    workers: int
    channels_last: bool
    precision: str = "fp32"


@torch.inference_mode()
def infer_view_logits(
    model: nn.Module,
    dataset: LesionDataset,
    settings: InferenceSettings,
    views: Sequence[str] = (IDENTITY,),
    description: str = "inference",
) -> np.ndarray:
    """Logits of every item under every view, shape (items, views, classes), in dataset order.

    In fp32 the batches run through a copy of the model with its BatchNorms folded into their convolutions
    (`lesionlab.models.fold`): the same function, much faster on a CPU.
    """
    model.eval().to(settings.device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    model = fold_for(model, settings.precision)
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=False,
        num_workers=settings.workers,
        pin_memory=settings.device.type == "cuda",
    )
    batches = []
    for images, _ in tqdm(loader, desc=description, unit="batch", leave=False):
        inputs = to_device(images, settings.device, settings.channels_last)
        pixels, *metadata = inputs if isinstance(inputs, tuple) else (inputs,)
        with forward_precision(settings.precision, settings.device):
            per_view = [model(apply_view(view, pixels), *metadata).float().cpu() for view in views]
        batches.append(torch.stack(per_view, dim=1).numpy())
    return np.concatenate(batches).astype(np.float64)
