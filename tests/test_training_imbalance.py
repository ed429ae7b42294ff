"""Class imbalance: sampler weights and epoch length, loss weights, seeded draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lesionlab.errors import ConfigError
from lesionlab.training.imbalance import (
    class_counts,
    loss_class_weights,
    make_criterion,
    make_sampler,
)

LABELS = [0] * 10 + [1] * 20 + [2] * 40 + [3] * 5 + [4] * 40 + [5] * 200 + [6] * 5


def draw(spec: object, seed: int) -> list[int]:
    sampler = make_sampler(LABELS, spec, torch.Generator().manual_seed(seed))
    assert sampler is not None
    return list(sampler)


def test_listed_sampler_weights_oversample_like_the_reference() -> None:
    weights = [4, 4, 2, 6, 2, 1, 6]
    sampler = make_sampler(LABELS, weights, torch.Generator().manual_seed(0))
    expected = sum(weights[label] for label in LABELS)
    assert sampler is not None and sampler.num_samples == expected
    assert draw(weights, 3) == draw(weights, 3)
    assert draw(weights, 3) != draw(weights, 4)


def test_inverse_sampler_balances_classes() -> None:
    drawn = np.asarray(LABELS)[np.concatenate([draw("inverse", seed) for seed in range(20)])]
    shares = np.bincount(drawn, minlength=7) / len(drawn)
    assert len(draw("inverse", 0)) == len(LABELS)
    assert np.allclose(shares, 1 / 7, atol=0.02)


def test_sqrt_inverse_sits_between_none_and_inverse() -> None:
    drawn = np.asarray(LABELS)[np.concatenate([draw("sqrt-inverse", seed) for seed in range(20)])]
    nv_share = np.mean(drawn == 5)
    assert 1 / 7 < nv_share < 200 / len(LABELS)


def test_no_sampler_for_none() -> None:
    assert make_sampler(LABELS, "none", torch.Generator()) is None


def test_bad_sampler_weights() -> None:
    with pytest.raises(ConfigError, match="7 non-negative numbers"):
        make_sampler(LABELS, [1, 2, 3], torch.Generator())
    with pytest.raises(ConfigError, match="sampler_weights 'balanced'"):
        make_sampler(LABELS, "balanced", torch.Generator())


def test_inverse_loss_weights_average_one_per_sample() -> None:
    counts = class_counts(LABELS)
    weights = loss_class_weights("inverse", counts)
    assert weights is not None
    assert float((weights.double() * torch.as_tensor(counts)).sum() / counts.sum()) == pytest.approx(1.0)
    assert weights[3] / weights[5] == pytest.approx(200 / 5)


def test_effective_number_weights_follow_cui_et_al() -> None:
    counts = class_counts(LABELS)
    beta = 0.99
    weights = loss_class_weights("effective-number", counts, beta)
    assert weights is not None
    raw = (1 - beta) / (1 - beta ** counts)
    assert np.allclose(weights.numpy() / weights[0].item(), raw / raw[0], rtol=1e-5)
    with pytest.raises(ConfigError, match="0 < beta < 1"):
        loss_class_weights("effective-number", counts, 1.0)


def test_listed_loss_weights_are_used_as_given() -> None:
    weights = loss_class_weights([3, 2.2, 2, 5, 3, 1, 5], class_counts(LABELS))
    assert weights is not None and weights.tolist() == pytest.approx([3, 2.2, 2, 5, 3, 1, 5])
    assert loss_class_weights("none", class_counts(LABELS)) is None


def test_criterion_applies_weights_and_smoothing() -> None:
    logits = torch.tensor([[2.0, 0.0, 0, 0, 0, 0, 0], [2.0, 0.0, 0, 0, 0, 0, 0]])
    labels = torch.tensor([0, 1])
    plain = make_criterion(None)(logits, labels)
    weighted = make_criterion(torch.tensor([1.0, 3.0, 1, 1, 1, 1, 1]))(logits, labels)
    per_sample = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert weighted == pytest.approx(((per_sample[0] + 3 * per_sample[1]) / 4).item())
    assert weighted > plain
    assert make_criterion(None, 0.2)(logits, labels) > plain
    with pytest.raises(ConfigError):
        make_criterion(None, 1.0)
