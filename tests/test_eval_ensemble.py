"""Ensemble evaluation: the members' saved logits scored by `lesionlab.scoring`, refusals, and the threshold
fitted on val."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lesionlab.classes import CLASS_CODES
from lesionlab.errors import DataError
from lesionlab.evaluation.ensemble import ensemble_rule
from lesionlab.evaluation.predictions import Predictions
from lesionlab.evaluation.view_logits import (
    ViewLogits,
    ensemble_probabilities,
    read_view_logits,
    write_view_logits,
)
from lesionlab.malignancy import FALLBACK_RULE
from lesionlab.scoring import softmax

IDS = ("a", "b", "c", "d")


def predictions(seed: int, ids: tuple[str, ...] = IDS) -> Predictions:
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.ones(len(CLASS_CODES)), size=len(ids))
    return Predictions(ids, (None,) * len(ids), np.array([0, 1, 4, 5])[: len(ids)], probabilities,
                       tuple(CLASS_CODES))


def view_logits(seed: int, temperature: float | None, ids: tuple[str, ...] = IDS) -> ViewLogits:
    logits = np.random.default_rng(seed).normal(size=(len(ids), 2, len(CLASS_CODES))).astype(np.float32)
    return ViewLogits(ids, tuple(CLASS_CODES), ("identity", "hflip"), logits.astype(np.float64),
                      temperature, "0" * 64)


def test_logits_round_trip_exactly(tmp_path: Path) -> None:
    record = view_logits(0, 1.5)
    read = read_view_logits(write_view_logits(tmp_path / "logits.safetensors", record))
    assert read.image_ids == record.image_ids and read.views == record.views
    assert read.temperature == 1.5 and read.checkpoint_sha256 == record.checkpoint_sha256
    assert np.array_equal(read.logits, record.logits)
    with pytest.raises(DataError, match="evaluate the run again"):
        read_view_logits(tmp_path / "absent.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(DataError, match="not a lesionlab logits file"):
        read_view_logits(tmp_path / "bad.safetensors")


def test_the_ensemble_scores_the_mean_of_its_members_view_averaged_calibrated_probabilities() -> None:
    first, second = view_logits(0, None), view_logits(1, 2.0)
    expected = (softmax(first.logits).mean(axis=1) + softmax(second.logits / 2.0).mean(axis=1)) / 2
    assert np.allclose(ensemble_probabilities([first, second], ["first", "second"]), expected, atol=1e-12)
    offsets = np.linspace(-1, 1, len(CLASS_CODES))
    shifted = ensemble_probabilities([first, second], ["first", "second"], tuple(offsets))
    adjusted = np.exp(np.log(expected) + offsets)
    assert np.allclose(shifted, adjusted / adjusted.sum(axis=1, keepdims=True), atol=1e-12)


def test_members_scored_on_other_images_are_refused() -> None:
    with pytest.raises(DataError, match="second"):
        ensemble_probabilities([view_logits(0, None), view_logits(1, None, ("a", "b", "c", "x"))],
                               ["first", "second"])


def test_the_threshold_comes_from_validation_or_is_the_stated_fallback() -> None:
    assert ensemble_rule(None, 0.9) == FALLBACK_RULE
    rule = ensemble_rule(predictions(2), 0.9)
    assert rule.fit is not None and rule.fit.fitted_on == "val" and rule.fit.sensitivity >= 0.9
