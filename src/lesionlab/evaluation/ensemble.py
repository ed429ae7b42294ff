"""Evaluate an ensemble of runs: each member scored as `lesionlab evaluate` does, the probabilities averaged.

Each member is evaluated with its own preprocessing, TTA views and temperature (its most enhanced variant), on
the same images, and the ensemble scores the members' saved logits with `lesionlab.scoring`, the function
`lesionlab predict --ensemble` applies. The malignant/benign threshold is fitted on the same mean over the
validation part of the first member's split (never on the evaluated part), so the ensemble is judged by the
rule it would be deployed with. Members must share the split: the validation figure printed beside the
test figure is what an ensemble is chosen by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lesionlab.class_offsets import load_class_offsets
from lesionlab.data.split import read_part_ids
from lesionlab.errors import CheckpointError, ConfigError
from lesionlab.evaluation.calibration import checkpoint_temperature
from lesionlab.evaluation.evaluate import EvaluationOptions, EvaluationResult, evaluate_run
from lesionlab.evaluation.metrics import compute_metrics, fit_malignancy_threshold
from lesionlab.evaluation.predictions import Predictions, read_predictions, write_predictions
from lesionlab.evaluation.view_logits import LOGITS_FILE, ensemble_probabilities, read_view_logits
from lesionlab.inference.backends import ONNX_SUFFIX, OPENVINO_SUFFIX, checkpoint_weights_path
from lesionlab.inference.model_file import ResolvedModel, record_threshold
from lesionlab.io_utils import atomic_write_json
from lesionlab.malignancy import FALLBACK_RULE, MalignancyRule, ThresholdFit
from lesionlab.training.rundir import RunDirectory

ENSEMBLE_SHA256 = "ensemble"


@dataclass(frozen=True)
class MemberScoring:
    """How an ensemble's members are evaluated and scored: each member's options (its TTA views and whether
    its temperature applies) and the class offsets applied after the members' mean."""

    options: tuple[EvaluationOptions, ...]
    class_offsets: tuple[float, ...] | None = None


def ensemble_predictions(run_dirs: Sequence[Path], scoring: MemberScoring,
                         split: str | None = None) -> Predictions:
    """Evaluate every member into its own eval folder (its predictions.csv and logits.safetensors, on
    `split` when given), then score the members' logits by `view_logits.ensemble_probabilities`, the rule
    `lesionlab predict` applies to the same members; the first member gives the image ids, lesions and
    labels."""
    logits, predictions = [], []
    for run_dir, options in zip(run_dirs, scoring.options, strict=True):
        result = evaluate_run(run_dir, replace(options, out_dir=None, split=split or options.split))
        # read at once: two checkpoints of one run are evaluated into the same folder
        logits.append(read_view_logits(result.out_dir / LOGITS_FILE))
        predictions.append(read_predictions(result.out_dir / "predictions.csv"))
    names = [run_dir.name for run_dir in run_dirs]
    return predictions[0].with_probabilities(ensemble_probabilities(logits, names, scoring.class_offsets))


def member_temperature(member: Path) -> float | None:
    """The temperature a member (a run directory or a checkpoint) applies now: the one saved beside its
    weights for exactly those weights, else None. What a model file records per member."""
    fit = checkpoint_temperature(checkpoint_weights_path(member))
    return fit.temperature if fit else None


def ensemble_rule(validation: Predictions | None, target_sensitivity: float,
                  recorded: ThresholdFit | None = None, fitted_on: str = "val") -> MalignancyRule:
    """The malignant threshold fitted on the ensemble's validation probabilities; without them (other data
    than the members' own), the threshold a model file recorded from its own validation part, which is the
    rule `predict` and `serve` flag with; else the fallback."""
    if validation is None:
        return FALLBACK_RULE if recorded is None else MalignancyRule(recorded.threshold, recorded)
    fit = fit_malignancy_threshold(validation.probabilities, validation.labels, validation.class_codes,
                                   target_sensitivity, fitted_on, None, ENSEMBLE_SHA256)
    return MalignancyRule(fit.threshold, fit) if fit is not None else FALLBACK_RULE


def share_validation(run_dirs: Sequence[Path]) -> bool:
    """Whether the members' splits hold the same validation part. The folds of a cross-validation
    (`lesionlab cv`) do not: their ensemble keeps the malignancy threshold its model file recorded, fitted
    on the out-of-fold predictions."""
    return len({read_part_ids(RunDirectory(run_dir).split, "val") for run_dir in run_dirs}) == 1


def evaluate_ensemble(run_dirs: Sequence[Path], options: EvaluationOptions,
                      scoring: MemberScoring | None = None, out_dir: Path | None = None,
                      model_file: ResolvedModel | None = None) -> EvaluationResult:
    """Score the members together; write predictions.csv and metrics.json. `scoring` defaults to every
    member under `options` without offsets (`evaluate RUN --ensemble RUN2`); a `model.json` gives its own
    (`evaluate_model_file`), and `model_file` names it in metrics.json and gives its recorded malignancy
    threshold to data that has no validation part of the members' split.

    Output: `options.out_dir`, else `out_dir`, else `<first member>/eval/ensemble-<members>-<split>`.
    """
    names = [run_dir.name for run_dir in run_dirs]
    scoring = scoring or MemberScoring(tuple(options for _ in run_dirs))
    own_validation = share_validation(run_dirs)
    if options.data is None and options.split == "val" and not own_validation:
        raise ConfigError(f"{', '.join(map(str, run_dirs))}: these members validated on different parts "
                          f"(the folds of a cross-validation), so each trained on the others' validation "
                          f"images; read their out-of-fold figures in the cross-validation folder "
                          f"(out-of-fold/metrics.json), or evaluate the test part or other data.")
    evaluated = ensemble_predictions(run_dirs, scoring)
    validation = None
    if options.data is None and (options.split or "test") != "val" and own_validation:
        validation = ensemble_predictions(run_dirs, scoring, split="val")
    rule = ensemble_rule(validation, options.malignant_sensitivity,
                         None if model_file is None else model_file.malignancy)
    metrics: dict[str, Any] = {
        "evaluation": {"members": [str(run_dir) for run_dir in run_dirs], "data": str(options.data or "own"),
                       "split": options.split or ("test" if options.data is None else "all"),
                       "tta_views": list(options.tta_views) if options.tta_views else None,
                       "model_file": None if model_file is None else str(model_file.source),
                       "class_offsets": (None if scoring.class_offsets is None
                                         else list(scoring.class_offsets)),
                       "rule": ("the member's probabilities (with its temperature)" if len(run_dirs) == 1
                                else "mean of the members' probabilities (each with its temperature)")
                               + ("" if scoring.class_offsets is None else ", then the class offsets")},
        **compute_metrics(evaluated, malignancy=rule),
        "variants": {},
        "validation": compute_metrics(validation) if validation is not None else None,
    }
    folder = f"ensemble-{'+'.join(names)}-{metrics['evaluation']['split']}"
    out_dir = options.out_dir or out_dir or run_dirs[0] / "eval" / folder
    write_predictions(out_dir / "predictions.csv", evaluated)
    atomic_write_json(out_dir / "metrics.json", metrics)
    return EvaluationResult(out_dir, metrics)


def evaluate_model_file(model: ResolvedModel, options: EvaluationOptions) -> EvaluationResult:
    """Evaluate what a checked `model.json` deploys: its members (run directories or checkpoints) under its
    views, each with the temperature the file recorded, then its class offsets. A member whose evaluation
    applied another temperature than the file recorded is refused, as `predict` refuses it. The malignancy
    threshold fitted on the validation part (own data, a part other than val) is recorded in the model file,
    so `predict`, `serve` and `lesionlab.load` flag malignant as this evaluation measured. Output:
    `options.out_dir`, else `<model file folder>/eval/<model file stem>-<split>`."""
    for member, recorded in zip(model.members, model.temperatures, strict=True):
        if member.suffix.lower() in (ONNX_SUFFIX, OPENVINO_SUFFIX):
            raise ConfigError(f"{model.source}: {member} is an exported file; evaluate needs the PyTorch "
                              f"members (run directories), so write the model file from the runs.")
        applied = member_temperature(member)
        if applied != recorded:
            raise CheckpointError(f"{model.source}: {member} now applies temperature {applied}, not the "
                                  f"{recorded} the model file recorded; write the model file again.")
    views = model.views if len(model.views) > 1 else None
    member_options = tuple(replace(options, tta_views=views, calibrate=temperature is not None,
                                   checkpoint=None if member.is_dir() else member)
                           for member, temperature in zip(model.members, model.temperatures, strict=True))
    offsets = None if model.class_offsets is None else load_class_offsets(model.class_offsets).offsets
    run_dirs = [member if member.is_dir() else member.parent for member in model.members]
    split = options.split or ("test" if options.data is None else "all")
    result = evaluate_ensemble(run_dirs, replace(options, tta_views=views),
                               MemberScoring(member_options, offsets),
                               model.source.parent / "eval" / f"{model.source.stem}-{split}", model)
    fit = result.metrics["malignancy"]["threshold_fit"]
    if fit is not None and options.data is None:
        record_threshold(model.source, ThresholdFit(**fit))
    return result
