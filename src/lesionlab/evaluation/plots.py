"""The report's PNG figures: confusion matrices, ROC curves (per class, and malignant vs benign), a
reliability diagram and training curves.

Figures are drawn on `matplotlib.figure.Figure` objects with the Agg canvas (no pyplot state, no display
needed) and written through `atomic_write_bytes`. Every figure has a title, labelled axes and the class
codes, so it reads on its own when lifted out of the report.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

from lesionlab.classes import MALIGNANT_CODES
from lesionlab.evaluation.metrics import (
    MELANOMA,
    MELANOMA_SPECIFICITIES,
    ReliabilityBins,
    RocPoints,
    binary_labels,
)
from lesionlab.io_utils import atomic_write_bytes
from lesionlab.malignancy import MalignancyRule, malignant_probability

DPI = 110


def save_figure(figure: Figure, path: Path) -> Path:
    """Render a figure to PNG bytes and write them atomically."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue())


def plot_confusion_matrices(
    labels: np.ndarray, predicted: np.ndarray, class_codes: Sequence[str], title: str, path: Path
) -> Path:
    """Counts and row-normalised (recall per true class) confusion matrices side by side, every cell
    annotated."""
    figure = Figure(figsize=(13, 5.6), layout="constrained")
    count_axes, share_axes = figure.subplots(1, 2)
    every_class = np.arange(len(class_codes))
    for axes, normalize, fmt, subtitle in (
        (count_axes, None, "d", "counts"),
        (share_axes, "true", ".2f", "row-normalised: share of each true class"),
    ):
        ConfusionMatrixDisplay.from_predictions(
            labels,
            predicted,
            labels=every_class,
            display_labels=list(class_codes),
            normalize=normalize,
            values_format=fmt,
            cmap="Blues",
            ax=axes,
            colorbar=True,
        )
        axes.set_title(subtitle)
        axes.set_xlabel("predicted class")
        axes.set_ylabel("true class")
    figure.suptitle(f"Confusion matrix — {title}")
    return save_figure(figure, path)


def plot_roc_curves(
    labels: np.ndarray, probabilities: np.ndarray, class_codes: Sequence[str], title: str, path: Path
) -> Path:
    """One-vs-rest ROC curve per class (classes absent from the data, or the only class present, are
    skipped)."""
    figure = Figure(figsize=(7, 6.2), layout="constrained")
    axes = figure.subplots()
    for index, code in enumerate(class_codes):
        positives = labels == index
        if positives.any() and not positives.all():
            RocCurveDisplay.from_predictions(positives, probabilities[:, index], name=code, ax=axes)
    return finish_roc_figure(figure, axes, f"ROC curves, one class vs rest — {title}", path)


def finish_roc_figure(figure: Figure, axes: Any, title: str, path: Path) -> Path:
    """The chance diagonal, axis labels, title and legend every ROC figure shares; then save it."""
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance (AUC = 0.5)")
    axes.set_xlabel("false positive rate (1 - specificity)")
    axes.set_ylabel("true positive rate (sensitivity)")
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize="small")
    return save_figure(figure, path)


def plot_malignancy_roc(
    labels: np.ndarray, probabilities: np.ndarray, class_codes: Sequence[str], rule: MalignancyRule,
    title: str, path: Path,
) -> Path:
    """The clinician's curve: malignant vs benign on the summed malignant probability, with the operating
    point of the rule's threshold marked, and melanoma vs the rest on p(mel) with the specificities the
    report quotes drawn as vertical lines. A curve whose positives or negatives are absent is left out."""
    figure = Figure(figsize=(7, 6.2), layout="constrained")
    axes = figure.subplots()
    malignant = binary_labels(labels, class_codes, MALIGNANT_CODES)
    if malignant.any() and not malignant.all():
        scores = malignant_probability(probabilities, class_codes)
        RocCurveDisplay.from_predictions(malignant, scores, name="malignant vs benign", ax=axes,
                                         curve_kwargs={"color": "tab:red"})
        curve = RocPoints.from_scores(scores, malignant, np.ones((1, len(scores))))
        sensitivity, specificity = curve.rates_at_threshold(rule.threshold)
        origin = "fitted on val" if rule.fitted else "fallback, not fitted"
        axes.plot(1.0 - specificity[0], sensitivity[0], marker="o", markersize=9, color="black",
                  linestyle="none", label=f"threshold {rule.threshold:.3f} ({origin}): sensitivity "
                                          f"{sensitivity[0]:.2f}, specificity {specificity[0]:.2f}")
    melanoma = binary_labels(labels, class_codes, frozenset({MELANOMA}))
    if MELANOMA in class_codes and melanoma.any() and not melanoma.all():
        RocCurveDisplay.from_predictions(melanoma, probabilities[:, list(class_codes).index(MELANOMA)],
                                         name="melanoma vs rest (p(mel))", ax=axes,
                                         curve_kwargs={"color": "tab:purple", "linestyle": "--"})
        for specificity in MELANOMA_SPECIFICITIES:
            axes.axvline(1.0 - specificity, color="grey", linestyle=":", linewidth=1)
            axes.text(1.0 - specificity, 0.02, f" spec {specificity:.2f}", fontsize="x-small", color="grey")
    return finish_roc_figure(figure, axes, f"Malignant vs benign — {title}", path)


def plot_reliability_diagram(bins: ReliabilityBins, title: str, path: Path) -> Path:
    """Accuracy against mean confidence per confidence bin, with the share of images in each bin beneath."""
    figure = Figure(figsize=(6.5, 7), layout="constrained")
    accuracy_axes, count_axes = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = np.diff(bins.edges)
    left = bins.edges[:-1]
    filled = bins.counts > 0
    accuracy_axes.bar(
        left[filled],
        bins.accuracy[filled],
        width=width[filled],
        align="edge",
        edgecolor="black",
        color="tab:blue",
        alpha=0.8,
        label="accuracy in bin",
    )
    centres = left + width / 2
    accuracy_axes.plot(
        centres[filled],
        bins.mean_confidence[filled],
        linestyle="none",
        marker="D",
        color="tab:red",
        label="mean confidence in bin",
    )
    accuracy_axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    accuracy_axes.set_ylabel("accuracy")
    accuracy_axes.set_ylim(0, 1)
    accuracy_axes.set_title(f"Reliability diagram (ECE = {bins.expected_calibration_error:.3f}) — {title}")
    accuracy_axes.legend(loc="upper left", fontsize="small")
    count_axes.bar(
        left, bins.counts / bins.counts.sum(), width=width, align="edge", edgecolor="black", color="tab:grey"
    )
    count_axes.set_xlim(0, 1)
    count_axes.set_xlabel("confidence (probability of the predicted class)")
    count_axes.set_ylabel("share of images")
    return save_figure(figure, path)


TRAINING_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("train_loss", "val_loss")),
    ("accuracy", ("val_accuracy",)),
    ("balanced accuracy and macro F1", ("val_balanced_accuracy", "val_macro_f1")),
)


def read_history(path: Path) -> list[dict[str, str]]:
    """The rows of a run's `history.csv` (one per epoch, with `stage` and `epoch` columns)."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def plot_training_curves(history: Path, path: Path) -> Path:
    """Loss, accuracy and balanced accuracy per epoch, epochs of all stages in sequence, stages shaded.

    Each stage starts where the previous one ended (stage 2 fine-tunes stage 1's chosen checkpoint), so one
    continuous axis with stage boundaries shows the whole training as it happened.
    """
    rows = read_history(history)
    columns = rows[0].keys() if rows else ()
    step = np.arange(1, len(rows) + 1)
    stages = [row["stage"] for row in rows]
    figure = Figure(figsize=(13, 4.2), layout="constrained")
    for axes, (quantity, names) in zip(
        figure.subplots(1, len(TRAINING_PANELS)), TRAINING_PANELS, strict=True
    ):
        for name in (name for name in names if name in columns):
            values = np.array([float(row[name]) if row[name] not in ("", None) else np.nan for row in rows])
            axes.plot(step, values, marker="o", markersize=3, label=name.replace("_", " "))
        for stage in dict.fromkeys(stages):
            inside = step[[s == stage for s in stages]]
            axes.axvspan(
                inside[0] - 0.5, inside[-1] + 0.5, alpha=0.08 if int(stage) % 2 else 0.0, color="black"
            )
            axes.text(
                inside.mean(),
                1.01,
                f"stage {stage}",
                transform=axes.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize="small",
            )
        axes.set_xlabel("epoch (all stages in sequence)")
        axes.set_ylabel(quantity)
        axes.set_title(quantity, pad=16)
        axes.legend(fontsize="small")
    figure.suptitle(f"Training history — {history.parent.name}")
    return save_figure(figure, path)


STUDY_METRICS: tuple[tuple[str, str], ...] = (
    ("balanced_accuracy", "balanced accuracy"),
    ("macro_f1", "macro F1"),
    ("accuracy", "accuracy"),
)


def plot_study(rows: Sequence[dict[str, Any]], title: str, path: Path) -> Path:
    """A study at a glance: headline metrics per run as grouped bars, and recall per class as a heat map.

    Each row needs `label`, `accuracy`, `balanced_accuracy`, `macro_f1` and `recall_<code>` per class (None
    where a class is absent). Runs are listed top to bottom in the study's order.
    """
    labels = [row["label"] for row in rows]
    codes = [key[len("recall_") :] for key in rows[0] if key.startswith("recall_")] if rows else []
    height = 2.2 + 0.45 * len(rows)
    figure = Figure(figsize=(14, height), layout="constrained")
    bar_axes, heat_axes = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.1]})
    positions = np.arange(len(rows))
    width = 0.8 / len(STUDY_METRICS)
    for offset, (key, name) in enumerate(STUDY_METRICS):
        values = [row[key] for row in rows]
        centre_offset = (offset - (len(STUDY_METRICS) - 1) / 2) * width
        bar_axes.barh(positions + centre_offset, values, height=width, label=name)
    bar_axes.set_yticks(positions, labels)
    bar_axes.set_ylim(len(rows) - 0.5, -0.5)  # top to bottom, row for row with the heat map beside it
    bar_axes.set_xlim(0, 1)
    bar_axes.set_xlabel("score on the test part")
    bar_axes.set_title("headline metrics")
    bar_axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize="small")
    recall = np.array(
        [
            [np.nan if row[f"recall_{code}"] is None else row[f"recall_{code}"] for code in codes]
            for row in rows
        ],
        dtype=float,
    )
    image = heat_axes.imshow(recall, vmin=0, vmax=1, cmap="Blues", aspect="auto")
    for (row_index, column), value in np.ndenumerate(recall):
        text = "—" if np.isnan(value) else f"{value:.2f}"
        heat_axes.text(
            column,
            row_index,
            text,
            ha="center",
            va="center",
            color="white" if value > 0.6 else "black",
            fontsize="small",
        )
    heat_axes.set_xticks(np.arange(len(codes)), codes)
    heat_axes.set_yticks(positions, [])  # the rows line up with the bars, whose labels name them
    heat_axes.set_xlabel("true class")
    heat_axes.set_title("recall (sensitivity) per class")
    figure.colorbar(image, ax=heat_axes, label="recall")
    figure.suptitle(title)
    return save_figure(figure, path)
