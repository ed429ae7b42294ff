"""A stage's optimizer, learning-rate schedule and moving average of the weights, built from its recipe."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lesionlab.errors import ConfigError
from lesionlab.training.recipe import StageConfig


def make_optimizer(stage: StageConfig, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (with Nesterov momentum) over the trainable parameters."""
    if not parameters:
        raise ConfigError(
            f"trainable plan {stage.trainable!r} leaves no parameter to train; include `head` or some blocks."
        )
    if stage.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=stage.lr, weight_decay=stage.weight_decay)
    if stage.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=stage.lr, weight_decay=stage.weight_decay)
    return torch.optim.SGD(
        parameters,
        lr=stage.lr,
        momentum=stage.momentum,
        nesterov=stage.momentum > 0,
        weight_decay=stage.weight_decay,
    )


def make_scheduler(
    stage: StageConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> tuple[torch.optim.lr_scheduler.LRScheduler | None, bool]:
    """The stage's learning-rate schedule and whether it steps per batch (onecycle) or per epoch."""
    schedulers = torch.optim.lr_scheduler
    if stage.scheduler == "step":
        return schedulers.StepLR(optimizer, step_size=stage.step_size, gamma=stage.gamma), False
    if stage.scheduler == "cosine":
        return schedulers.CosineAnnealingLR(optimizer, T_max=stage.epochs), False
    if stage.scheduler == "onecycle":
        return schedulers.OneCycleLR(
            optimizer, max_lr=stage.lr, epochs=stage.epochs, steps_per_epoch=steps_per_epoch
        ), True
    return None, False


def weight_average(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of the weights and BatchNorm statistics, or None without `ema_decay`.

    Averaging the last few hundred steps of a short, noisy fine-tune usually generalises better than its
    last step; the epoch loop validates both each epoch and lets the selection rule choose.
    """
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
