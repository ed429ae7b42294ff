"""Precision of forward-only passes: bf16 autocast where the processor computes bf16 natively, else fp32.

Forward-only work (the stage-1 feature cache, per-epoch validation, evaluation with test-time augmentation)
is most of what a CPU does outside the training step. bf16 autocast made MobileNetV3 forward passes 1.6-2x
faster on Intel CPUs with AMX, but only 1.1x on an AVX512-BF16 CPU without AMX (benchmarks/bench_forward.py),
and it can move a trained MobileNetV3's decisions by more than a point, which is why `auto` checks first.
Training steps stay in fp32: bf16 autocast made them slower, and fp32 keeps optimisation exact.

`precision: auto` decides per model by a parity check on validation images: bf16 is used only when its top-1
predictions agree with fp32's on at least `MIN_TOP1_AGREEMENT` of the images fp32 decides (top class ahead
of the runner-up by `DECIDED_MARGIN` in probability; a near-tie flips under any change of arithmetic, even
another thread count, so it says nothing about bf16) and its balanced accuracy is within
`MAX_BALANCED_ACCURACY_DROP` of fp32's. A check where fp32 decides fewer than `MIN_DECIDED_SHARE` of the
images cannot show that bf16 keeps decisions, so it does not pass. That is the check of a stage whose head is
still untrained: judging it by balanced accuracy alone once let a stage-1 feature cache run in bf16, and the
head trained on those bf16 features then disagreed with fp32 features (top-1 agreement 0.954, probabilities
up to 0.32 apart), so stage 2 fell back to fp32 for a head that had only ever seen bf16 features. Cached
features are training data: they are computed in bf16 only where a model that decides showed bf16 keeps its
decisions, and then the same stage validates on bf16 features too. The check and its figures are recorded,
so a run says why it used what it used. `fp32` and `bf16` force a choice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from lesionlab.device import Forward, forward_in_chunks, to_device
from lesionlab.errors import ConfigError
from lesionlab.evaluation.metrics import balanced_accuracy
from lesionlab.models.fold import fold_for
from lesionlab.scoring import softmax

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
MIN_TOP1_AGREEMENT = 0.99
DECIDED_MARGIN = 0.1
MAX_BALANCED_ACCURACY_DROP = 0.01
MIN_DECIDED_SHARE = 0.5
PARITY_IMAGES = 256


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively (CUDA with bf16 support; a CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported())


def forward_precision(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of a forward-only pass at a resolved precision (`fp32` or `bf16`)."""
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision {precision!r}: resolve `auto` first (resolve_precision)")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def training_forward(forward: Forward, precision: str, device: torch.device) -> Forward:
    """The training forward of a stage at its resolved precision: bf16 autocast (AMP) on CUDA, else fp32.

    On a GPU a stage whose forward-only passes run in bf16 also trains in bf16 autocast: weights, gradients
    and optimizer stay fp32, and bf16 needs no loss scaling. On a CPU training steps stay fp32 (see above).
    """
    if device.type != "cuda" or precision != "bf16":
        return forward

    def autocast_forward(inputs: Any) -> torch.Tensor:
        with forward_precision(precision, device):
            return forward(inputs).float()

    return autocast_forward


@dataclass(frozen=True)
class ParityCheck:
    """fp32 against bf16 on the same images: the figures `auto` decides by, and its decision."""

    images: int
    decided_images: int
    top1_agreement: float
    max_probability_difference: float
    balanced_accuracy_fp32: float
    balanced_accuracy_bf16: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the thresholds it was judged by."""
        return {**asdict(self), "min_top1_agreement": MIN_TOP1_AGREEMENT, "decided_margin": DECIDED_MARGIN,
                "min_decided_share": MIN_DECIDED_SHARE,
                "max_balanced_accuracy_drop": MAX_BALANCED_ACCURACY_DROP}


def parity_from_logits(fp32_logits: np.ndarray, bf16_logits: np.ndarray, labels: np.ndarray) -> ParityCheck:
    """Judge bf16 logits against fp32 logits of the same images."""
    fp32_probabilities = softmax(fp32_logits)
    bf16_probabilities = softmax(bf16_logits)
    fp32_top1, bf16_top1 = fp32_logits.argmax(axis=1), bf16_logits.argmax(axis=1)
    accuracy_fp32, accuracy_bf16 = balanced_accuracy(labels, fp32_top1), balanced_accuracy(labels, bf16_top1)
    top2 = np.sort(fp32_probabilities, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] >= DECIDED_MARGIN
    agreement = float((fp32_top1 == bf16_top1)[decided].mean()) if decided.any() else 1.0
    return ParityCheck(
        images=len(labels), decided_images=int(decided.sum()), top1_agreement=agreement,
        max_probability_difference=float(np.abs(fp32_probabilities - bf16_probabilities).max()),
        balanced_accuracy_fp32=accuracy_fp32, balanced_accuracy_bf16=accuracy_bf16,
        passed=bool(decided.sum() >= MIN_DECIDED_SHARE * len(labels) and agreement >= MIN_TOP1_AGREEMENT
                    and accuracy_fp32 - accuracy_bf16 <= MAX_BALANCED_ACCURACY_DROP),
    )


@torch.inference_mode()
def check_parity(forward: Forward, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                 device: torch.device) -> ParityCheck:
    """Run `forward` in fp32 and in bf16 over the same batches and compare, each as forward-only passes run
    it (a model's fp32 pass through its BatchNorm-folded copy, `lesionlab.models.fold`)."""
    fp32_forward = fold_for(forward, "fp32") if isinstance(forward, torch.nn.Module) else forward
    fp32, bf16, labels = [], [], []
    for inputs, batch_labels in batches:
        inputs = to_device(inputs, device, channels_last=False)
        fp32.append(forward_in_chunks(fp32_forward, inputs).float().cpu().numpy())
        with forward_precision("bf16", device):
            bf16.append(forward_in_chunks(forward, inputs).float().cpu().numpy())
        labels.append(batch_labels.numpy())
    return parity_from_logits(np.concatenate(fp32), np.concatenate(bf16), np.concatenate(labels))


def resolve_precision(choice: str, device: torch.device,
                      parity: Callable[[], ParityCheck]) -> tuple[str, ParityCheck | None]:
    """`fp32`/`bf16` as asked (bf16 needs native support); `auto`: bf16 where native and `parity()` passes."""
    if choice not in PRECISIONS:
        raise ConfigError(f"precision {choice!r}: choose one of {', '.join(PRECISIONS)}")
    if choice == "fp32":
        return "fp32", None
    if not native_bf16(device):
        if choice == "bf16":
            raise ConfigError(f"precision bf16: this {device.type} has no native bf16 (AVX512-BF16 or AMX "
                              f"on a CPU); use `auto` or `fp32`.")
        return "fp32", None
    if choice == "bf16":
        return "bf16", None
    check = parity()
    return ("bf16" if check.passed else "fp32"), check
