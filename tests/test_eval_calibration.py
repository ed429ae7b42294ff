"""Temperature scaling and test-time augmentation on synthetic logits and tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lesionlab.evaluation.calibration import (
    TEMPERATURE_RANGE,
    fit_temperature,
    fit_temperature_record,
    load_temperature,
    save_temperature,
)
from lesionlab.evaluation.metrics import expected_calibration_error, negative_log_likelihood
from lesionlab.scoring import Scoring, softmax


def overconfident_logits(count: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a calibrated model (labels drawn from its softmax) multiplied by `scale`: T = scale is
    ideal."""
    rng = np.random.default_rng(seed)
    calibrated = rng.normal(scale=2.0, size=(count, 7))
    probabilities = softmax(calibrated)
    labels = np.array([rng.choice(7, p=row) for row in probabilities])
    return calibrated * scale, labels


def test_temperature_scaling_reduces_nll_of_an_overconfident_model() -> None:
    logits, labels = overconfident_logits(4000, scale=4.0, seed=0)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(4.0, rel=0.15)
    held_out, held_out_labels = overconfident_logits(4000, scale=4.0, seed=1)
    before = softmax(held_out)
    after = softmax(held_out, temperature)
    assert (
        negative_log_likelihood(held_out_labels, after)
        < negative_log_likelihood(held_out_labels, before) - 0.3
    )
    assert expected_calibration_error(held_out_labels, after) < expected_calibration_error(
        held_out_labels, before
    )
    assert np.array_equal(after.argmax(axis=1), before.argmax(axis=1))


def test_temperature_file_is_ignored_when_the_checkpoint_changes(tmp_path: Path) -> None:
    checkpoint = tmp_path / "best.safetensors"
    checkpoint.write_bytes(b"weights v1")
    logits, labels = overconfident_logits(500, scale=2.0, seed=2)
    fit = fit_temperature_record(logits, labels, fitted_on="val", checkpoint=checkpoint)
    assert fit.nll_after < fit.nll_before and fit.samples == 500
    save_temperature(tmp_path / "temperature.json", fit)
    assert load_temperature(tmp_path / "temperature.json", checkpoint) == fit
    checkpoint.write_bytes(b"weights v2")
    assert load_temperature(tmp_path / "temperature.json", checkpoint) is None
    assert load_temperature(tmp_path / "absent.json", checkpoint) is None


def test_tta_averages_probabilities_of_the_views() -> None:
    view_logits = np.array([[[2.0, 0.0], [0.0, 2.0]]])
    averaged = Scoring((None,)).probabilities([view_logits])
    assert averaged == pytest.approx(np.array([[0.5, 0.5]]))
    sharper = Scoring((2.0,)).probabilities([np.array([[[4.0, 0.0], [4.0, 0.0]]])])
    assert sharper == pytest.approx(softmax(np.array([[2.0, 0.0]])))


def test_temperature_stays_in_range_for_a_model_worse_than_chance() -> None:
    logits, _ = overconfident_logits(500, scale=3.0, seed=3)
    wrong_labels = (logits.argmax(axis=1) + 1) % 7
    assert fit_temperature(logits, wrong_labels) == TEMPERATURE_RANGE[1]
