"""Evaluate a run's best model on a part of a dataset and write everything a reader needs to trust it.

`evaluate_run` is the whole step (load model, pick samples, infer, calibrate, measure, report);
`write_evaluation` is its second half, from predictions to files, so reports can be produced and tested
without a model. Output folder: `RUN/eval/<dataset-name>-<split>/` holding `predictions.csv`,
`metrics.json`, `report.md`, `report.html` and `figures/*.png`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from lesionlab.data.cache import DecodedImageCache
from lesionlab.data.dataset import LesionDataset
from lesionlab.data.readers.samples import Sample, SampleTable
from lesionlab.data.split import Split
from lesionlab.data.transforms import eval_transform
from lesionlab.device import pick_device
from lesionlab.errors import ConfigError, DataError
from lesionlab.evaluation import plots
from lesionlab.evaluation.calibration import (
    TemperatureFit,
    fit_temperature_record,
    load_temperature,
    save_temperature,
    temperature_path,
)
from lesionlab.evaluation.inference import InferenceSettings, infer_view_logits
from lesionlab.evaluation.metrics import (
    compute_metrics,
    fit_malignancy_threshold,
    reliability_bins,
    variant_metrics,
)
from lesionlab.evaluation.predictions import Predictions, write_predictions
from lesionlab.evaluation.report import MALIGNANCY_ROC_CAPTION, build_report, render_html, render_markdown
from lesionlab.evaluation.sources import (
    EvaluationData,
    model_labels,
    read_run_recipe,
    select_evaluation_data,
)
from lesionlab.evaluation.summary import data_summary, model_summary
from lesionlab.evaluation.view_logits import LOGITS_FILE, ViewLogits, write_view_logits
from lesionlab.forward_backend import (
    TORCH,
    EngineCheck,
    check_backend_choice,
    forward_engine,
    loader_workers,
)
from lesionlab.io_utils import atomic_write_json, atomic_write_text, file_sha256
from lesionlab.malignancy import (
    DEFAULT_TARGET_SENSITIVITY,
    FALLBACK_RULE,
    FALLBACK_THRESHOLD,
    MalignancyRule,
    rule_for,
    save_threshold,
    threshold_path,
)
from lesionlab.model_card import write_model_card
from lesionlab.models.checkpoint import (
    BEST_STEM,
    WEIGHTS_SUFFIX,
    ModelCard,
    checkpoint_stem,
    load_checkpoint,
    load_run,
)
from lesionlab.models.freeze import block_modules, resolve_plan
from lesionlab.models.metadata_model import MetadataDataset
from lesionlab.models.pixel_input import PixelInput
from lesionlab.models.registry import architecture
from lesionlab.precision import PARITY_IMAGES, ParityCheck, parity_from_logits, resolve_precision
from lesionlab.run_json import read_run_json
from lesionlab.scoring import Scoring, softmax
from lesionlab.training.recipe import Recipe
from lesionlab.views import IDENTITY

FIGURES_DIR = "figures"


def variant_probabilities(
    view_logits: np.ndarray, use_tta: bool, temperature: float | None
) -> dict[str, np.ndarray]:
    """Class probabilities without and with each requested option, most enhanced last.

    `view_logits` is (N, views, classes) with the identity view first, so one inference pass gives both the
    plain and the TTA probabilities; each variant is a `Scoring` of them (the rule a deployed model applies).
    """
    plain, calibrated = Scoring((None,)), Scoring((temperature,))
    variants = {"plain": plain.probabilities([view_logits[:, :1]])}
    if use_tta:
        variants["tta"] = plain.probabilities([view_logits])
    if temperature is not None:
        variants["temperature"] = calibrated.probabilities([view_logits[:, :1]])
        if use_tta:
            variants["tta+temperature"] = calibrated.probabilities([view_logits])
    return variants


def write_figures(
    out_dir: Path, predictions: Predictions, title: str, history: Path | None,
    malignancy: MalignancyRule = FALLBACK_RULE,
) -> dict[str, str]:
    """Draw the report's figures into `out_dir/figures`; return caption -> path relative to `out_dir`."""
    figures_dir = out_dir / FIGURES_DIR
    labels, probabilities, codes = predictions.labels, predictions.probabilities, predictions.class_codes
    drawn: dict[str, Path] = {}
    if history is not None and history.is_file():
        drawn["Training curves per stage: loss, accuracy, balanced accuracy and macro F1"] = (
            plots.plot_training_curves(history, figures_dir / "training-curves.png")
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
    drawn[MALIGNANCY_ROC_CAPTION] = plots.plot_malignancy_roc(
        labels, probabilities, codes, malignancy, title, figures_dir / "malignancy-roc.png"
    )
    return {caption: path.relative_to(out_dir).as_posix() for caption, path in drawn.items()}


def write_evaluation(
    out_dir: Path,
    variants: dict[str, Predictions],
    evaluation: dict[str, Any],
    data: dict[str, Any],
    model: dict[str, Any],
    history: Path | None,
    malignancy: MalignancyRule = FALLBACK_RULE,
) -> dict[str, Any]:
    """Measure the most enhanced variant (the last), compare all variants, and write every output file.

    `evaluation` describes where the predictions came from (run, dataset, split, options); `data` and
    `model` are the summaries from `lesionlab.evaluation.summary`; `malignancy` is the malignant/benign
    rule fitted on validation (or the fallback). Returns the metrics.json payload.
    """
    primary_name = list(variants)[-1]
    primary = variants[primary_name]
    metrics = {
        "evaluation": {
            **evaluation,
            "variant": primary_name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        **compute_metrics(primary, malignancy=malignancy),
        "variants": {name: variant_metrics(predictions) for name, predictions in variants.items()},
        "data": data,
        "model": model,
    }
    write_predictions(out_dir / "predictions.csv", primary)
    atomic_write_json(out_dir / "metrics.json", metrics)
    title = f"{evaluation['run']} on {evaluation['dataset']}-{evaluation['split']}"
    report = build_report(metrics, write_figures(out_dir, primary, title, history, malignancy))
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    atomic_write_text(out_dir / "report.html", render_html(report, out_dir))
    return metrics


@dataclass(frozen=True)
class EvaluationOptions:
    """What to evaluate and how: the CLI flags of `lesionlab evaluate`.

    `data=None` evaluates the run's own split (`split` defaults to `test`); other data is evaluated whole
    unless it carries a split. `tta_views=None` turns TTA off. `device=None` uses the run's recipe device,
    `precision=None` its recipe precision (`auto`: bf16 where it agrees with fp32 on the run's val images).
    `checkpoint` picks another checkpoint of the run (e.g. `RUN/stage1-best`) than its best model.
    `malignant_sensitivity` is the sensitivity the malignancy threshold is chosen for on validation.
    """

    data: str | Path | None = None
    fmt: str | None = None
    split: str | None = None
    tta_views: tuple[str, ...] | None = None
    calibrate: bool = True
    out_dir: Path | None = None
    device: str | None = None
    checkpoint: Path | None = None
    precision: str | None = None
    forward_backend: str | None = None
    """The engine of the fp32 passes (`lesionlab.forward_backend`); None: the run's recipe's."""
    malignant_sensitivity: float = DEFAULT_TARGET_SENSITIVITY
    metadata: bool = True
    """False scores a metadata model with every patient field withheld (encoded as missing)."""


@dataclass(frozen=True)
class EvaluationResult:
    """Where the evaluation was written and its metrics.json payload."""

    out_dir: Path
    metrics: dict[str, Any]


def image_dataset(
    samples: list[Sample], table: SampleTable, card: ModelCard, use_cache: bool, withhold: bool = False
) -> LesionDataset:
    """The samples as the model's pipeline delivers them (pixels, gray where its card says; the model behind
    `PixelInput.normalising` normalises them), read from the decoded-image cache when enabled.

    The cache is keyed by `table` (all of whose images it holds), so evaluating the run's own data reuses the
    cache its training built. A metadata model's items carry each sample's encoded fields (all missing with
    `withhold`).
    """
    cache = None
    if use_cache:
        cache = DecodedImageCache(table.fingerprint, card.input_size)
        cache.ensure(table.samples)
    dataset = LesionDataset(samples, card.input_size, eval_transform(card.input_size, card.grayscale), cache)
    if card.metadata is None:
        return dataset
    return MetadataDataset(dataset, card.metadata["fields"], withhold)


ValidationLogits = Callable[[], tuple[np.ndarray, np.ndarray]]


def validation_logits(
    run_dir: Path,
    model: PixelInput,
    card: ModelCard,
    selection: EvaluationData,
    settings: InferenceSettings,
    use_cache: bool,
    checks: list[EngineCheck] | None = None,
) -> ValidationLogits:
    """Single-view logits and labels of the run's validation part, inferred on first use and then kept, so
    the fits made on validation (temperature, malignancy threshold) share one pass (its engine check
    appended to `checks`)."""

    @functools.cache
    def infer() -> tuple[np.ndarray, np.ndarray]:
        validation = selection.run_split.parts["val"]
        if not validation:
            return np.zeros((0, len(card.classes))), np.zeros(0, dtype=np.int64)
        dataset = image_dataset(validation, selection.run_table, card, use_cache)
        logits = infer_view_logits(model, dataset, settings, (IDENTITY,), "fits on val", checks)[:, 0]
        return logits, model_labels(validation, card.classes, run_dir / "split.csv")

    return infer


def ensure_temperature(stem: Path, validation: ValidationLogits) -> TemperatureFit:
    """The temperature of the checkpoint `stem`: read from `<stem>.temperature.json`, else fitted on the
    run's validation part (never the test part) and saved there."""
    checkpoint = stem.with_suffix(WEIGHTS_SUFFIX)
    path = temperature_path(stem)
    fit = load_temperature(path, checkpoint)
    if fit is None:
        logits, labels = validation()
        fit = fit_temperature_record(logits, labels, "val", checkpoint)
        save_temperature(path, fit)
    return fit


def ensure_malignancy_rule(
    stem: Path, validation: ValidationLogits, classes: tuple[str, ...], temperature: float | None,
    target_sensitivity: float,
) -> MalignancyRule:
    """The malignant/benign rule of the checkpoint `stem` under `temperature`: the threshold in
    `<stem>.malignancy.json` where it was fitted for these weights, this temperature and this sensitivity,
    else fitted on the run's validation part (never the test part) and saved there; the stated fallback
    where validation lacks malignant or benign images."""
    checkpoint = stem.with_suffix(WEIGHTS_SUFFIX)
    path = threshold_path(stem)
    digest = file_sha256(checkpoint)
    rule = rule_for(path, digest, temperature)
    if rule.fit is not None and rule.fit.target_sensitivity == target_sensitivity:
        return rule
    logits, labels = validation()
    probabilities = softmax(logits, temperature)
    fit = fit_malignancy_threshold(probabilities, labels, classes, target_sensitivity, "val", temperature,
                                   digest)
    if fit is None:
        return MalignancyRule(FALLBACK_THRESHOLD,
                              reason="the validation part lacks malignant or benign images")
    save_threshold(path, fit)
    return MalignancyRule(fit.threshold, fit)


def describe_variant(views: tuple[str, ...], fit: TemperatureFit | None) -> str:
    """How the reported probabilities were made, in words."""
    source = (
        f"mean probability over {len(views)} views ({', '.join(views)})" if len(views) > 1 else "single view"
    )
    return f"{source}, temperature {fit.temperature:.3f}" if fit else f"{source}, uncalibrated softmax"


def calibration_note(views: tuple[str, ...], fit: TemperatureFit | None, split: str, own_data: bool) -> str:
    """What TTA and the temperature are and where the temperature came from, with a caution where it leaks."""
    notes = []
    if len(views) > 1:
        notes.append(f"TTA averages the class probabilities of {len(views)} views: {', '.join(views)}.")
    if fit is None:
        notes.append("Temperature scaling is off (--no-calibration).")
        return " ".join(notes)
    notes.append(
        f"Temperature T = {fit.temperature:.3f} was fitted on the run's validation part ({fit.samples} "
        f"images; NLL {fit.nll_before:.3f} -> {fit.nll_after:.3f}), never on test data. It rescales "
        f"confidence without changing any single-view decision."
    )
    if own_data and split in ("val", "all"):
        notes.append(
            "Caution: the evaluated images include that validation part, so calibration looks better "
            "here than it will on new data."
        )
    return " ".join(notes)


def malignancy_note(rule: MalignancyRule, views: tuple[str, ...], split: str, own_data: bool) -> str:
    """Where the malignant/benign threshold came from, with a caution where it was fitted on these images
    or on other probabilities than the evaluated ones."""
    notes = [f"Malignant vs benign: {rule.description}."]
    if rule.fitted and len(views) > 1:
        notes.append("The threshold was fitted on single-view validation probabilities and is applied here "
                     "to the mean over the TTA views.")
    if rule.fitted and own_data and split in ("val", "all"):
        notes.append("Caution: the evaluated images include the validation part the threshold was chosen "
                     "on, so its sensitivity here is optimistic.")
    return " ".join(notes)


def training_overlap(samples: list[Sample], run_split: Split) -> dict[str, int]:
    """How many evaluated images, and lesions, the run trained on: non-zero means optimistic metrics."""
    train = run_split.parts["train"]
    train_images = {sample.image_id for sample in train}
    train_lesions = {sample.lesion_id for sample in train if sample.lesion_id}
    return {
        "images": sum(sample.image_id in train_images for sample in samples),
        "lesions": len({sample.lesion_id for sample in samples if sample.lesion_id in train_lesions}),
    }


def trainable_parameters(model: nn.Module, card: ModelCard, recipe: Recipe) -> int:
    """Parameters the checkpoint's stage trained, from that stage's freeze plan in the run's recipe."""
    spec = architecture(card.arch)
    stage = recipe.stages[card.stage - 1]
    plan = resolve_plan(stage.trainable, spec, stage.bn)
    return sum(
        parameter.numel()
        for name, block in block_modules(model, spec)
        if plan.trains(name)
        for parameter in block.parameters()
    )


def validation_parity(model: PixelInput, card: ModelCard, selection: EvaluationData,
                      settings: InferenceSettings, use_cache: bool) -> ParityCheck:
    """bf16 against fp32 on up to `PARITY_IMAGES` images of the run's validation part (never test); a
    release fit, which has none, is checked on training images (parity measures arithmetic, not skill)."""
    validation = selection.run_split.parts["val"] or selection.run_split.parts["train"]
    spread = np.linspace(0, len(validation) - 1, min(PARITY_IMAGES, len(validation))).astype(int)
    samples = [validation[int(index)] for index in spread]
    dataset = image_dataset(samples, selection.run_table, card, use_cache)
    fp32 = infer_view_logits(model, dataset, settings, (IDENTITY,), "parity fp32")[:, 0]
    bf16 = infer_view_logits(model, dataset, replace(settings, precision="bf16"), (IDENTITY,),
                             "parity bf16")[:, 0]
    return parity_from_logits(fp32, bf16, model_labels(samples, card.classes, "the run's split"))


def refuse_training_images(selection: EvaluationData, run_dir: Path, where: str | Path) -> None:
    """A model is never scored on images it trained on: such figures measure memory, not skill."""
    overlap = training_overlap(selection.samples, selection.run_split)
    if overlap["images"]:
        raise DataError(
            f"{where}: {overlap['images']} of the {len(selection.samples)} images to evaluate are in the "
            f"part run {run_dir.name} trained on, and a model is not scored on its training images; evaluate "
            f"its test part (the default), its val part if it has one, or data it never saw."
        )


def evaluate_run(run_dir: str | Path, options: EvaluationOptions | None = None) -> EvaluationResult:
    """Evaluate the run's best model (or `options.checkpoint`) as `options` ask; write the evaluation
    folder."""
    options = options or EvaluationOptions()
    run_dir = Path(run_dir)
    stem = checkpoint_stem(options.checkpoint or run_dir / BEST_STEM)
    model, card = load_checkpoint(stem) if options.checkpoint else load_run(run_dir)
    pixels = PixelInput.normalising(model, card.mean, card.std)
    if not options.metadata and card.metadata is None:
        raise ConfigError(f"{stem}: --no-metadata: this model reads no patient metadata, so there is nothing "
                          f"to withhold; leave the flag out")
    recipe = read_run_recipe(run_dir)
    selection = select_evaluation_data(run_dir, options.data, options.fmt, options.split)
    where = options.data or selection.table.root
    refuse_training_images(selection, run_dir, where)
    labels = model_labels(selection.samples, card.classes, where)
    settings = InferenceSettings(
        device=pick_device(options.device or recipe.device),
        batch_size=recipe.stages[-1].eval_batch_size,
        workers=recipe.workers,
        channels_last=recipe.channels_last,
    )
    backend = options.forward_backend or recipe.forward_backend
    precision_choice = options.precision or recipe.precision
    check_backend_choice(backend, precision_choice)
    engine = forward_engine(backend, precision_choice, settings.device)
    # A graph engine's fp32 is faster than eager bf16 on a CPU and exact, so `auto` needs no bf16 check there.
    precision, parity = ("fp32", None) if engine != TORCH else resolve_precision(
        precision_choice, settings.device,
        lambda: validation_parity(pixels, card, selection, settings, recipe.cache),
    )
    settings = replace(settings, precision=precision, engine=engine,
                       workers=loader_workers(engine, settings.workers))
    checks: list[EngineCheck] = []
    views = options.tta_views or (IDENTITY,)
    dataset = image_dataset(selection.samples, selection.table, card, recipe.cache,
                            withhold=not options.metadata)
    view_logits = infer_view_logits(
        pixels, dataset, settings, views, f"evaluate {selection.name}-{selection.split}", checks
    )
    validation = validation_logits(run_dir, pixels, card, selection, settings, recipe.cache, checks)
    calibrate = options.calibrate and bool(selection.run_split.parts["val"])
    fit = ensure_temperature(stem, validation) if calibrate else None
    malignancy = ensure_malignancy_rule(stem, validation, tuple(card.classes),
                                        fit.temperature if fit else None, options.malignant_sensitivity)
    image_ids = tuple(sample.image_id for sample in selection.samples)
    lesion_ids = tuple(sample.lesion_id for sample in selection.samples)
    variants = {
        name: Predictions(image_ids, lesion_ids, labels, probabilities, tuple(card.classes))
        for name, probabilities in variant_probabilities(
            view_logits, len(views) > 1, fit.temperature if fit else None
        ).items()
    }
    own_data = selection.table is selection.run_table
    evaluation = {
        "run": run_dir.name,
        "checkpoint": stem.name,
        "dataset": selection.name,
        "data_path": str(Path(where).resolve()),
        "split": selection.split,
        "own_split": own_data,
        "tta_views": list(views) if len(views) > 1 else None,
        "metadata": (None if card.metadata is None
                     else {"fields": card.metadata["fields"], "withheld": not options.metadata}),
        "temperature": asdict(fit) if fit else None,
        "precision": {"precision": precision, "parity": parity.to_dict() if parity else None},
        "forward_backend": {"choice": backend, "engine": engine,
                            "passes": [check.to_dict() for check in checks]},
        "training_overlap": training_overlap(selection.samples, selection.run_split),
        "variant_description": describe_variant(views, fit),
        "calibration_note": calibration_note(views, fit, selection.split, own_data),
        "malignancy_note": malignancy_note(malignancy, views, selection.split, own_data),
    }
    data = data_summary(
        {
            part: model_labels(samples, card.classes, run_dir / "split.csv")
            for part, samples in selection.run_split.parts.items()
        },
        labels,
        f"{selection.name}-{selection.split}",
        card.classes,
    )
    run_facts = read_run_json(run_dir)
    model_facts = model_summary(
        model, card, trainable_parameters(model, card, recipe), run_facts.get("train_seconds")
    )
    withheld = "-no-metadata" if not options.metadata else ""
    out_dir = options.out_dir or run_dir / "eval" / f"{selection.name}-{selection.split}{withheld}"
    metrics = write_evaluation(out_dir, variants, evaluation, data, model_facts, run_dir / "history.csv",
                               malignancy)
    write_view_logits(out_dir / LOGITS_FILE, ViewLogits(
        image_ids, tuple(card.classes), tuple(views), view_logits, fit.temperature if fit else None,
        file_sha256(stem.with_suffix(WEIGHTS_SUFFIX))))
    write_model_card(run_dir)
    return EvaluationResult(out_dir, metrics)
