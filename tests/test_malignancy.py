"""Malignant vs benign: the summed probability, the threshold fitted on validation, its file, the bootstrap
figures (checked against scikit-learn) and how predictions and reports show them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from lesionlab.classes import CLASS_CODES, MALIGNANT_CODES
from lesionlab.errors import CheckpointError
from lesionlab.evaluation.metrics import (
    RocPoints,
    binary_labels,
    cluster_ids,
    compute_metrics,
    fit_malignancy_threshold,
    malignancy_metrics,
)
from lesionlab.evaluation.predictions import Predictions
from lesionlab.inference.prediction import Prediction
from lesionlab.malignancy import (
    FALLBACK_RULE,
    FALLBACK_THRESHOLD,
    MalignancyRule,
    ThresholdFit,
    malignant_probability,
    read_threshold,
    rule_for,
    save_threshold,
    threshold_path,
)

MALIGNANT = [index for index, code in enumerate(CLASS_CODES) if code in MALIGNANT_CODES]


def noisy_predictions(count: int = 600, seed: int = 0) -> Predictions:
    """Imbalanced labels, informative but imperfect probabilities rounded so that scores tie, two images
    per lesion."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(7, size=count, p=[0.05, 0.08, 0.12, 0.03, 0.12, 0.55, 0.05])
    logits = rng.normal(size=(count, 7))
    logits[np.arange(count), labels] += 1.5
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probabilities = np.round(probabilities, 2)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return Predictions(tuple(f"ISIC_{i:07d}" for i in range(count)),
                       tuple(f"HAM_{i // 2:07d}" for i in range(count)), labels, probabilities, CLASS_CODES)


def test_malignant_probability_sums_akiec_bcc_and_mel() -> None:
    probabilities = np.array([[0.1, 0.2, 0.05, 0.05, 0.25, 0.3, 0.05]])
    assert malignant_probability(probabilities, CLASS_CODES)[0] == pytest.approx(0.55)


def test_roc_points_agree_with_scikit_learn() -> None:
    predictions = noisy_predictions()
    positives = binary_labels(predictions.labels, CLASS_CODES, MALIGNANT_CODES)
    scores = malignant_probability(predictions.probabilities, CLASS_CODES)
    curve = RocPoints.from_scores(scores, positives, np.ones((1, len(scores))))
    assert curve.auc()[0] == pytest.approx(roc_auc_score(positives, scores))
    fpr, tpr, thresholds = roc_curve(positives, scores, drop_intermediate=False)
    assert np.allclose(curve.false_positive_rate[0], fpr) and np.allclose(curve.true_positive_rate[0], tpr)
    for specificity in (0.8, 0.9):
        expected = tpr[fpr <= 1 - specificity + 1e-12].max()
        assert curve.sensitivity_at_specificity(specificity)[0] == pytest.approx(expected)
    for threshold in (0.05, 0.3, float(thresholds[5]), 0.99):
        called = scores >= threshold
        sensitivity, specificity = curve.rates_at_threshold(threshold)
        assert sensitivity[0] == pytest.approx(called[positives].mean())
        assert specificity[0] == pytest.approx((~called[~positives]).mean())


def test_weighted_curves_equal_curves_of_repeated_images() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.4, 0.3, 0.1])
    positives = np.array([True, False, True, True, False, False])
    weights = np.array([[2.0, 1.0, 0.0, 1.0, 3.0, 1.0]])
    repeated = np.repeat(np.arange(6), weights[0].astype(int))
    curve = RocPoints.from_scores(scores, positives, weights)
    assert curve.auc()[0] == pytest.approx(roc_auc_score(positives[repeated], scores[repeated]))


def test_threshold_is_the_highest_that_reaches_the_sensitivity() -> None:
    predictions = noisy_predictions()
    fit = fit_malignancy_threshold(predictions.probabilities, predictions.labels, CLASS_CODES, 0.9, "val",
                                   1.5, "abc")
    assert fit is not None and fit.sensitivity >= 0.9 and fit.temperature == 1.5
    scores = malignant_probability(predictions.probabilities, CLASS_CODES)
    positives = binary_labels(predictions.labels, CLASS_CODES, MALIGNANT_CODES)
    assert (scores[positives] >= fit.threshold).mean() == pytest.approx(fit.sensitivity)
    above = scores[scores > fit.threshold].min()
    assert (scores[positives] >= above).mean() < 0.9, "any higher threshold misses the sensitivity"
    assert fit.malignant_samples == positives.sum() and fit.samples == len(scores)


def test_no_threshold_without_both_kinds_of_images() -> None:
    labels = np.full(10, CLASS_CODES.index("nv"))
    probabilities = np.full((10, 7), 1 / 7)
    assert fit_malignancy_threshold(probabilities, labels, CLASS_CODES, 0.9, "val", None, "abc") is None


def test_malignancy_metrics_have_intervals_around_the_estimates() -> None:
    predictions = noisy_predictions()
    clusters, _ = cluster_ids(predictions.image_ids, predictions.lesion_ids)
    rule = MalignancyRule(0.3, ThresholdFit(0.3, 0.9, "val", 100, 30, 0.9, 0.6, None, "abc"))
    metrics = malignancy_metrics(predictions, clusters, rule, resamples=200)
    assert metrics["threshold"] == 0.3 and metrics["threshold_fitted"] is True
    assert "chosen on the val part" in metrics["rule"]
    melanoma = metrics["melanoma"]
    for record in (metrics["sensitivity"], metrics["specificity"], metrics["roc_auc"], melanoma["roc_auc"],
                   *melanoma["sensitivity_at_specificity"].values()):
        assert record["low"] <= record["estimate"] <= record["high"]
        assert record["high"] - record["low"] > 0
    assert set(metrics["melanoma"]["sensitivity_at_specificity"]) == {"0.80", "0.90"}
    assert metrics == malignancy_metrics(predictions, clusters, rule, resamples=200), "seeded"


def test_malignancy_metrics_say_why_they_are_undefined() -> None:
    labels = np.full(8, CLASS_CODES.index("nv"))
    predictions = Predictions(tuple(map(str, range(8))), (None,) * 8, labels, np.full((8, 7), 1 / 7),
                              CLASS_CODES)
    metrics = malignancy_metrics(predictions, np.arange(8), resamples=50)
    assert "undefined" in metrics["note"] and "sensitivity" not in metrics
    assert metrics["threshold_fitted"] is False and "fallback" in metrics["rule"]


def test_compute_metrics_reports_malignancy_with_the_fallback_by_default() -> None:
    metrics = compute_metrics(noisy_predictions(), resamples=100)
    assert metrics["malignancy"]["threshold"] == FALLBACK_THRESHOLD
    assert "fallback" in metrics["malignancy"]["rule"]
    json.dumps(metrics)


def test_threshold_file_round_trip_and_matching(tmp_path: Path) -> None:
    path = threshold_path(tmp_path / "best")
    assert path.name == "best.malignancy.json"
    assert rule_for(path, "abc", None) == FALLBACK_RULE
    fit = ThresholdFit(0.21, 0.9, "val", 100, 30, 0.9, 0.62, 0.8, "abc")
    save_threshold(path, fit)
    assert read_threshold(path) == fit
    assert rule_for(path, "abc", 0.8) == MalignancyRule(0.21, fit)
    assert "other weights" in rule_for(path, "def", 0.8).reason
    other_temperature = rule_for(path, "abc", None)
    assert not other_temperature.fitted and "temperature" in other_temperature.reason


def test_a_malformed_threshold_file_names_itself(tmp_path: Path) -> None:
    path = tmp_path / "best.malignancy.json"
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"best\.malignancy\.json"):
        read_threshold(path)


def test_prediction_flags_the_summed_probability_not_the_top_class() -> None:
    probabilities = np.array([0.10, 0.20, 0.05, 0.0, 0.25, 0.35, 0.05])  # top class nv, 55% malignant
    fallback = Prediction.from_probabilities(CLASS_CODES, probabilities)
    assert fallback.top_class == "nv" and fallback.malignant
    assert fallback.malignant_probability == pytest.approx(0.55)
    strict = Prediction.from_probabilities(
        CLASS_CODES, probabilities,
        MalignancyRule(0.6, ThresholdFit(0.6, 0.9, "val", 100, 30, 0.9, 0.6, None, "abc")))
    assert not strict.malignant
    document = strict.to_dict()
    assert document["malignant_probability"] == pytest.approx(0.55)
    assert document["malignant_threshold"] == 0.6 and document["malignant_threshold_fitted"] is True
    assert "chosen on the val part" in document["malignant_rule"]
    assert "fallback" in fallback.to_dict()["malignant_rule"]


@pytest.mark.integration
def test_predictors_apply_a_matching_threshold_and_say_why_others_fall_back(
        calibrated_run_dir: Path, tiny_run_dir: Path, tmp_path: Path) -> None:
    import shutil

    from lesionlab.inference import load_predictor
    from lesionlab.inference.torch_backend import TorchPredictor
    from lesionlab.io_utils import file_sha256

    run = tmp_path / "run"
    shutil.copytree(calibrated_run_dir, run)
    digest = file_sha256(run / "best.safetensors")
    fit = ThresholdFit(0.2, 0.9, "val", 100, 30, 0.9, 0.6, 2.0, digest)
    save_threshold(run / "best.malignancy.json", fit)
    predictor = load_predictor(run)
    assert predictor.malignancy.fitted and predictor.malignancy.threshold == 0.2
    uncalibrated = TorchPredictor.from_path(run, calibrated=False)
    assert not uncalibrated.malignancy.fitted and "temperature" in uncalibrated.malignancy.reason
    ensemble = load_predictor(run, ensemble=[tiny_run_dir])
    assert not ensemble.malignancy.fitted and "ensemble" in ensemble.malignancy.reason
