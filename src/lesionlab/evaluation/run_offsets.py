"""Class offsets for one run, chosen on its validation part: the last step of `lesionlab run`.

A single model trained with logit adjustment still leans towards some classes on held-out images, and the
offsets of `lesionlab.evaluation.decision` correct that lean. They are fitted on the run's validation part,
so they are kept only where they help there out of fold: the mean balanced accuracy over
`CHOICE_FOLD_SEEDS` lesion-grouped fold assignments, each image scored by offsets fitted without its fold,
must beat the plain probabilities of the same images. A kept set is saved as `RUN/class-offsets.json`;
either way `RUN/model.json` names the run with its TTA views and temperature (and the offsets where kept),
which is what `predict`, `serve` and `export` then deploy. The choice and its figures go to
`RUN/class-offsets-choice.json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lesionlab.class_offsets import CLASS_OFFSETS_FILE, ClassOffsets, save_class_offsets
from lesionlab.evaluation.calibration import checkpoint_temperature
from lesionlab.evaluation.decision import fit_class_offsets, out_of_fold_offsets
from lesionlab.evaluation.ensemble import evaluate_model_file
from lesionlab.evaluation.evaluate import EvaluationOptions, EvaluationResult, evaluate_run
from lesionlab.evaluation.metrics import balanced_accuracy
from lesionlab.evaluation.predictions import Predictions, read_predictions
from lesionlab.inference.model_file import MODEL_FILE_NAME, resolve_model_file, write_model_file
from lesionlab.io_utils import atomic_write_json
from lesionlab.models.checkpoint import BEST_STEM, WEIGHTS_SUFFIX, read_card
from lesionlab.views import IDENTITY

OFFSETS_CHOICE_FILE = "class-offsets-choice.json"
CHOICE_FOLD_SEEDS = (0, 1, 2)
"""Three fold assignments: one assignment's balanced accuracy moves by a point with which df and vasc images
share a fold, and the choice should not hang on that."""


@dataclass(frozen=True)
class OffsetsChoice:
    """Validation balanced accuracy without offsets and out of fold with them (mean over the fold seeds), the
    offsets fitted on the whole validation part, and whether they were kept."""

    samples: int
    plain: float
    out_of_fold: tuple[float, ...]
    offsets: dict[str, float]
    kept: bool

    @property
    def out_of_fold_mean(self) -> float:
        """The figure the choice compares with `plain`."""
        return float(np.mean(self.out_of_fold))

    def describe(self) -> str:
        """One line for the console."""
        verdict = "kept" if self.kept else "not kept: they do not beat the plain decisions there"
        return (f"class offsets fitted on validation ({self.samples} images): balanced accuracy "
                f"{self.plain:.3f} plain, {self.out_of_fold_mean:.3f} out of fold with offsets -> {verdict}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON record, with the mean the choice was made on."""
        return {**asdict(self), "out_of_fold_mean": self.out_of_fold_mean,
                "rule": f"kept where the mean out-of-fold balanced accuracy over fold seeds "
                        f"{list(CHOICE_FOLD_SEEDS)} beats the plain one"}


def choose_offsets(validation: Predictions) -> OffsetsChoice:
    """Fit offsets on these validation predictions and decide, out of fold, whether they help."""
    plain = balanced_accuracy(validation.labels, validation.predicted)
    folded = tuple(
        balanced_accuracy(validation.labels, out_of_fold_offsets(validation, seed=seed).predicted)
        for seed in CHOICE_FOLD_SEEDS
    )
    offsets = fit_class_offsets(validation.probabilities, validation.labels)
    return OffsetsChoice(len(validation.labels), plain, folded,
                         dict(zip(validation.class_codes, offsets.round(6).tolist(), strict=True)),
                         kept=float(np.mean(folded)) > plain)


@dataclass(frozen=True)
class RunModel:
    """What the step wrote: the choice, `model.json`, and its test evaluation where the offsets were kept
    (without them the model file scores as the run's own TTA evaluation)."""

    choice: OffsetsChoice
    model_file: Path
    evaluation: EvaluationResult | None


def write_run_model(run_dir: Path, tta_views: tuple[str, ...] | None) -> RunModel:
    """Evaluate the run's validation part as its test part was scored (TTA views, temperature), choose the
    class offsets there, write `model.json`, and score it on the test part where the offsets were kept."""
    result = evaluate_run(run_dir, EvaluationOptions(split="val", tta_views=tta_views))
    choice = choose_offsets(read_predictions(result.out_dir / "predictions.csv"))
    atomic_write_json(run_dir / OFFSETS_CHOICE_FILE, choice.to_dict())
    offsets_path = None
    if choice.kept:
        run_name = read_card(run_dir / BEST_STEM).run_name
        offsets_path = save_class_offsets(run_dir / CLASS_OFFSETS_FILE, ClassOffsets(
            tuple(choice.offsets), tuple(choice.offsets.values()), "val", (run_name,), choice.samples))
    else:
        (run_dir / CLASS_OFFSETS_FILE).unlink(missing_ok=True)
    fit = checkpoint_temperature((run_dir / BEST_STEM).with_suffix(WEIGHTS_SUFFIX))
    model_file = write_model_file(run_dir / MODEL_FILE_NAME, [(run_dir, fit.temperature if fit else None)],
                                  tta_views or (IDENTITY,), offsets_path)
    evaluation = None
    if choice.kept:
        evaluation = evaluate_model_file(resolve_model_file(model_file), EvaluationOptions(split="test"))
    return RunModel(choice, model_file, evaluation)
