"""Evaluation metrics: known values for perfect and constant predictors, calibration error, bootstrap
intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

from lesionlab.classes import CLASS_CODES
from lesionlab.evaluation.metrics import (
    bootstrap_intervals,
    cluster_ids,
    compute_metrics,
    confusion_from_counts,
    expected_calibration_error,
    paired_differences,
    reliability_bins,
)
from lesionlab.evaluation.predictions import Predictions


def one_hot_predictions(
    labels: np.ndarray,
    predicted: np.ndarray,
    lesions: list[str | None] | None = None,
    confidence: float = 1.0,
) -> Predictions:
    """Predictions that put `confidence` on `predicted` and spread the rest evenly."""
    count = len(labels)
    probabilities = np.full((count, 7), (1.0 - confidence) / 6)
    probabilities[np.arange(count), predicted] = confidence
    return Predictions(
        image_ids=tuple(f"ISIC_{i:07d}" for i in range(count)),
        lesion_ids=tuple(lesions) if lesions is not None else (None,) * count,
        labels=labels,
        probabilities=probabilities,
        class_codes=CLASS_CODES,
    )


def test_perfect_predictor_scores_one_everywhere() -> None:
    labels = np.repeat(np.arange(7), [30, 20, 25, 5, 25, 100, 6])
    metrics = compute_metrics(one_hot_predictions(labels, labels))
    assert metrics["accuracy"] == 1.0
    assert metrics["balanced_accuracy"] == 1.0
    assert metrics["macro_f1"] == 1.0
    assert metrics["roc_auc_macro"] == 1.0
    assert metrics["ece"] == pytest.approx(0.0)
    assert all(row["recall"] == 1.0 and row["accuracy"] == 1.0 for row in metrics["per_class"].values())
    intervals = metrics["confidence_intervals"]
    assert intervals["balanced_accuracy"]["low"] == intervals["balanced_accuracy"]["high"] == 1.0
    assert np.array_equal(np.diag(metrics["confusion_matrix"]["counts"]), np.bincount(labels))


def test_constant_predictor_has_balanced_accuracy_one_seventh() -> None:
    labels = np.repeat(np.arange(7), [30, 20, 25, 5, 25, 100, 6])
    always_nv = np.full_like(labels, CLASS_CODES.index("nv"))
    metrics = compute_metrics(one_hot_predictions(labels, always_nv))
    assert metrics["balanced_accuracy"] == pytest.approx(1 / 7)
    assert metrics["accuracy"] == pytest.approx(100 / len(labels))
    nv_f1 = 2 * 100 / (100 + len(labels))
    assert metrics["macro_f1"] == pytest.approx(nv_f1 / 7)
    assert metrics["per_class"]["nv"]["recall"] == 1.0
    assert metrics["per_class"]["mel"]["recall"] == 0.0
    assert metrics["per_class"]["mel"]["precision"] is None
    assert "never predicted" in metrics["per_class"]["mel"]["note"]
    assert metrics["per_class"]["mel"]["accuracy"] == pytest.approx(1 - 25 / len(labels))


def test_absent_class_gets_null_auc_with_reason_and_is_left_out_of_macro_averages() -> None:
    rng = np.random.default_rng(1)
    labels = rng.choice([0, 1, 2, 4, 5, 6], size=300)
    predicted = np.where(rng.random(300) < 0.7, labels, rng.integers(0, 7, 300))
    metrics = compute_metrics(one_hot_predictions(labels, predicted, confidence=0.8))
    df_row = metrics["per_class"]["df"]
    assert df_row["support"] == 0 and df_row["roc_auc"] is None and df_row["recall"] is None
    assert "no df images" in metrics["roc_auc_macro_excludes"]["df"]
    assert metrics["classes_present"] == ["akiec", "bcc", "bkl", "mel", "nv", "vasc"]
    present = np.unique(labels)
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, predicted, labels=present, average="macro"))
    assert metrics["balanced_accuracy"] == pytest.approx(
        np.mean([np.mean(predicted[labels == c] == c) for c in present])
    )


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident() -> None:
    rng = np.random.default_rng(2)
    count = 20_000
    labels = rng.integers(0, 7, count)
    confidence = rng.choice([0.4, 0.6, 0.8, 0.95], size=count)
    correct = rng.random(count) < confidence
    wrong = (labels + rng.integers(1, 7, count)) % 7
    predicted = np.where(correct, labels, wrong)
    probabilities = np.tile(((1 - confidence) / 6)[:, None], (1, 7))
    probabilities[np.arange(count), predicted] = confidence
    assert expected_calibration_error(labels, probabilities) < 0.02

    overconfident = np.full((count, 7), 0.001 / 6)
    overconfident[np.arange(count), predicted] = 0.999
    assert expected_calibration_error(labels, overconfident) > 0.2


def test_reliability_bins_put_confidence_in_half_open_equal_width_bins() -> None:
    probabilities = np.array([[1 / 15, 14 / 15] + [0.0] * 5, [0.5, 0.5] + [0.0] * 5, [1.0] + [0.0] * 6])
    bins = reliability_bins(np.array([1, 0, 0]), probabilities, n_bins=15)
    assert bins.counts[13] == 1 and bins.counts[7] == 1 and bins.counts[14] == 1
    assert bins.counts.sum() == 3


def test_count_based_bootstrap_metrics_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    labels = rng.choice(7, size=500, p=[0.05, 0.05, 0.1, 0.02, 0.1, 0.65, 0.03])
    predicted = np.where(rng.random(500) < 0.6, labels, rng.integers(0, 7, 500))
    for sample in (np.arange(500), rng.integers(0, 500, 500)):
        counts = confusion_matrix(labels[sample], predicted[sample], labels=np.arange(7))
        derived = confusion_from_counts(counts)
        present = np.unique(labels[sample])
        assert derived["accuracy"] == pytest.approx(np.mean(labels[sample] == predicted[sample]))
        assert derived["macro_f1"] == pytest.approx(
            f1_score(labels[sample], predicted[sample], labels=present, average="macro")
        )
        assert derived["balanced_accuracy"] == pytest.approx(
            balanced_accuracy_score(labels[sample], predicted[sample])
        )


def test_bootstrap_is_seeded_contains_the_estimate_and_widens_when_resampling_by_lesion() -> None:
    rng = np.random.default_rng(4)
    lesion_of_image = np.repeat(np.arange(100), 5)
    lesion_label = rng.integers(0, 7, 100)
    lesion_correct = rng.random(100) < 0.6
    labels = lesion_label[lesion_of_image]
    predicted = np.where(lesion_correct[lesion_of_image], labels, (labels + 1) % 7)
    by_lesion = bootstrap_intervals(labels, predicted, lesion_of_image, 7, seed=0)
    assert by_lesion == bootstrap_intervals(labels, predicted, lesion_of_image, 7, seed=0)
    accuracy = np.mean(labels == predicted)
    assert by_lesion["accuracy"][0] < accuracy < by_lesion["accuracy"][1]
    by_image = bootstrap_intervals(labels, predicted, np.arange(500), 7, seed=0)
    width = {name: high - low for name, (low, high) in by_lesion.items()}
    assert all(width[name] > 1.5 * (high - low) for name, (low, high) in by_image.items())


def test_cluster_ids_use_lesion_where_known_and_image_otherwise() -> None:
    ids, unit = cluster_ids(["a", "b", "c", "d"], ["L1", "L1", None, "L2"])
    assert ids[0] == ids[1] and len(set(ids)) == 3
    assert unit == "lesion (image where unknown)"
    assert cluster_ids(["a", "b"], [None, None])[1] == "image"
    assert cluster_ids(["a", "b"], ["L1", "L2"])[1] == "lesion"


def test_classification_report_uses_the_reference_layout() -> None:
    labels = np.repeat(np.arange(7), 10)
    report = compute_metrics(one_hot_predictions(labels, labels))["classification_report"]
    lines = report.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    assert [line.split()[0] for line in lines[2:9]] == list(CLASS_CODES)
    assert "1.00" in lines[2] and "1.000" not in report


def test_a_paired_difference_is_exact_at_its_estimate_and_tighter_than_one_models_interval() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, size=600)
    clusters = np.arange(600) // 2  # two images per lesion
    baseline = np.where(rng.random(600) < 0.6, labels, rng.integers(0, 7, size=600))
    better = np.where(rng.random(600) < 0.3, labels, baseline)  # fixes some of the baseline's errors

    same = paired_differences(labels, baseline, baseline, clusters, 7)
    assert all(d == {"estimate": 0.0, "low": 0.0, "high": 0.0} for d in same.values())

    differences = paired_differences(labels, better, baseline, clusters, 7)
    expected = balanced_accuracy_score(labels, better) - balanced_accuracy_score(labels, baseline)
    assert differences["balanced_accuracy"]["estimate"] == pytest.approx(expected)
    paired = differences["balanced_accuracy"]["high"] - differences["balanced_accuracy"]["low"]
    separate = bootstrap_intervals(labels, better, clusters, 7)["balanced_accuracy"]
    assert differences["balanced_accuracy"]["low"] > 0.0, "a real improvement is told apart"
    assert paired < separate[1] - separate[0], "the shared images cancel: narrower than one model's interval"
