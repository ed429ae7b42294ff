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
One set of draws (`bootstrap_draws`) serves every interval, the 7-class ones and the malignant-vs-benign
ones alike, so they all describe the same resampled data sets.
- Malignant vs benign scores each image by its summed malignant probability (`lesionlab.malignancy`); the
ROC curve, its AUC and the sensitivity at a specificity come from the tie-grouped curve that scikit-learn's
`roc_curve` draws (the tests check they agree), computed for all resamples at once from cumulative weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
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

from lesionlab.classes import MALIGNANT_CODES
from lesionlab.evaluation.predictions import Predictions
from lesionlab.malignancy import FALLBACK_RULE, MalignancyRule, ThresholdFit, malignant_probability

ECE_BINS = 15
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE_LEVEL = 0.95
INTERVAL_METRICS: tuple[str, ...] = ("balanced_accuracy", "accuracy", "macro_f1")
MELANOMA = "mel"
MELANOMA_SPECIFICITIES: tuple[float, ...] = (0.80, 0.90)
RESAMPLE_CHUNK = 250
RATE_TOLERANCE = 1e-12


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


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean recall over the classes present in `labels` (scikit-learn's `balanced_accuracy_score`).

    The one definition that training's validation scores, `evaluate` and the export checks share, so a part of
    the data that lacks a class (while the model predicts it) gives one figure everywhere and no warning.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(labels, predicted))


def headline_metrics(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro/weighted F1 over the classes present in `labels`.

    A present class the model never predicts has F1 0 (scikit-learn's `zero_division=0`, without its warning).
    """
    present = np.unique(labels)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": balanced_accuracy(labels, predicted),
        **{f"{kind}_f1": float(f1_score(labels, predicted, labels=present, average=kind, zero_division=0))
           for kind in ("macro", "weighted")},
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


def bootstrap_draws(
    cluster_count: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> np.ndarray:
    """How often each cluster is drawn in each resample, `(resamples, clusters)`: each resample draws as many
    clusters as there are, with replacement. Every bootstrap interval in `metrics.json` uses these draws."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(cluster_count, np.full(cluster_count, 1.0 / cluster_count), size=resamples)


def percentile_interval(values: np.ndarray, level: float = CONFIDENCE_LEVEL) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap values (resamples where a value is undefined,
    such as a resample without malignant images, are left out)."""
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.nanpercentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def cluster_confusions(labels: np.ndarray, predicted: np.ndarray, clusters: np.ndarray,
                       num_classes: int) -> np.ndarray:
    """One flattened confusion matrix per cluster, `(clusters, C * C)`: what the bootstrap resamples."""
    per_cluster = np.zeros((int(clusters.max()) + 1, num_classes * num_classes))
    np.add.at(per_cluster, (clusters, labels * num_classes + predicted), 1.0)
    return per_cluster


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

    A cluster drawn k times contributes its images k times. One confusion matrix per cluster times the
    (resamples x clusters) draw counts gives every resample's confusion matrix in one matrix product.
    """
    per_cluster = cluster_confusions(labels, predicted, clusters, num_classes)
    draws = bootstrap_draws(len(per_cluster), resamples, seed)
    confusion = (draws @ per_cluster).reshape(resamples, num_classes, num_classes)
    return {
        name: percentile_interval(values, level) for name, values in confusion_from_counts(confusion).items()
    }


def paired_differences(
    labels: np.ndarray,
    predicted: np.ndarray,
    baseline: np.ndarray,
    clusters: np.ndarray,
    num_classes: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = CONFIDENCE_LEVEL,
) -> dict[str, dict[str, float]]:
    """Accuracy, balanced accuracy and macro F1 of `predicted` minus those of `baseline` on the same images,
    with a paired percentile bootstrap interval: both sets of decisions are scored on the same resampled
    clusters, so what the images have in common cancels and the interval is that of the difference alone,
    far narrower than two separate intervals suggest. A difference whose interval excludes 0 is one this
    data can tell apart."""
    draws = bootstrap_draws(int(clusters.max()) + 1, resamples, seed)
    scores = []
    for decisions in (predicted, baseline):
        per_cluster = cluster_confusions(labels, decisions, clusters, num_classes)
        confusion = (draws @ per_cluster).reshape(resamples, num_classes, num_classes)
        scores.append((confusion_from_counts(per_cluster.sum(axis=0).reshape(num_classes, num_classes)),
                       confusion_from_counts(confusion)))
    (point, resampled), (base_point, base_resampled) = scores
    differences = {}
    for name in resampled:
        low, high = percentile_interval(resampled[name] - base_resampled[name], level)
        differences[name] = {"estimate": float(point[name] - base_point[name]), "low": low, "high": high}
    return differences


@dataclass(frozen=True)
class RocPoints:
    """ROC curves of one score against binary truth under one or more image weightings (a bootstrap's
    resamples), `(weightings, points)`; point 0 is (0, 0) at an infinite threshold, then one point per
    distinct score, highest first. An image is called positive when its score is >= the threshold."""

    false_positive_rate: np.ndarray
    true_positive_rate: np.ndarray
    thresholds: np.ndarray

    @classmethod
    def from_scores(cls, scores: np.ndarray, positives: np.ndarray, weights: np.ndarray) -> RocPoints:
        """Curves from per-image `weights` `(weightings, images)` (ones for the plain curve)."""
        order = np.argsort(-scores, kind="mergesort")
        ordered = scores[order]
        group_ends = np.r_[np.nonzero(np.diff(ordered))[0], len(ordered) - 1]
        weighted = weights[:, order]
        is_positive = positives[order].astype(bool)
        true_positives = np.cumsum(weighted * is_positive, axis=1)[:, group_ends]
        false_positives = np.cumsum(weighted * ~is_positive, axis=1)[:, group_ends]
        with np.errstate(invalid="ignore", divide="ignore"):
            tpr = true_positives / true_positives[:, -1:]
            fpr = false_positives / false_positives[:, -1:]
        zeros = np.zeros((len(weights), 1))
        return cls(np.hstack([zeros, fpr]), np.hstack([zeros, tpr]), np.r_[np.inf, ordered[group_ends]])

    def auc(self) -> np.ndarray:
        """Area under each curve (trapezoids between the points; ties count half, as in roc_auc_score)."""
        fpr, tpr = self.false_positive_rate, self.true_positive_rate
        return np.sum(np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2.0, axis=1)

    def sensitivity_at_specificity(self, specificity: float) -> np.ndarray:
        """The highest true positive rate among points whose specificity is at least `specificity`."""
        allowed = self.false_positive_rate <= 1.0 - specificity + RATE_TOLERANCE
        return np.where(allowed, self.true_positive_rate, -np.inf).max(axis=1)

    def rates_at_threshold(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Sensitivity and specificity when images scoring >= `threshold` are called positive."""
        point = int(np.searchsorted(-self.thresholds, -threshold, side="right")) - 1
        return self.true_positive_rate[:, point], 1.0 - self.false_positive_rate[:, point]


def binary_labels(
    labels: np.ndarray, class_codes: Sequence[str], positive_codes: frozenset[str]
) -> np.ndarray:
    """Whether each image's true class is one of `positive_codes`."""
    positive_labels = [index for index, code in enumerate(class_codes) if code in positive_codes]
    return np.isin(labels, positive_labels)


def fit_malignancy_threshold(
    probabilities: np.ndarray,
    labels: np.ndarray,
    class_codes: Sequence[str],
    target_sensitivity: float,
    fitted_on: str,
    temperature: float | None,
    checkpoint_sha256: str,
) -> ThresholdFit | None:
    """The highest threshold on the summed malignant probability that flags at least `target_sensitivity`
    of the malignant images (highest, so specificity is as good as that sensitivity allows); None where the
    data lack malignant or benign images."""
    positives = binary_labels(labels, class_codes, MALIGNANT_CODES)
    if positives.all() or not positives.any():
        return None
    scores = malignant_probability(probabilities, class_codes)
    curve = RocPoints.from_scores(scores, positives, np.ones((1, len(scores))))
    point = int(np.argmax(curve.true_positive_rate[0] >= target_sensitivity - RATE_TOLERANCE))
    threshold = float(curve.thresholds[point])
    sensitivity, specificity = curve.rates_at_threshold(threshold)
    return ThresholdFit(threshold=threshold, target_sensitivity=target_sensitivity, fitted_on=fitted_on,
                        samples=len(scores), malignant_samples=int(positives.sum()),
                        sensitivity=float(sensitivity[0]), specificity=float(specificity[0]),
                        temperature=temperature, checkpoint_sha256=checkpoint_sha256)


def _estimate(estimate: float, values: np.ndarray, level: float) -> dict[str, float]:
    """One JSON interval record."""
    low, high = percentile_interval(values, level)
    return {"estimate": float(estimate), "low": low, "high": high}


def _binary_figures(
    scores: np.ndarray, positives: np.ndarray, clusters: np.ndarray, draws: np.ndarray,
    measure: Callable[[RocPoints], dict[str, np.ndarray]], level: float,
) -> dict[str, dict[str, float]]:
    """`measure` of the plain curve, with bootstrap intervals over the same draws, in chunks of resamples so
    memory stays bounded on the whole dataset."""
    plain = measure(RocPoints.from_scores(scores, positives, np.ones((1, len(scores)))))
    chunks = [
        measure(RocPoints.from_scores(scores, positives, draws[start:start + RESAMPLE_CHUNK][:, clusters]))
        for start in range(0, len(draws), RESAMPLE_CHUNK)
    ]
    return {
        name: _estimate(plain[name][0], np.concatenate([chunk[name] for chunk in chunks]), level)
        for name in plain
    }


def malignancy_metrics(
    predictions: Predictions,
    clusters: np.ndarray,
    rule: MalignancyRule = FALLBACK_RULE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = CONFIDENCE_LEVEL,
) -> dict[str, Any]:
    """Malignant (akiec, bcc, mel) vs benign on the summed malignant probability: sensitivity and
    specificity at the rule's threshold, ROC AUC, and melanoma's sensitivity at fixed specificities, each
    with a bootstrap interval resampled by `clusters` (the draws of `bootstrap_intervals`)."""
    codes = predictions.class_codes
    positives = binary_labels(predictions.labels, codes, MALIGNANT_CODES)
    scores = malignant_probability(predictions.probabilities, codes)
    draws = bootstrap_draws(int(clusters.max()) + 1, resamples, seed)
    result: dict[str, Any] = {
        "score": f"sum of the probabilities of {', '.join(sorted(MALIGNANT_CODES))}",
        "malignant_images": int(positives.sum()),
        "benign_images": int((~positives).sum()),
        "threshold": rule.threshold,
        "threshold_fitted": rule.fitted,
        "threshold_fit": asdict(rule.fit) if rule.fit else None,
        "rule": rule.description,
    }
    if positives.all() or not positives.any():
        result["note"] = (
            "the data lack malignant or benign images: sensitivity, specificity and AUC are undefined"
        )
        return result

    def at_threshold(curve: RocPoints) -> dict[str, np.ndarray]:
        sensitivity, specificity = curve.rates_at_threshold(rule.threshold)
        return {"sensitivity": sensitivity, "specificity": specificity, "roc_auc": curve.auc()}

    result.update(_binary_figures(scores, positives, clusters, draws, at_threshold, level))
    melanoma = binary_labels(predictions.labels, codes, frozenset({MELANOMA}))
    if MELANOMA in codes and melanoma.any() and not melanoma.all():

        def melanoma_figures(curve: RocPoints) -> dict[str, np.ndarray]:
            return {"roc_auc": curve.auc(), **{
                f"{specificity:.2f}": curve.sensitivity_at_specificity(specificity)
                for specificity in MELANOMA_SPECIFICITIES
            }}

        figures = _binary_figures(
            predictions.probabilities[:, codes.index(MELANOMA)], melanoma, clusters, draws, melanoma_figures,
            level,
        )
        result["melanoma"] = {
            "score": "probability of mel",
            "images": int(melanoma.sum()),
            "roc_auc": figures.pop("roc_auc"),
            "sensitivity_at_specificity": figures,
        }
    return result


def compute_metrics(
    predictions: Predictions,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    n_bins: int = ECE_BINS,
    malignancy: MalignancyRule = FALLBACK_RULE,
) -> dict[str, Any]:
    """Every metric of one evaluation, as the JSON-ready body of `metrics.json`; `malignancy` is the rule
    (a threshold fitted on validation, or the fallback) whose sensitivity and specificity are reported."""
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
        "malignancy": malignancy_metrics(predictions, clusters, malignancy, resamples, seed),
    }


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: an undefined value becomes null (its reason is recorded beside it)."""
    return None if np.isnan(value) else float(value)
