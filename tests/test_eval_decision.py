"""Decision rules: class offsets fitted for balanced decisions (scored out of fold on validation) and lesion
averaging, on generated probabilities whose bias is known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from lesionlab.class_offsets import apply_class_offsets
from lesionlab.evaluation.decision import fit_class_offsets, lesion_mean, out_of_fold_offsets
from lesionlab.evaluation.predictions import Predictions

CODES = ("a", "b", "c")
BIAS = np.array([2.0, 0.0, -2.0])


def biased_predictions(count: int, seed: int, images_per_lesion: int = 1) -> Predictions:
    """Imbalanced labels (60/30/10%) and a model whose log-probabilities lean towards class a by `BIAS`."""
    rng = np.random.default_rng(seed)
    lesions = count // images_per_lesion
    lesion_labels = rng.choice(3, size=lesions, p=[0.6, 0.3, 0.1])
    labels = np.repeat(lesion_labels, images_per_lesion)
    evidence = rng.normal(0.0, 1.0, size=(len(labels), 3))
    evidence[np.arange(len(labels)), labels] += 2.0
    logits = evidence + BIAS
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    image_ids = tuple(f"img{index}" for index in range(len(labels)))
    lesion_ids = tuple(f"les{index // images_per_lesion}" for index in range(len(labels)))
    return Predictions(image_ids, lesion_ids, labels, probabilities, CODES)


def balanced_accuracy(predictions: Predictions) -> float:
    return balanced_accuracy_score(predictions.labels, predictions.predicted)


def test_offsets_undo_a_known_bias_and_raise_balanced_accuracy_on_new_data() -> None:
    fit_on, held_out = biased_predictions(3000, seed=0), biased_predictions(3000, seed=1)
    offsets = fit_class_offsets(fit_on.probabilities, fit_on.labels)
    assert offsets.sum() == pytest.approx(0.0, abs=1e-9)
    assert offsets == pytest.approx(-BIAS, abs=0.3)
    adjusted = held_out.with_probabilities(apply_class_offsets(held_out.probabilities, offsets))
    assert np.allclose(adjusted.probabilities.sum(axis=1), 1.0)
    assert balanced_accuracy(adjusted) > balanced_accuracy(held_out) + 0.1


def test_zero_offsets_change_nothing() -> None:
    predictions = biased_predictions(50, seed=2)
    unchanged = apply_class_offsets(predictions.probabilities, np.zeros(3))
    assert np.allclose(unchanged, predictions.probabilities)


def test_a_class_absent_from_the_fit_keeps_a_finite_offset() -> None:
    predictions = biased_predictions(400, seed=3)
    without_c = predictions.labels != 2
    offsets = fit_class_offsets(predictions.probabilities[without_c], predictions.labels[without_c])
    assert np.isfinite(offsets).all()


def test_out_of_fold_offsets_fit_each_lesion_on_other_lesions_only() -> None:
    predictions = biased_predictions(600, seed=4, images_per_lesion=2)
    twins = predictions.with_probabilities(np.repeat(predictions.probabilities[::2], 2, axis=0))
    adjusted = out_of_fold_offsets(twins)
    # Both images of a lesion have equal inputs and sit in one fold, so they get equal outputs.
    assert np.allclose(adjusted.probabilities[::2], adjusted.probabilities[1::2])
    in_sample = apply_class_offsets(twins.probabilities, fit_class_offsets(twins.probabilities, twins.labels))
    assert not np.allclose(adjusted.probabilities, in_sample)
    assert balanced_accuracy(adjusted) > balanced_accuracy(twins)


def test_lesion_mean_averages_a_lesions_images_and_leaves_single_images_alone() -> None:
    probabilities = np.array([[0.9, 0.1, 0.0], [0.1, 0.7, 0.2], [0.2, 0.2, 0.6]])
    predictions = Predictions(
        ("x", "y", "z"), ("L1", "L1", None), np.array([0, 1, 2]), probabilities, CODES
    )
    averaged = lesion_mean(predictions).probabilities
    assert averaged[0] == pytest.approx([0.5, 0.4, 0.1])
    assert averaged[1] == pytest.approx([0.5, 0.4, 0.1])
    assert averaged[2] == pytest.approx(probabilities[2])
