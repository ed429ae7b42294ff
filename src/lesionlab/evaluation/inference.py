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
from lesionlab.forward_backend import TORCH, EngineCheck, EngineForward
from lesionlab.models.fold import fold_for
from lesionlab.precision import forward_precision
from lesionlab.views import IDENTITY, apply_view


@dataclass(frozen=True)
class InferenceSettings:
    """Where and how batches run: device, batch size, loader workers, memory layout, resolved precision, and
    the engine of an fp32 pass (`lesionlab.forward_backend.forward_engine`)."""

    device: torch.device
    batch_size: int
    workers: int
    channels_last: bool
    precision: str = "fp32"
    engine: str = TORCH


@torch.inference_mode()
def infer_view_logits(
    model: nn.Module,
    dataset: LesionDataset,
    settings: InferenceSettings,
    views: Sequence[str] = (IDENTITY,),
    description: str = "inference",
    checks: list[EngineCheck] | None = None,
) -> np.ndarray:
    """Logits of every item under every view, shape (items, views, classes), in dataset order; `model` takes
    the dataset's pixels (a network behind its `PixelInput`), and the views move pixels only.

    In fp32 the batches run through a copy of the model with its BatchNorms folded into their convolutions
    (`lesionlab.models.fold`): the same function, much faster on a CPU; on `settings.engine` where its first
    batch agrees with eager (`lesionlab.forward_backend`), the pass's check appended to `checks`. An engine
    reads NCHW arrays, so its pixels stay NCHW: in channels-last they would be copied back for every view.
    """
    engine = settings.engine if settings.precision == "fp32" else TORCH
    channels_last = settings.channels_last and engine == TORCH
    model.eval().to(settings.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model = EngineForward(fold_for(model, settings.precision), engine, description, logits=True)
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=False,
        num_workers=settings.workers,
        pin_memory=settings.device.type == "cuda",
    )
    batches = []
    for images, _ in tqdm(loader, desc=description, unit="batch", leave=False):
        inputs = to_device(images, settings.device, channels_last)
        pixels, *metadata = inputs if isinstance(inputs, tuple) else (inputs,)
        with forward_precision(settings.precision, settings.device):
            per_view = [model(apply_view(view, pixels), *metadata).float().cpu() for view in views]
        batches.append(torch.stack(per_view, dim=1).numpy())
    if checks is not None and model.check is not None:
        checks.append(model.check)
    return np.concatenate(batches).astype(np.float64)
