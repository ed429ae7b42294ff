"""A study's rows: each run's checkpoints evaluated on val and test, ensembles and decision rules scored from
the members' saved logits (`lesionlab.scoring`, the function a deployed model applies); every row carries
the validation score it is chosen by."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lesionlab.class_offsets import (
    CLASS_OFFSETS_FILE,
    ClassOffsets,
    apply_class_offsets,
    save_class_offsets,
)
from lesionlab.evaluation.decision import fit_class_offsets, lesion_mean, out_of_fold_offsets
from lesionlab.evaluation.metrics import compute_metrics
from lesionlab.evaluation.predictions import Predictions, read_predictions, write_predictions
from lesionlab.evaluation.reuse import part_scores
from lesionlab.evaluation.view_logits import LOGITS_FILE, ViewLogits, ensemble_probabilities, read_view_logits
from lesionlab.io_utils import atomic_write_json
from lesionlab.study.schema import (
    CLASS_OFFSETS,
    DECISION_LABELS,
    DECISION_NOTES,
    LESION_MEAN,
    Ensemble,
    Study,
    StudyRun,
    views,
)
from lesionlab.training.recipe import Recipe
from lesionlab.training.rundir import RunDirectory, epoch_seconds


def _evaluations(study: Study, recipe: Recipe, run_dir: Path) -> list[tuple[int | None, Path | None]]:
    """(stage, checkpoint stem) pairs: the run's best model, or each stage's best when the study asks."""
    if not study.stages_separately or len(recipe.stages) == 1:
        return [(None, None)]
    run = RunDirectory(run_dir)
    return [(stage, run.stage_best(stage)) for stage in range(1, len(recipe.stages) + 1)]


def _row(name: str, label: str, metrics: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    recall = {f"recall_{code}": row["recall"] for code, row in metrics["per_class"].items()}
    return {
        "run": name,
        "label": label,
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "macro_f1": metrics["macro_f1"],
        "auc_macro": metrics.get("roc_auc_macro"),
        **recall,
        **extra,
    }


def training_effort(run_dir: Path, stage: int | None) -> tuple[float, float | None]:
    """Minutes spent training to reach a stage's model (the whole run when None), and the mean training
    images/s of that stage (of the last stage when None: the stage that made the run's model)."""
    with (run_dir / "history.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    last = stage or max(int(row["stage"]) for row in rows)
    speeds = [float(row["images_per_s"]) for row in rows if int(row["stage"]) == last and row["images_per_s"]]
    minutes = sum(epoch_seconds(row) for row in rows if int(row["stage"]) <= last) / 60
    return round(minutes, 1), (float(np.mean(speeds)) if speeds else None)


VAL_PREDICTIONS = "val_predictions"
"""Row key: the row's validation predictions, relative to the study folder (compared in `output`)."""
VAL_PREDICTIONS_FILE = "val-predictions.csv"
"""An ensemble or decision row's validation predictions, beside its metrics.json."""

WITHHELD_SUFFIX = "-no-metadata"
"""Row name and eval folder suffix of a metadata model scored with every patient field withheld."""


def evaluate_study_run(study: Study, run: StudyRun, recipe: Recipe, run_dir: Path) -> list[dict[str, Any]]:
    """Evaluate each chosen checkpoint of a trained run on the validation part (the column a reader picks
    by) and on the test part (reported), both with the study's test-time augmentation; one row each, and
    for a metadata model a second row with every patient field withheld (what a prediction without them
    gets; never the recommended row, since the model file would then be scored with the fields). An
    evaluation already on disk for the same weights and views is read back, not repeated."""
    rows = []
    for stage, stem in _evaluations(study, recipe, run_dir):
        tag = f"-stage{stage}" if stage else ""
        minutes, speed = training_effort(run_dir, stage)
        suffix = f" / stage {stage}" if stage else ""
        for metadata in (True, False) if recipe.metadata is not None else (True,):
            variant = tag + ("" if metadata else WITHHELD_SUFFIX)
            scores = part_scores(run_dir, views(study), stem, variant, metadata)
            metrics = scores["test"]
            extra = {
                "val_balanced_accuracy": scores["val"]["balanced_accuracy"],
                "val_macro_f1": scores["val"]["macro_f1"],
                "arch": recipe.arch,
                "pretrained": recipe.pretrained if recipe.pretrained in ("imagenet", "none") else "file",
                "image_size": recipe.image_size,
                "parameters": metrics["model"]["parameters"],
                "train_minutes": minutes,
                "train_images_per_s": speed,
                "report": (run_dir / "eval" / f"test{variant}" / "report.md")
                .relative_to(run_dir.parent).as_posix(),
                VAL_PREDICTIONS: (run_dir / "eval" / f"val{variant}" / "predictions.csv")
                .relative_to(run_dir.parent).as_posix(),
                "note": run.note if metadata else "every patient field withheld (`evaluate --no-metadata`)",
                "fields_withheld": not metadata,
            }
            label = run.label + suffix + ("" if metadata else ", fields withheld")
            rows.append(_row(run.name + variant, label, metrics, extra))
    return rows


@dataclass(frozen=True)
class EnsemblePart:
    """An ensemble's members evaluated on one part: their logits, and the first member's predictions (for
    the image ids, lesion ids and labels every member shares)."""

    members: tuple[str, ...]
    logits: tuple[ViewLogits, ...]
    predictions: Predictions

    def scored(self, class_offsets: np.ndarray | None = None) -> Predictions:
        """The ensemble's predictions, scored from the logits by the rule a deployed model applies."""
        offsets = None if class_offsets is None else tuple(class_offsets.tolist())
        return self.predictions.with_probabilities(
            ensemble_probabilities(self.logits, self.members, offsets))


def ensemble_part(ensemble: Ensemble, folder: Path, part: str) -> EnsemblePart:
    """The members' evaluations on one part (`test` or `val`), read from their eval folders."""
    evaluations = [folder / member / "eval" / part for member in ensemble.members]
    return EnsemblePart(ensemble.members,
                        tuple(read_view_logits(evaluation / LOGITS_FILE) for evaluation in evaluations),
                        read_predictions(evaluations[0] / "predictions.csv"))


def predictions_row(
    name: str, label: str, val: Predictions, test: Predictions, out_dir: Path, extra: dict[str, Any]
) -> dict[str, Any]:
    """Measure predictions on the test part, with the validation score beside it for choosing honestly;
    `out_dir/metrics.json` keeps both in full."""
    metrics = compute_metrics(test)
    validation = compute_metrics(val)
    atomic_write_json(out_dir / "metrics.json", {**extra, **metrics, "validation": validation})
    write_predictions(out_dir / VAL_PREDICTIONS_FILE, val)
    scores = {
        "val_balanced_accuracy": validation["balanced_accuracy"],
        "val_macro_f1": validation["macro_f1"],
        VAL_PREDICTIONS: f"{out_dir.name}/{VAL_PREDICTIONS_FILE}",
    }
    return _row(name, label, metrics, {**scores, **extra})


def ensemble_row(ensemble: Ensemble, folder: Path) -> dict[str, Any]:
    """The ensemble's averaged probabilities measured on the test part."""
    extra = {
        "members": list(ensemble.members),
        "arch": "+".join(ensemble.members),
        "note": f"mean of the probabilities of {', '.join(ensemble.members)}",
    }
    return predictions_row(
        f"ensemble-{ensemble.name}",
        ensemble.label,
        ensemble_part(ensemble, folder, "val").scored(),
        ensemble_part(ensemble, folder, "test").scored(),
        folder / f"ensemble-{ensemble.name}",
        extra,
    )


def decision_variants(decisions: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The combinations of decision rules a study reports: each rule alone, then all of them together."""
    variants = [(rule,) for rule in decisions]
    return [*variants, decisions] if len(decisions) > 1 else variants


def decision_rows(study: Study, ensemble: Ensemble, folder: Path) -> list[dict[str, Any]]:
    """One row per decision variant of an ensemble. Class offsets are fitted on the whole validation part and
    applied to the test part, while the validation column scores them out of fold; lesion averaging runs
    before the offsets are fitted, so they are fitted to the decisions they will correct. The per-image
    offsets are saved as `class-offsets.json`, which `predict --class-offsets` and `serve` apply."""
    rows = []
    parts = {part: ensemble_part(ensemble, folder, part) for part in ("val", "test")}
    for rules in decision_variants(study.decisions):
        val, test = parts["val"].scored(), parts["test"].scored()
        if LESION_MEAN in rules:
            val, test = lesion_mean(val), lesion_mean(test)
        extra: dict[str, Any] = {"members": list(ensemble.members), "decisions": list(rules)}
        name = f"ensemble-{ensemble.name}+" + "+".join(rules)
        if CLASS_OFFSETS in rules:
            offsets = fit_class_offsets(val.probabilities, val.labels)
            extra["class_offsets"] = dict(zip(val.class_codes, offsets.round(4).tolist(), strict=True))
            if LESION_MEAN not in rules:
                record = ClassOffsets(val.class_codes, tuple(offsets.tolist()), "val", ensemble.members,
                                      len(val.labels))
                save_class_offsets(folder / name / CLASS_OFFSETS_FILE, record)
            test = (test.with_probabilities(apply_class_offsets(test.probabilities, offsets))
                    if LESION_MEAN in rules else parts["test"].scored(offsets))
            val = out_of_fold_offsets(val)
        extra["note"] = "; ".join(DECISION_NOTES[rule] for rule in rules)
        extra["lesion_level"] = LESION_MEAN in rules
        label = f"{ensemble.label} + " + " + ".join(DECISION_LABELS[rule] for rule in rules)
        rows.append(predictions_row(name, label, val, test, folder / name, extra))
    return rows
