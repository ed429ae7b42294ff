"""Evaluate a run's best model on a part of a dataset and write everything a reader needs to trust it.

`evaluate_run` is the whole step (load model, pick samples, infer, calibrate, measure, report);
`write_evaluation` is its second half, from predictions to files, so reports can be produced and tested
without a model. Output folder: `RUN/eval/<dataset-name>-<split>/` holding `predictions.csv`,
`metrics.json`, `report.md`, `report.html` and `figures/*.png`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lesionlab.evaluation import plots
from lesionlab.evaluation.calibration import softmax_probabilities
from lesionlab.evaluation.metrics import compute_metrics, reliability_bins, variant_metrics
from lesionlab.evaluation.predictions import Predictions, write_predictions
from lesionlab.evaluation.report import build_report, render_html, render_markdown
from lesionlab.evaluation.tta import average_view_probabilities
from lesionlab.io_utils import atomic_write_json, atomic_write_text

FIGURES_DIR = "figures"


def variant_predictions(
    base: Predictions, view_logits: np.ndarray, use_tta: bool, temperature: float | None
) -> dict[str, Predictions]:
    """Predictions without and with each requested option, most enhanced last.

    `view_logits` is (N, views, classes) with the identity view first, so one inference pass gives both the
    plain and the TTA probabilities; the temperature divides each view's logits before the softmax.
    """
    variants = {"plain": base.with_probabilities(softmax_probabilities(view_logits[:, 0]))}
    if use_tta:
        variants["tta"] = base.with_probabilities(average_view_probabilities(view_logits))
    if temperature is not None:
        variants["temperature"] = base.with_probabilities(
            softmax_probabilities(view_logits[:, 0], temperature)
        )
        if use_tta:
            variants["tta+temperature"] = base.with_probabilities(
                average_view_probabilities(view_logits, temperature)
            )
    return variants


def write_figures(
    out_dir: Path, predictions: Predictions, title: str, history: Path | None
) -> dict[str, str]:
    """Draw the report's figures into `out_dir/figures`; return caption -> path relative to `out_dir`."""
    figures_dir = out_dir / FIGURES_DIR
    labels, probabilities, codes = predictions.labels, predictions.probabilities, predictions.class_codes
    drawn: dict[str, Path] = {}
    if history is not None and history.is_file():
        drawn["Training curves per stage: loss, accuracy and balanced accuracy"] = plots.plot_training_curves(
            history, figures_dir / "training-curves.png"
        )
    drawn["Confusion matrix: counts and row-normalised"] = plots.plot_confusion_matrices(
        labels, predictions.predicted, codes, title, figures_dir / "confusion-matrix.png"
    )
    drawn["ROC curves per class, one vs rest"] = plots.plot_roc_curves(
        labels, probabilities, codes, title, figures_dir / "roc-curves.png"
    )
    drawn["Reliability diagram of the predicted class's probability"] = plots.plot_reliability_diagram(
        reliability_bins(labels, probabilities), title, figures_dir / "reliability.png"
    )
    return {caption: path.relative_to(out_dir).as_posix() for caption, path in drawn.items()}


def write_evaluation(
    out_dir: Path,
    variants: dict[str, Predictions],
    evaluation: dict[str, Any],
    data: dict[str, Any],
    model: dict[str, Any],
    history: Path | None,
) -> dict[str, Any]:
    """Measure the most enhanced variant (the last), compare all variants, and write every output file.

    `evaluation` describes where the predictions came from (run, dataset, split, options); `data` and
    `model` are the summaries from `lesionlab.evaluation.summary`. Returns the metrics.json payload.
    """
    primary_name = list(variants)[-1]
    primary = variants[primary_name]
    metrics = {
        "evaluation": {
            **evaluation,
            "variant": primary_name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        **compute_metrics(primary),
        "variants": {name: variant_metrics(predictions) for name, predictions in variants.items()},
        "data": data,
        "model": model,
    }
    write_predictions(out_dir / "predictions.csv", primary)
    atomic_write_json(out_dir / "metrics.json", metrics)
    title = f"{evaluation['run']} on {evaluation['dataset']}-{evaluation['split']}"
    report = build_report(metrics, write_figures(out_dir, primary, title, history))
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    atomic_write_text(out_dir / "report.html", render_html(report, out_dir))
    return metrics
