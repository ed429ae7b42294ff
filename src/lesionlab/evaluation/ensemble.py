"""Evaluate an ensemble of runs: each member scored as `lesionlab evaluate` does, the probabilities averaged.

Each member is scored with its own preprocessing, TTA views and temperature (its most enhanced variant), on
the same images, and the ensemble predicts the image-by-image mean of the members' probabilities, the rule
`lesionlab predict --ensemble` applies. The malignant/benign threshold is fitted on the same mean over the
validation part of the first member's split (never on the evaluated part), so the ensemble is judged by the
rule it would be deployed with. Members must share the split: the validation figure printed beside the
test figure is what an ensemble is chosen by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from lesionlab.errors import ConfigError
from lesionlab.evaluation.evaluate import EvaluationOptions, EvaluationResult, evaluate_run
from lesionlab.evaluation.metrics import compute_metrics, fit_malignancy_threshold
from lesionlab.evaluation.predictions import Predictions, read_predictions, write_predictions
from lesionlab.io_utils import atomic_write_json
from lesionlab.malignancy import FALLBACK_RULE, MalignancyRule

ENSEMBLE_SHA256 = "ensemble"


def mean_predictions(members: Sequence[Predictions], names: Sequence[str]) -> Predictions:
    """The members' probabilities averaged image by image (renormalised: predictions.csv rounds them)."""
    first = members[0]
    for name, member in zip(names, members, strict=True):
        if member.image_ids != first.image_ids or member.class_codes != first.class_codes:
            raise ConfigError(f"ensemble member {name} was evaluated on other images or classes than "
                              f"{names[0]}; evaluate every member on the same data and split.")
    mean = np.mean([member.probabilities for member in members], axis=0)
    return first.with_probabilities(mean / mean.sum(axis=1, keepdims=True))


def member_predictions(run_dirs: Sequence[Path], options: EvaluationOptions) -> list[Predictions]:
    """Evaluate every member (into its own eval folder) and read back its predictions."""
    results = [evaluate_run(run_dir, replace(options, out_dir=None)) for run_dir in run_dirs]
    return [read_predictions(result.out_dir / "predictions.csv") for result in results]


def ensemble_rule(validation: Predictions | None, target_sensitivity: float) -> MalignancyRule:
    """The malignant threshold fitted on the ensemble's validation probabilities, else the fallback."""
    if validation is None:
        return FALLBACK_RULE
    fit = fit_malignancy_threshold(validation.probabilities, validation.labels, validation.class_codes,
                                   target_sensitivity, "val", None, ENSEMBLE_SHA256)
    return MalignancyRule(fit.threshold, fit) if fit is not None else FALLBACK_RULE


def evaluate_ensemble(run_dirs: Sequence[Path], options: EvaluationOptions) -> EvaluationResult:
    """Score the mean of the members' probabilities; write predictions.csv and metrics.json.

    Output: `options.out_dir`, else `<first member>/eval/ensemble-<members>-<split>`.
    """
    names = [run_dir.name for run_dir in run_dirs]
    evaluated = mean_predictions(member_predictions(run_dirs, options), names)
    validation = None
    if options.data is None and (options.split or "test") != "val":
        validation = mean_predictions(member_predictions(run_dirs, replace(options, split="val")), names)
    rule = ensemble_rule(validation, options.malignant_sensitivity)
    metrics: dict[str, Any] = {
        "evaluation": {"members": [str(run_dir) for run_dir in run_dirs], "data": str(options.data or "own"),
                       "split": options.split or ("test" if options.data is None else "all"),
                       "tta_views": list(options.tta_views) if options.tta_views else None,
                       "rule": "mean of the members' probabilities (each with its temperature)"},
        **compute_metrics(evaluated, malignancy=rule),
        "variants": {},
        "validation": compute_metrics(validation) if validation is not None else None,
    }
    folder = f"ensemble-{'+'.join(names)}-{metrics['evaluation']['split']}"
    out_dir = options.out_dir or run_dirs[0] / "eval" / folder
    write_predictions(out_dir / "predictions.csv", evaluated)
    atomic_write_json(out_dir / "metrics.json", metrics)
    return EvaluationResult(out_dir, metrics)
