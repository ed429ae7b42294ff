"""Class imbalance, per stage: oversampling weights for the sampler and class weights for the loss.

nv is about two thirds of HAM10000 while df and vasc are about 1% each, so an unweighted model learns "nv"
and little else. The reference hand-tuned both a sampler (`[4,4,2,6,2,1,6]`) and loss weights; lesionlab
also derives them from class counts (`inverse`, `sqrt-inverse`, and `effective-number` after Cui et al.,
CVPR 2019).

Balanced accuracy asks for the class-balanced posterior, so the loss can also aim at it directly:
`logit-adjusted` cross-entropy (Menon et al., ICLR 2021; "balanced softmax", Ren et al., NeurIPS 2020)
trains on `logits + tau * log(prior)`, where `prior` is the class distribution the sampler actually feeds
the model. Plain logits then estimate the posterior under equal class priors, with no post-hoc correction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import WeightedRandomSampler

from lesionlab.classes import NUM_CLASSES
from lesionlab.errors import ConfigError

WeightSpec = Sequence[float] | str
PRIOR_FLOOR = 1e-8  # keeps log(prior) finite for a class the training part lacks


def class_counts(labels: Sequence[int], num_classes: int = NUM_CLASSES) -> np.ndarray:
    """How many samples each class has."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)


def _inverse(counts: np.ndarray, power: float) -> np.ndarray:
    """`1 / count**power` for present classes, 0 for absent ones (they never occur, so any weight is moot)."""
    weights = np.zeros_like(counts)
    present = counts > 0
    weights[present] = 1.0 / counts[present] ** power
    return weights


def _listed(spec: Sequence[float], num_classes: int, key: str) -> np.ndarray:
    weights = np.asarray(spec, dtype=np.float64)
    if weights.shape != (num_classes,) or (weights < 0).any():
        raise ConfigError(f"recipe key {key!r}: expected {num_classes} non-negative numbers (one per class, "
                          f"order akiec..vasc), got {list(spec)}")
    return weights


def sampler_class_weights(spec: WeightSpec, counts: np.ndarray) -> np.ndarray | None:
    """Per-class sampling weight, or None for plain shuffling."""
    if isinstance(spec, str):
        rules = {"none": None, "inverse": 1.0, "sqrt-inverse": 0.5}
        if spec not in rules:
            raise ConfigError(f"sampler_weights {spec!r}: use a list of {len(counts)} numbers or one of "
                              f"{', '.join(rules)}")
        power = rules[spec]
        return None if power is None else _inverse(counts, power)
    return _listed(spec, len(counts), "sampler_weights")


def make_sampler(
    labels: Sequence[int], spec: WeightSpec, generator: torch.Generator, num_classes: int = NUM_CLASSES
) -> WeightedRandomSampler | None:
    """A seeded `WeightedRandomSampler` drawing with replacement, or None when `spec` is `none`.

    A listed weight is an oversampling factor, as in the reference: an epoch holds `sum(weight[label])`
    draws (3,000 images with `[4,4,2,6,2,1,6]` became 4,731). Derived weights only rebalance, keeping the
    epoch length.
    """
    counts = class_counts(labels, num_classes)
    weights = sampler_class_weights(spec, counts)
    if weights is None:
        return None
    per_sample = weights[np.asarray(labels, dtype=np.int64)]
    total = per_sample.sum()
    if total <= 0:
        raise ConfigError(f"sampler_weights {spec!r} give every training sample weight 0; nothing to draw.")
    epoch_draws = round(total) if not isinstance(spec, str) else len(labels)
    return WeightedRandomSampler(torch.as_tensor(per_sample, dtype=torch.double), num_samples=epoch_draws,
                                 replacement=True, generator=generator)


def loss_class_weights(spec: WeightSpec, counts: np.ndarray, beta: float = 0.999) -> torch.Tensor | None:
    """Per-class cross-entropy weights, or None for unweighted.

    Derived weights are scaled so the average weight over the training samples is 1, which keeps the loss
    (and so the effective learning rate) on the same scale as an unweighted run.
    """
    if not isinstance(spec, str):
        return torch.as_tensor(_listed(spec, len(counts), "loss_weights"), dtype=torch.float32)
    if spec == "none":
        return None
    if spec == "inverse":
        weights = _inverse(counts, 1.0)
    elif spec == "sqrt-inverse":
        weights = _inverse(counts, 0.5)
    elif spec == "effective-number":
        if not 0.0 < beta < 1.0:
            raise ConfigError(f"loss_beta {beta}: effective-number weights need 0 < beta < 1 (e.g. 0.999)")
        weights = np.zeros_like(counts)
        present = counts > 0
        weights[present] = (1.0 - beta) / (1.0 - beta ** counts[present])
    else:
        raise ConfigError(f"loss_weights {spec!r}: use a list of {len(counts)} numbers or one of none, "
                          f"inverse, sqrt-inverse, effective-number")
    weights *= counts.sum() / (weights * counts).sum()
    return torch.as_tensor(weights, dtype=torch.float32)


def sampled_prior(counts: np.ndarray, sampler_spec: WeightSpec) -> np.ndarray:
    """The class distribution of the draws a stage trains on: counts times the sampler's class weights."""
    weights = sampler_class_weights(sampler_spec, counts)
    drawn = counts if weights is None else counts * weights
    return drawn / drawn.sum()


class LogitAdjustedCrossEntropy(nn.CrossEntropyLoss):
    """Cross-entropy on `logits + tau * log(prior)`: the plain logits learn the class-balanced posterior."""

    def __init__(self, prior: np.ndarray, tau: float, weight: torch.Tensor | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(weight=weight, label_smoothing=label_smoothing)
        floor = np.maximum(prior, PRIOR_FLOOR)
        self.register_buffer("offset", torch.as_tensor(tau * np.log(floor), dtype=torch.float32))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return super().forward(logits + self.offset.to(logits.device), labels)


def make_criterion(weights: torch.Tensor | None, label_smoothing: float = 0.0,
                   prior: np.ndarray | None = None, tau: float = 1.0) -> nn.CrossEntropyLoss:
    """Weighted cross-entropy with optional label smoothing; logit-adjusted by `tau * log(prior)` if given."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing {label_smoothing}: must be in [0, 1)")
    if prior is not None:
        return LogitAdjustedCrossEntropy(prior, tau, weights, label_smoothing)
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)
