"""Lesion-grouped K-fold cross-validation of one recipe (`lesionlab cv`): a less noisy validation figure to
choose recipes by, and the K fold models as one ensemble.

The split's train and val parts are pooled and cut into K lesion-grouped, class-stratified folds
(`data.split.fold_splits`); fold k trains on the other K-1 folds and validates on fold k, and every fold keeps
the split's test part, untouched. Each fold is an ordinary run folder (`RUN/fold-<k>`), trained, resumed or
skipped like a study's runs (`training.reuse`), then evaluated as `lesionlab evaluate` does: its temperature
fitted on its own fold, its validation and test parts scored with the same views.

Two figures come out of it:
- **out of fold**: every train + val image scored once, by the fold model that did not train on it
  (`RUN/out-of-fold/`). On HAM10000's seed-0 split that is 8,514 images (98 df and 121 vasc) instead of one
  validation part's 1,502 (17 and 21), so two recipes cross-validated on the same folds can be told apart by
  smaller differences. It is the figure to choose by; the test part is never used for a choice.
- **the fold ensemble on the test part**: the mean of the K models' probabilities, each under its temperature
  (`RUN/test/`), scored by `lesionlab.scoring`, the rule `RUN/model.json` deploys. Its malignancy threshold is
  fitted on the out-of-fold probabilities, the only validation figures the ensemble has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lesionlab.data.readers.samples import SampleTable
from lesionlab.data.split import Split, fold_splits, read_split, write_split
from lesionlab.errors import ConfigError
from lesionlab.evaluation.ensemble import ensemble_rule, member_temperature
from lesionlab.evaluation.evaluate import write_figures
from lesionlab.evaluation.metrics import (
    BOOTSTRAP_RESAMPLES,
    INTERVAL_METRICS,
    cluster_ids,
    compute_metrics,
    headline_metrics,
    paired_differences,
)
from lesionlab.evaluation.predictions import Predictions, read_predictions, write_predictions
from lesionlab.evaluation.report import number
from lesionlab.evaluation.reuse import part_scores
from lesionlab.evaluation.view_logits import LOGITS_FILE, ensemble_probabilities, read_view_logits
from lesionlab.inference.model_file import MODEL_FILE_NAME, write_model_file
from lesionlab.io_utils import atomic_write_json, atomic_write_text
from lesionlab.malignancy import DEFAULT_TARGET_SENSITIVITY, MalignancyRule
from lesionlab.tables import Table, format_table
from lesionlab.training.recipe import Recipe
from lesionlab.training.reuse import run_status, train_or_reuse
from lesionlab.views import IDENTITY

CV_JSON = "cv.json"
OUT_OF_FOLD = "out-of-fold"
"""The pooled out-of-fold part: its folder, and the `fitted_on` of the threshold fitted there."""
ENSEMBLE_TEST = "test"
RERUN_HINT = "rerun `lesionlab cv` with the recipe, --folds and split this folder was started with"


def fold_dir(folder: Path, fold: int) -> Path:
    """Where fold `fold`'s run lives."""
    return folder / f"fold-{fold}"


@dataclass(frozen=True)
class CrossValidation:
    """A cross-validation folder set up: its recipe, data, split and one split per fold."""

    folder: Path
    recipe: Recipe
    table: SampleTable
    split: Split
    folds: tuple[Split, ...]

    def unfinished(self) -> list[int]:
        """The folds whose runs have not finished training."""
        return [fold for fold in range(len(self.folds))
                if run_status(fold_dir(self.folder, fold)) != "finished"]


def prepare_cv(folder: Path, recipe: Recipe, table: SampleTable, split: Split, folds: int,
               given: bool = False) -> CrossValidation:
    """Make the folder with `split` and `cv.json` (the fold count and seed), or read them back on a rerun.

    A rerun refuses another fold count (its folds would differ from those its finished runs trained on),
    and a split the user gave (`given`) that is not the one the folder holds.
    """
    record_path, split_path = folder / CV_JSON, folder / "split.csv"
    if record_path.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record["folds"] != folds:
            raise ConfigError(f"{record_path}: this cross-validation was started with {record['folds']} "
                              f"folds, not {folds}; give --folds {record['folds']}, or another --name.")
        saved = read_split(split_path, table)
        if given and any({s.image_id for s in saved.parts[part]} != {s.image_id for s in split.parts[part]}
                         for part in saved.parts):
            raise ConfigError(f"{split_path}: this cross-validation was started on another split than the "
                              f"one given; drop --split to continue it, or give another --name.")
        split = saved
    else:
        folder.mkdir(parents=True, exist_ok=True)
        write_split(split_path, split)
        split = read_split(split_path, table)
        images = {part: len(samples) for part, samples in split.parts.items()}
        atomic_write_json(record_path, {"folds": folds, "fold_seed": split.seed, "images": images})
    return CrossValidation(folder, recipe, table, split, tuple(fold_splits(split, folds, split.seed)))


def train_folds(cv: CrossValidation, only: tuple[int, ...] = ()) -> None:
    """Train each fold (those of `only`, when given) unless it finished; resume a stopped one."""
    unknown = sorted(set(only) - set(range(len(cv.folds))))
    if unknown:
        raise ConfigError(f"--fold {', '.join(map(str, unknown))}: this cross-validation has folds "
                          f"0..{len(cv.folds) - 1}")
    for fold, split in enumerate(cv.folds):
        if not only or fold in only:
            train_or_reuse(f"fold-{fold}", cv.recipe, cv.table, split, fold_dir(cv.folder, fold), RERUN_HINT)


@dataclass(frozen=True)
class CrossValidationResult:
    """The figures `score_cv` wrote: each fold's, the out-of-fold and the fold ensemble's on the test part."""

    folder: Path
    fold_scores: tuple[dict[str, dict[str, Any]], ...]
    out_of_fold: dict[str, Any]
    test: dict[str, Any]

    def table(self) -> Table:
        """Per fold, then out of fold and the ensemble: the images scored and the headline figures."""
        def cells(name: str, metrics: dict[str, Any]) -> tuple[str, ...]:
            return (name, str(metrics["samples"]), f"{metrics['balanced_accuracy']:.3f}",
                    f"{metrics['macro_f1']:.3f}", f"{metrics['accuracy']:.3f}",
                    *(number(metrics["per_class"][code]["recall"], 2) for code in metrics["classes"]))

        codes = self.out_of_fold["classes"]
        rows = [cells(f"fold {fold}, its validation fold", scores["val"])
                for fold, scores in enumerate(self.fold_scores)]
        rows += [cells(f"fold {fold} alone, test part", scores["test"])
                 for fold, scores in enumerate(self.fold_scores)]
        rows += [cells("out of fold (every train + val image once)", self.out_of_fold),
                 cells(f"ensemble of the {len(self.fold_scores)} folds, test part", self.test)]
        return Table(("scored", "images", "bal acc", "macro F1", "accuracy", *(f"rec {c}" for c in codes)),
                     tuple(rows))


def _interval(metrics: dict[str, Any], name: str) -> str:
    bounds = metrics["confidence_intervals"][name]
    return f"{bounds['estimate']:.3f} ({bounds['low']:.3f}-{bounds['high']:.3f})"


def _write_part(out_dir: Path, predictions: Predictions, rule: MalignancyRule, title: str,
                evaluation: dict[str, Any]) -> dict[str, Any]:
    """predictions.csv, metrics.json and the figures of one pooled part."""
    metrics = {"evaluation": evaluation, **compute_metrics(predictions, malignancy=rule), "variants": {}}
    write_predictions(out_dir / "predictions.csv", predictions)
    metrics["figures"] = write_figures(out_dir, predictions, title, None, rule)
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def _scored(run: Path, part: str) -> Predictions:
    """One fold's evaluation on a part, its probabilities recomputed from the saved logits by the scoring
    rule (its views and temperature) rather than read back from predictions.csv, which rounds them."""
    evaluation = run / "eval" / part
    logits = read_view_logits(evaluation / LOGITS_FILE)
    return read_predictions(evaluation / "predictions.csv").with_probabilities(
        ensemble_probabilities([logits], [run.name]))


def score_cv(cv: CrossValidation, tta_views: tuple[str, ...] | None) -> CrossValidationResult:
    """Evaluate every fold (read back where done for the same weights and views), pool the out-of-fold
    predictions, score the fold ensemble on the test part, and write `cv.md` and `model.json`."""
    if cv.unfinished():
        raise ConfigError(f"{cv.folder}: fold(s) {', '.join(map(str, cv.unfinished()))} not trained yet; "
                          f"rerun `lesionlab cv` without --fold (or with those folds) to train them.")
    runs = [fold_dir(cv.folder, fold) for fold in range(len(cv.folds))]
    fold_scores = tuple(part_scores(run, tta_views) for run in runs)
    held_out = [_scored(run, "val") for run in runs]
    out_of_fold = Predictions(
        tuple(image for part in held_out for image in part.image_ids),
        tuple(lesion for part in held_out for lesion in part.lesion_ids),
        np.concatenate([part.labels for part in held_out]),
        np.concatenate([part.probabilities for part in held_out]),
        held_out[0].class_codes,
    )
    rule = ensemble_rule(out_of_fold, DEFAULT_TARGET_SENSITIVITY, fitted_on=OUT_OF_FOLD)
    names = [run.name for run in runs]
    logits = [read_view_logits(run / "eval" / "test" / LOGITS_FILE) for run in runs]
    first_test = read_predictions(runs[0] / "eval" / "test" / "predictions.csv")
    ensemble = first_test.with_probabilities(ensemble_probabilities(logits, names))
    described = {"folds": names, "tta_views": list(tta_views) if tta_views else None}
    oof_metrics = _write_part(cv.folder / OUT_OF_FOLD, out_of_fold, rule, f"{cv.folder.name}: out of fold",
                              {**described, "rule": "each image scored by the fold model that did not "
                               "train on it (its temperature), the folds pooled"})
    test_metrics = _write_part(cv.folder / ENSEMBLE_TEST, ensemble, rule, f"{cv.folder.name}: fold ensemble",
                               {**described, "rule": "mean of the fold models' probabilities (each with its "
                                "temperature)", "malignancy_threshold_fitted_on": OUT_OF_FOLD})
    write_model_file(cv.folder / MODEL_FILE_NAME, [(run, member_temperature(run)) for run in runs],
                     tta_views or (IDENTITY,), None, rule.fit)
    result = CrossValidationResult(cv.folder, fold_scores, oof_metrics, test_metrics)
    _write_summary(cv, result)
    return result


def _write_summary(cv: CrossValidation, result: CrossValidationResult) -> None:
    """cv.md, and the headline figures added to cv.json."""
    record_path = cv.folder / CV_JSON
    record = json.loads(record_path.read_text(encoding="utf-8"))
    headline = {name: {key: metrics[key] for key in ("samples", "balanced_accuracy", "macro_f1", "accuracy")}
                for name, metrics in ((OUT_OF_FOLD, result.out_of_fold), (ENSEMBLE_TEST, result.test))}
    atomic_write_json(record_path, {**record, "results": headline,
                                    "folds_val_balanced_accuracy": [scores["val"]["balanced_accuracy"]
                                                                    for scores in result.fold_scores]})
    folds = [scores["val"]["balanced_accuracy"] for scores in result.fold_scores]
    lines = [
        f"# Cross-validation {cv.folder.name}",
        "",
        f"{len(cv.folds)} lesion-grouped folds of the split's train + val parts "
        f"({result.out_of_fold['samples']} images), split seed {cv.split.seed}; recipe in "
        f"`fold-0/config.yaml`.",
        "",
        "- Out of fold (choose by this): balanced accuracy "
        f"{_interval(result.out_of_fold, 'balanced_accuracy')}, "
        f"macro F1 {_interval(result.out_of_fold, 'macro_f1')}; the folds' own validation figures range "
        f"{min(folds):.3f}-{max(folds):.3f} (standard deviation {float(np.std(folds, ddof=1)):.3f}).",
        f"- The {len(cv.folds)} fold models as one ensemble (`{MODEL_FILE_NAME}`), test part "
        f"({result.test['samples']} images, reported, never chosen by): balanced accuracy "
        f"{_interval(result.test, 'balanced_accuracy')}, macro F1 {_interval(result.test, 'macro_f1')}.",
        "",
        format_table(result.table()),
        "",
        f"Reports with figures: `{OUT_OF_FOLD}/`, `{ENSEMBLE_TEST}/`, and each `fold-<k>/eval/`.",
        "",
    ]
    atomic_write_text(cv.folder / "cv.md", "\n".join(lines))


def compare_cv(folder: Path, baseline: Path) -> Table:
    """This cross-validation's out-of-fold figures against another's on the same images, with paired
    bootstrap intervals of the differences (`metrics.paired_differences`, lesions resampled): the way to
    tell whether one recipe beats another. Saved as `compare-<baseline name>.json`; test figures are left
    out on purpose, as the choice is made out of fold. The intervals cover which images were drawn; each
    image's decision comes from one trained model, so a recipe's training noise is averaged over the folds
    but not removed."""
    ours = read_predictions(folder / OUT_OF_FOLD / "predictions.csv")
    path = baseline / OUT_OF_FOLD / "predictions.csv"
    if not path.is_file():
        raise ConfigError(f"{path}: no out-of-fold predictions to compare with; give a cross-validation "
                          f"folder that `lesionlab cv` has scored.")
    theirs = read_predictions(path)
    if sorted(theirs.image_ids) != sorted(ours.image_ids):
        raise ConfigError(f"{baseline}: its out-of-fold images are not this cross-validation's; compare "
                          f"cross-validations made on the same --split.")
    order = {image: index for index, image in enumerate(theirs.image_ids)}
    baseline_decisions = theirs.predicted[[order[image] for image in ours.image_ids]]
    clusters, unit = cluster_ids(ours.image_ids, ours.lesion_ids)
    differences = paired_differences(ours.labels, ours.predicted, baseline_decisions, clusters,
                                     len(ours.class_codes))
    atomic_write_json(folder / f"compare-{baseline.name}.json",
                      {"baseline": str(baseline), "images": len(ours.labels), "unit": unit,
                       "resamples": BOOTSTRAP_RESAMPLES, "differences": differences})
    rows = []
    for name in INTERVAL_METRICS:
        difference = differences[name]
        rows.append((name.replace("_", " "), f"{_metric(ours, name):.3f}", f"{_metric(theirs, name):.3f}",
                     f"{difference['estimate']:+.3f}",
                     f"{difference['low']:+.3f} to {difference['high']:+.3f}"))
    return Table(("out of fold", folder.name, baseline.name, "difference", "95% interval (paired)"),
                 tuple(rows))


def _metric(predictions: Predictions, name: str) -> float:
    return float(headline_metrics(predictions.labels, predictions.predicted)[name])
