"""The numbers in `metrics.json`: scikit-learn metrics over one set of predictions, plus calibration and
bootstrap confidence intervals.

Conventions, chosen so that a part of the data lacking a class still gets honest figures:
- Macro averages (balanced accuracy, macro F1) run over the classes present in the true labels, which is what
  scikit-learn's `balanced_accuracy_score` (the ISIC 2018 challenge metric) does; the per-class table still
  lists every class the model knows, with `null` and a reason where a value is undefined.
- Per-class accuracy is one-vs-rest accuracy, (TP + TN) / N, as in the reference's per-class table heading.
- Expected calibration error uses the top-class probability in 15 equal-width bins over (0, 1]:
  ECE = sum over bins of (bin count / N) * |bin accuracy - bin mean confidence|.
- Confidence intervals are 95% percentile bootstrap intervals from 1000 seeded resamples. Images of one
lesion are not independent (HAM10000 has 10,015 images of 7,470 lesions), so where lesion ids are known
whole lesions are resampled (a cluster bootstrap); an image without a lesion id is its own cluster.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    log_loss,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from lesionlab.evaluation.predictions import Predictions

ECE_BINS = 15
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE_LEVEL = 0.95
INTERVAL_METRICS: tuple[str, ...] = ("balanced_accuracy", "accuracy", "macro_f1")


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of top-class confidence against accuracy: the data of a reliability diagram."""

    edges: np.ndarray
    counts: np.ndarray
    mean_confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def expected_calibration_error(self) -> float:
        """Count-weighted mean gap between accuracy and confidence over the non-empty bins."""
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.mean_confidence[filled])
        return float(np.sum(self.counts[filled] * gaps) / self.counts.sum())


def reliability_bins(
    labels: np.ndarray, probabilities: np.ndarray, n_bins: int = ECE_BINS
) -> ReliabilityBins:
    """Group predictions by top-class confidence into `n_bins` equal-width bins (b/n, (b+1)/n]."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(float)
    bin_index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    counts = np.bincount(bin_index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bin_index, weights=confidence, minlength=n_bins) / counts
        accuracy = np.bincount(bin_index, weights=correct, minlength=n_bins) / counts
    return ReliabilityBins(np.linspace(0.0, 1.0, n_bins + 1), counts, mean_confidence, accuracy)


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE of the top-class probability (see the module docstring for the binning)."""
    return reliability_bins(labels, probabilities, n_bins).expected_calibration_error


def negative_log_likelihood(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean cross-entropy of the true class, the quantity temperature scaling minimises."""
    return float(log_loss(labels, probabilities, labels=np.arange(probabilities.shape[1])))


def headline_metrics(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro/weighted F1 over the classes present in `labels`."""
    present = np.unique(labels)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = balanced_accuracy_score(labels, predicted)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(f1_score(labels, predicted, labels=present, average="macro")),
        "weighted_f1": float(f1_score(labels, predicted, labels=present, average="weighted")),
    }


def variant_metrics(predictions: Predictions) -> dict[str, float | None]:
    """The short row of the plain / +TTA / +temperature comparison: decisions and calibration side by side."""
    labels, probabilities = predictions.labels, predictions.probabilities
    _, macro_auc, _ = roc_auc_by_class(labels, probabilities, predictions.class_codes)
    return {
        **headline_metrics(labels, predictions.predicted),
        "roc_auc_macro": macro_auc,
        "nll": negative_log_likelihood(labels, probabilities),
        "ece": expected_calibration_error(labels, probabilities),
    }


def roc_auc_by_class(
    labels: np.ndarray, probabilities: np.ndarray, class_codes: Sequence[str]
) -> tuple[dict[str, float | None], float | None, dict[str, str]]:
    """One-vs-rest ROC AUC per class, their mean over the classes where it is defined, and why it is not."""
    per_class: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    for index, code in enumerate(class_codes):
        positives = labels == index
        if not positives.any():
            per_class[code], reasons[code] = None, f"no {code} images in this data: ROC AUC is undefined"
        elif positives.all():
            per_class[code], reasons[code] = None, f"only {code} images in this data: ROC AUC is undefined"
        else:
            per_class[code] = float(roc_auc_score(positives, probabilities[:, index]))
    defined = [value for value in per_class.values() if value is not None]
    return per_class, (float(np.mean(defined)) if defined else None), reasons


def per_class_metrics(
    labels: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray, class_codes: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Precision, recall, F1, support, one-vs-rest accuracy and ROC AUC for every class the model knows."""
    all_labels = np.arange(len(class_codes))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=all_labels, zero_division=np.nan
    )
    one_vs_rest = multilabel_confusion_matrix(labels, predicted, labels=all_labels)
    auc, _, auc_reasons = roc_auc_by_class(labels, probabilities, class_codes)
    table: dict[str, dict[str, Any]] = {}
    for index, code in enumerate(class_codes):
        (true_negative, _), (_, true_positive) = one_vs_rest[index]
        row: dict[str, Any] = {
            "precision": _finite_or_none(precision[index]),
            "recall": _finite_or_none(recall[index]),
            "f1": _finite_or_none(f1[index]),
            "support": int(support[index]),
            "accuracy": float((true_negative + true_positive) / len(labels)),
            "roc_auc": auc[code],
        }
        notes = []
        if support[index] == 0:
            notes.append(f"no {code} images in this data: recall and F1 are undefined")
        if not (predicted == index).any():
            notes.append(f"{code} never predicted: precision is undefined")
        if code in auc_reasons and support[index] > 0:
            notes.append(auc_reasons[code])
        if notes:
            row["note"] = "; ".join(notes)
        table[code] = row
    return table


def reference_classification_report(
    labels: np.ndarray, predicted: np.ndarray, class_codes: Sequence[str]
) -> str:
    """scikit-learn's classification report in the reference's layout: two digits, one row per class code."""
    return classification_report(
        labels,
        predicted,
        labels=np.arange(len(class_codes)),
        target_names=list(class_codes),
        digits=2,
        zero_division=0,
    )


def confusion_from_counts(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro F1 from a stack of confusion matrices (..., C, C), rows = truth.

    The bootstrap needs these for 1000 resamples; deriving them from counts takes milliseconds where calling
    scikit-learn per resample takes seconds. The tests check that both agree on the full data.
    """
    diagonal = np.diagonal(confusion, axis1=-2, axis2=-1).astype(float)
    true_counts = confusion.sum(axis=-1).astype(float)
    predicted_counts = confusion.sum(axis=-2).astype(float)
    present = true_counts > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, diagonal / true_counts, np.nan)
        f1 = np.where(present, 2 * diagonal / (true_counts + predicted_counts), np.nan)
    return {
        "accuracy": diagonal.sum(axis=-1) / true_counts.sum(axis=-1),
        "balanced_accuracy": np.nanmean(recall, axis=-1),
        "macro_f1": np.nanmean(f1, axis=-1),
    }


def cluster_ids(image_ids: Sequence[str], lesion_ids: Sequence[str | None]) -> tuple[np.ndarray, str]:
    """The bootstrap's resampling unit per image (its lesion, else itself) and a word describing the unit."""
    keys = [
        f"lesion:{lesion}" if lesion else f"image:{image}"
        for image, lesion in zip(image_ids, lesion_ids, strict=True)
    ]
    known = sum(1 for lesion in lesion_ids if lesion)
    unit = "lesion" if known == len(keys) else "image" if known == 0 else "lesion (image where unknown)"
    _, ids = np.unique(keys, return_inverse=True)
    return ids, unit


def bootstrap_intervals(
    labels: np.ndarray,
    predicted: np.ndarray,
    clusters: np.ndarray,
    num_classes: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = CONFIDENCE_LEVEL,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for accuracy, balanced accuracy and macro F1, resampling whole clusters.

    Each resample draws as many clusters as there are, with replacement; a cluster drawn k times contributes
    its images k times. One confusion matrix per cluster times the (resamples x clusters) draw counts gives
    every resample's confusion matrix in one matrix product.
    """
    cluster_count = int(clusters.max()) + 1
    cells = labels * num_classes + predicted
    per_cluster = np.zeros((cluster_count, num_classes * num_classes))
    np.add.at(per_cluster, (clusters, cells), 1.0)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(cluster_count, np.full(cluster_count, 1.0 / cluster_count), size=resamples)
    confusion = (draws @ per_cluster).reshape(resamples, num_classes, num_classes)
    tail = 100.0 * (1.0 - level) / 2.0
    return {
        name: (float(np.percentile(values, tail)), float(np.percentile(values, 100.0 - tail)))
        for name, values in confusion_from_counts(confusion).items()
    }


def compute_metrics(
    predictions: Predictions,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    n_bins: int = ECE_BINS,
) -> dict[str, Any]:
    """Every metric of one evaluation, as the JSON-ready body of `metrics.json`."""
    labels, probabilities, predicted = predictions.labels, predictions.probabilities, predictions.predicted
    codes = predictions.class_codes
    num_classes = len(codes)
    headline = headline_metrics(labels, predicted)
    _, macro_auc, auc_reasons = roc_auc_by_class(labels, probabilities, codes)
    clusters, unit = cluster_ids(predictions.image_ids, predictions.lesion_ids)
    intervals = bootstrap_intervals(labels, predicted, clusters, num_classes, resamples, seed)
    matrix = confusion_matrix(labels, predicted, labels=np.arange(num_classes))
    return {
        "samples": len(labels),
        "classes": list(codes),
        "classes_present": [codes[i] for i in np.unique(labels)],
        **headline,
        "roc_auc_macro": macro_auc,
        "roc_auc_macro_excludes": auc_reasons,
        "nll": negative_log_likelihood(labels, probabilities),
        "ece": expected_calibration_error(labels, probabilities, n_bins),
        "ece_bins": n_bins,
        "per_class": per_class_metrics(labels, predicted, probabilities, codes),
        "classification_report": reference_classification_report(labels, predicted, codes),
        "confusion_matrix": {
            "rows": "true class",
            "columns": "predicted class",
            "labels": list(codes),
            "counts": matrix.tolist(),
        },
        "confidence_intervals": {
            "method": "percentile bootstrap",
            "level": CONFIDENCE_LEVEL,
            "resamples": resamples,
            "seed": seed,
            "unit": unit,
            "clusters": int(clusters.max()) + 1,
            **{
                name: {"estimate": headline[name], "low": intervals[name][0], "high": intervals[name][1]}
                for name in INTERVAL_METRICS
            },
        },
    }


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: an undefined value becomes null (its reason is recorded beside it)."""
    return None if np.isnan(value) else float(value)
