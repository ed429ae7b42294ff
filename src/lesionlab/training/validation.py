"""Scoring a stage's weights on the validation part, and choosing the precision of forward-only passes.

The scores are `evaluate`'s headline metrics under the `val_*` names of the history columns, so the epoch a
stage keeps is chosen on the same numbers `lesionlab evaluate` reports.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate

from lesionlab.device import Forward, forward_in_chunks, to_device
from lesionlab.evaluation.metrics import headline_metrics
from lesionlab.models.pixel_input import PixelInput
from lesionlab.precision import PARITY_IMAGES, ParityCheck, check_parity, resolve_precision
from lesionlab.training import distributed
from lesionlab.training.batches import Batch, StageData
from lesionlab.training.recipe import Recipe

log = logging.getLogger(__name__)


def score(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro F1 as `evaluate` defines them, named as history columns."""
    headline = headline_metrics(labels, predictions)
    return {f"val_{name}": headline[name] for name in ("accuracy", "balanced_accuracy", "macro_f1")}


@torch.inference_mode()
def evaluate(
    forward: Forward, batches: Iterable[Batch], data: StageData
) -> tuple[float, np.ndarray, np.ndarray]:
    """Unweighted cross-entropy, labels and predictions over the validation set."""
    loss_sum, labels_seen, predictions = 0.0, [], []
    for inputs, labels in batches:
        logits = forward_in_chunks(forward, to_device(inputs, data.device, data.channels_last)).float().cpu()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        labels_seen.append(labels.numpy())
        predictions.append(logits.argmax(dim=1).numpy())
    truth = np.concatenate(labels_seen)
    return loss_sum / max(len(truth), 1), truth, np.concatenate(predictions)


def validate(
    forward: Forward,
    val_features: Batch | None,
    validation: DataLoader,
    data: StageData,
    prefix: str = "val_",
) -> dict[str, float]:
    """Validation loss and scores of one set of weights, on cached features when the stage has them."""
    if val_features is not None:
        val_loss, truth, predictions = evaluate(forward, [val_features], data)
    else:
        val_loss, truth, predictions = evaluate(forward, validation, data)
    val_loss, truth, predictions = distributed.gather_evaluation(val_loss, truth, predictions)
    scores = {"val_loss": val_loss, **score(truth, predictions)}
    return {f"{prefix}{key[len('val_') :]}": value for key, value in scores.items()}


def epoch_scores(raw: dict[str, float], averaged: dict[str, float], use_average: bool) -> str:
    """The validation part of an epoch's progress line (a release fit has no validation part)."""
    if not raw:
        return "(no validation part: release fit)"
    line = (
        f"val loss {raw['val_loss']:.4f}  acc {raw['val_accuracy']:.4f}  "
        f"bal acc {raw['val_balanced_accuracy']:.4f}  macro F1 {raw['val_macro_f1']:.4f}"
    )
    if averaged:
        kept = " (kept)" if use_average else ""
        line += f"  | EMA bal acc {averaged['ema_val_balanced_accuracy']:.4f}{kept}"
    return line


def stage_precision(model: PixelInput, recipe: Recipe, data: StageData) -> dict[str, Any]:
    """Resolve the recipe's `precision` for a stage, checking parity on validation images when `auto`
    (`model` takes the stage's pixels: `batches.pixel_input`).

    A release fit has no validation part; its check uses training images (it measures arithmetic, not skill).
    """
    images_of = data.val_set if len(data.val_set) else data.train_set

    def parity() -> ParityCheck:
        model.eval()
        spread = np.linspace(0, len(images_of) - 1, min(PARITY_IMAGES, len(images_of))).astype(int)
        images = default_collate([images_of[int(index)][0] for index in spread])
        labels = torch.as_tensor([images_of.labels[int(index)] for index in spread])
        inputs = to_device(images, data.device, data.channels_last)
        return check_parity(model, [(inputs, labels)], data.device)

    precision, check = resolve_precision(recipe.precision, data.device, parity)
    if check is not None:
        log.info("bf16 parity on %d validation images: %s", check.images, check.to_dict())
        print(
            f"precision auto: bf16 top-1 agreement {check.top1_agreement:.3f}, largest probability "
            f"difference {check.max_probability_difference:.4f}, balanced accuracy fp32 "
            f"{check.balanced_accuracy_fp32:.3f} / bf16 {check.balanced_accuracy_bf16:.3f} -> {precision}"
        )
    return {
        "choice": recipe.precision,
        "precision": precision,
        "parity": check.to_dict() if check is not None else None,
    }
