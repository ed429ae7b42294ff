"""MixUp and CutMix for training batches, from torchvision's `transforms.v2`.

Both regularise fine-tuning on a small dataset by training on blends of two images (MixUp: the whole images,
CutMix: a box of one pasted into the other) with their targets blended in the same proportion, so the loss
takes class probabilities instead of labels (PyTorch's cross-entropy, the logit-adjusted one included,
accepts either). Whatever else a batch carries is blended in that proportion too: a metadata model's encoded
fields, and a distilled run's teacher probabilities (each teacher's softmax at the distillation temperature,
handed back as `T * log p` so `DistillationLoss` reads the blend exactly). torchvision blends them as extra
columns of its probability labels, so one draw of the weight (and box) serves all. A batch is mixed with the
stage's `probability`, drawn from the global generator, which the training loop seeds per epoch, so a resumed
run mixes the batches it would have mixed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional
from torchvision.transforms import v2

from lesionlab.training.recipe import MixingConfig

BatchMixer = Callable[[Any, Any], tuple[Any, Any]]
"""(inputs, targets) -> the same structure mixed: inputs are images or (images, fields); targets labels or
(labels, teacher logits); mixed labels come back as class probabilities."""

PROBABILITY_FLOOR = 1e-12


def batch_mixer(mixing: MixingConfig | None, num_classes: int,
                temperature: float | None = None) -> BatchMixer | None:
    """The stage's mixing as a function of a batch, or None without mixing; `temperature` is the
    distillation temperature of a distilled run (its targets carry teacher logits)."""
    if mixing is None:
        return None
    choices: list[v2.Transform] = []
    if mixing.mixup_alpha > 0:
        choices.append(v2.MixUp(alpha=mixing.mixup_alpha))
    if mixing.cutmix_alpha > 0:
        choices.append(v2.CutMix(alpha=mixing.cutmix_alpha))
    transform = v2.RandomChoice(choices)

    def apply(inputs: Any, targets: Any) -> tuple[Any, Any]:
        if torch.rand(()).item() >= mixing.probability:
            return inputs, targets
        images, fields = inputs if isinstance(inputs, tuple) else (inputs, None)
        labels, teacher = targets if isinstance(targets, tuple) else (targets, None)
        columns = [functional.one_hot(labels, num_classes).float()]
        if fields is not None:
            columns.append(fields.float())
        if teacher is not None:
            if temperature is None:
                raise ValueError("teacher logits to mix need the distillation temperature")
            columns.append(torch.softmax(teacher.float() / temperature, dim=-1).flatten(1))
        mixed_images, mixed = transform(images, torch.cat(columns, dim=1))
        widths = [column.shape[1] for column in columns]
        parts = list(torch.split(mixed, widths, dim=1))
        mixed_labels = parts.pop(0)
        mixed_inputs = mixed_images if fields is None else (mixed_images, parts.pop(0).to(fields.dtype))
        if teacher is None:
            return mixed_inputs, mixed_labels
        probabilities = parts.pop(0).view_as(teacher)
        return mixed_inputs, (mixed_labels, temperature * probabilities.clamp_min(PROBABILITY_FLOOR).log())

    return apply
