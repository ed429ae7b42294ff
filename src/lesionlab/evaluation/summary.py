"""The data and model facts a report states before any metric: what the model saw, what it costs to run.

Counts per class and part come from the run's own split, so a reader can tell how many melanomas a recall was
measured on; model cost is measured on the loaded network (FLOPs with `torch.utils.flop_counter`), not quoted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lesionlab.models.checkpoint import ModelCard


def flops_per_image(model: nn.Module, input_size: int) -> int:
    """Floating-point operations of one forward pass on one image (a multiply-add counts as 2)."""
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, input_size, input_size, device=device))
    return int(counter.get_total_flops())


def model_summary(
    model: nn.Module, card: ModelCard, trainable_parameters: int | None, training_seconds: float | None
) -> dict[str, Any]:
    """Architecture, size, cost per image, preprocessing and provenance of the evaluated checkpoint.

    `trainable_parameters` is the count the last training stage updated (from its freeze plan); None where the
    run does not say.
    """
    return {
        "arch": card.arch,
        "classes": list(card.classes),
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "trainable_parameters": trainable_parameters,
        "flops_per_image": flops_per_image(model, card.input_size),
        "input_size": card.input_size,
        "mean": list(card.mean),
        "std": list(card.std),
        "grayscale": card.grayscale,
        "stage": card.stage,
        "epoch": card.epoch,
        "training_seconds": training_seconds,
    }


def class_counts(labels: Iterable[int], class_codes: Sequence[str]) -> dict[str, int]:
    """Images per class code, every class listed (zero where absent)."""
    counts = Counter(labels)
    return {code: counts.get(index, 0) for index, code in enumerate(class_codes)}


def data_summary(
    split_labels: Mapping[str, Iterable[int]],
    evaluated_labels: Iterable[int],
    evaluated_name: str,
    class_codes: Sequence[str],
) -> dict[str, Any]:
    """Images per class in each part of the run's split and in the evaluated data."""
    return {
        "split_parts": {part: class_counts(labels, class_codes) for part, labels in split_labels.items()},
        "evaluated_name": evaluated_name,
        "evaluated": class_counts(evaluated_labels, class_codes),
    }
