"""Training's validation scores, `evaluate`'s headline figures and the export checks share one definition of
balanced accuracy and macro F1, also on a part of the data that lacks a class the model predicts."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from lesionlab.classes import CLASS_CODES, NUM_CLASSES
from lesionlab.evaluation.metrics import headline_metrics
from lesionlab.export_checks import balanced_accuracy
from lesionlab.training.validation import score


def absent_class_sample() -> tuple[np.ndarray, np.ndarray]:
    """Truth without classes 5 and 6; predictions that name class 6 and never name class 4."""
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    predicted = np.array([0, 6, 1, 1, 2, 0, 3, 3, 6, 6])
    return labels, predicted


def test_every_path_gives_the_same_figures_when_a_class_is_absent() -> None:
    labels, predicted = absent_class_sample()
    present = np.unique(labels)
    expected_balanced = balanced_accuracy_score(labels, predicted)
    expected_f1 = f1_score(labels, predicted, labels=present, average="macro", zero_division=0)
    probabilities = np.eye(NUM_CLASSES)[predicted]

    headline = headline_metrics(labels, predicted)
    training = score(labels, predicted)

    assert headline["balanced_accuracy"] == pytest.approx(expected_balanced)
    assert headline["macro_f1"] == pytest.approx(expected_f1)
    assert training["val_balanced_accuracy"] == headline["balanced_accuracy"]
    assert training["val_macro_f1"] == headline["macro_f1"]
    assert training["val_accuracy"] == headline["accuracy"] == pytest.approx(0.6)
    assert balanced_accuracy(CLASS_CODES, probabilities, labels) == headline["balanced_accuracy"]


def test_export_check_compares_by_class_code_in_the_files_own_order() -> None:
    labels, predicted = absent_class_sample()
    reversed_codes = tuple(reversed(CLASS_CODES))
    probabilities = np.eye(NUM_CLASSES)[NUM_CLASSES - 1 - predicted]

    assert balanced_accuracy(reversed_codes, probabilities, labels) == pytest.approx(
        balanced_accuracy_score(labels, predicted))


def test_no_warning_for_a_class_never_predicted(recwarn: pytest.WarningsRecorder) -> None:
    labels, predicted = absent_class_sample()
    headline_metrics(labels, predicted)
    assert not recwarn.list
