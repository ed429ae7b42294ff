"""`MODEL_CARD.md`: the page a person reads before trusting a run's model, made from the run's own records.

Everything on the card comes from files the run already wrote (`run.json`, `config.yaml`, `best.json`,
`best.malignancy.json`, `history.csv` via `run.json`, and each `eval/*/metrics.json`), never typed by hand,
so the card cannot drift from the figures. `write_model_card(run_dir)` is called when training ends and after
every evaluation into the run folder, and rewrites the card whole each time. JSON and YAML only: no torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from lesionlab.classes import CLASS_CODES, CLASSES, MALIGNANT_CODES
from lesionlab.io_utils import atomic_write_text

CARD_NAME = "MODEL_CARD.md"
PARTS_FIRST = ("val", "test")
"""Evaluations of the run's own validation and test parts lead the card; any other data follows."""


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None where it is absent or unreadable (the card states what is missing)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _interval(entry: dict[str, Any] | None) -> str:
    """`0.686 (0.627–0.742)` from an `{estimate, low, high}` record."""
    if not entry:
        return "–"
    return f"{entry['estimate']:.3f} ({entry['low']:.3f}–{entry['high']:.3f})"


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """Every evaluation of this run's model written into its folder: its own val and test parts first, then
    other data. Folders written by other tools (an ensemble scored beside the run) are left out."""
    found = [metrics for path in sorted((run_dir / "eval").glob("*/metrics.json"))
             if (metrics := _read_json(path)) is not None
             and metrics.get("evaluation", {}).get("run") == run_dir.name]

    def order(metrics: dict[str, Any]) -> tuple[int, str]:
        evaluation = metrics["evaluation"]
        split = evaluation.get("split", "")
        own = evaluation.get("own_split") and split in PARTS_FIRST
        return (PARTS_FIRST.index(split) if own else len(PARTS_FIRST), f"{evaluation.get('dataset')}-{split}")

    return sorted(found, key=order)


def _scored(metrics: dict[str, Any]) -> str:
    """What was scored, apart from the patient fields: data, part, images, views, checkpoint."""
    evaluation = metrics["evaluation"]
    views = evaluation.get("tta_views")
    checkpoint = evaluation.get("checkpoint", "best")
    return (f"{evaluation.get('dataset')}-{evaluation.get('split')} ({metrics.get('samples')} images, "
            f"{'TTA ' + str(len(views)) + ' views' if views else 'single view'}"
            f"{'' if checkpoint == 'best' else ', checkpoint ' + checkpoint})")


def _withheld(metrics: dict[str, Any]) -> bool | None:
    """Whether a metadata model was scored with its patient fields withheld; None for an image-only model."""
    metadata = metrics["evaluation"].get("metadata")
    return None if metadata is None else bool(metadata.get("withheld"))


def _label(metrics: dict[str, Any]) -> str:
    withheld = _withheld(metrics)
    fields = "" if withheld is None else ", fields withheld" if withheld else ", with fields"
    return f"{_scored(metrics)}{fields}"


def _intended_use() -> list[str]:
    return [
        "## Intended use",
        "",
        "Research and teaching on dermoscopic images: comparing training recipes, studying explanations and "
        "deployment. **Research software. Its outputs are not a diagnosis and must not be used for "
        "clinical decisions.** The model has had no clinical validation, no prospective study and no "
        "regulatory review.",
        "",
        f"It assigns a dermoscopic image to one of {len(CLASS_CODES)} classes ("
        + ", ".join(f"{lesion.code}: {lesion.name}" for lesion in CLASSES)
        + f") and sums the probabilities of {', '.join(c for c in CLASS_CODES if c in MALIGNANT_CODES)} into "
        "a malignant probability.",
    ]


def _data_section(run: dict[str, Any], recipe: dict[str, Any], card: dict[str, Any] | None) -> list[str]:
    dataset, split = run.get("dataset", {}), run.get("split", {})
    group = split.get("group")
    grouping = {"lesion": "grouped by lesion: no lesion has images in two parts",
                "none": "by image: one lesion's images can fall in different parts, so scores are optimistic",
                "dataset": "the dataset's own parts"}.get(group, str(group))
    fields = _metadata_fields(recipe, card)
    inputs = (f"the image and the patient's {', '.join(fields)} (see Patient metadata)" if fields
              else "the image only")
    return [
        "## Training data and split",
        "",
        f"- Data: `{dataset.get('format')}` layout, {dataset.get('images')} images "
        f"(fingerprint `{str(dataset.get('fingerprint', ''))[:16]}`).",
        f"- Split: seed {split.get('seed')}, {grouping}; train {split.get('train_images')}, "
        f"val {split.get('val_images')}, test {split.get('test_images')} images (`split.csv`).",
        "- Choices (checkpoint, temperature, malignancy threshold) were made on the val part only; the test "
        "part is scored, never tuned on.",
        f"- Inputs: {inputs}.",
    ]


def _metadata_entry(recipe: dict[str, Any], card: dict[str, Any] | None) -> dict[str, Any]:
    """The kept model's metadata branch (`fields`, `dropout`, `hidden`; its `best.json`, else the recipe);
    empty for an image-only model."""
    return (card or {}).get("metadata") or recipe.get("metadata") or {}


def _metadata_fields(recipe: dict[str, Any], card: dict[str, Any] | None) -> list[str]:
    """The patient fields the kept model reads; empty for image only."""
    return list(_metadata_entry(recipe, card).get("fields", []))


def _metadata_section(recipe: dict[str, Any], card: dict[str, Any] | None,
                      evaluations: list[dict[str, Any]]) -> list[str]:
    """For a metadata model: the fields it reads, and each evaluation with and without them side by side."""
    fields = _metadata_fields(recipe, card)
    if not fields:
        return []
    dropout = _metadata_entry(recipe, card).get("dropout", "–")
    lines = ["## Patient metadata", "",
             f"The model reads the patient's {', '.join(fields)} beside the image (docs/metadata.md: one "
             f"site vocabulary over HAM10000 and ISIC names). Each is optional at prediction time: a missing "
             f"field is a value of its own, and training withheld each field with probability "
             f"{dropout} so the model stays sound without it. The figures below score "
             f"the same images with the data's fields and with every field withheld; the fields earn their "
             f"place only where they help, on the test part and on data from another source."]
    pairs: dict[str, dict[bool, dict[str, Any]]] = {}
    for metrics in evaluations:
        withheld = _withheld(metrics)
        if withheld is not None:
            pairs.setdefault(_scored(metrics), {})[withheld] = metrics
    if not pairs:
        return [*lines, "", "Not evaluated yet: run `lesionlab evaluate RUN` and "
                            "`lesionlab evaluate RUN --no-metadata`."]
    lines += ["", "| evaluated | balanced accuracy, with fields | fields withheld | difference | "
                  "macro F1, with fields | fields withheld |", "| --- | --- | --- | --- | --- | --- |"]

    def figure(metrics: dict[str, Any] | None, name: str) -> str:
        return "–" if metrics is None else _interval(metrics.get("confidence_intervals", {}).get(name))

    def estimate(metrics: dict[str, Any] | None) -> float | None:
        entry = None if metrics is None else metrics.get("confidence_intervals", {}).get("balanced_accuracy")
        return None if not entry else entry["estimate"]

    unpaired = []
    for scored, pair in pairs.items():
        with_fields, without = pair.get(False), pair.get(True)
        gained = estimate(with_fields), estimate(without)
        difference = "–" if None in gained else f"{gained[0] - gained[1]:+.3f}"
        lines.append(f"| {scored} | {figure(with_fields, 'balanced_accuracy')} | "
                     f"{figure(without, 'balanced_accuracy')} | {difference} | "
                     f"{figure(with_fields, 'macro_f1')} | {figure(without, 'macro_f1')} |")
        if with_fields is None or without is None:
            unpaired.append(scored)
    if unpaired:
        lines += ["", f"Not yet scored both ways: {'; '.join(unpaired)}. "
                      f"`lesionlab evaluate RUN --no-metadata` withholds the fields (same data and views)."]
    return lines


def _recipe_section(run: dict[str, Any], recipe: dict[str, Any], card: dict[str, Any] | None) -> list[str]:
    stages = recipe.get("stages", [])
    lines = [
        "## How it was trained",
        "",
        f"- Architecture `{recipe.get('arch')}`, pretrained `{recipe.get('pretrained')}`, input "
        f"{recipe.get('image_size')} px, augmentation `{recipe.get('augment')}`, seed {recipe.get('seed')}, "
        f"selection by val `{recipe.get('select')}`.",
    ]
    for index, stage in enumerate(stages, start=1):
        size = stage.get("image_size") or recipe.get("image_size")
        lines.append(f"- Stage {index}: trains `{stage.get('trainable')}`, {stage.get('epochs')} epochs, "
                     f"{stage.get('optimizer')} lr {stage.get('lr')}, batch {stage.get('batch_size')}, "
                     f"loss `{stage.get('loss')}`, image size {size}"
                     f"{', weight average ' + str(stage['ema_decay']) if stage.get('ema_decay') else ''}.")
    if card:
        kept = card.get("metrics", {}).get("val_balanced_accuracy")
        lines.append(f"- Kept model: stage {card.get('stage')} epoch {card.get('epoch')} "
                     f"(val balanced accuracy {_number(kept)}).")
    versions = ", ".join(f"{name} {value}" for name, value in run.get("versions", {}).items())
    host = run.get("host", {})
    lines.append(f"- Training time {_number((run.get('train_seconds') or 0) / 60, 1)} min on "
                 f"{host.get('cpus')} CPU(s); versions: {versions}. The full recipe is `config.yaml`.")
    return lines


def _figures_section(evaluations: list[dict[str, Any]]) -> list[str]:
    lines = ["## Performance", ""]
    if not evaluations:
        return [*lines, "Not evaluated yet: run `lesionlab evaluate RUN` (test part) and "
                        "`lesionlab evaluate RUN --split val`; this card then shows their figures."]
    lines += ["95% intervals are bootstrap intervals resampled by lesion.", "",
              "| evaluated | accuracy | balanced accuracy | macro F1 | macro ROC AUC |",
              "| --- | --- | --- | --- | --- |"]
    for metrics in evaluations:
        intervals = metrics.get("confidence_intervals", {})
        lines.append(f"| {_label(metrics)} | {_interval(intervals.get('accuracy'))} | "
                     f"{_interval(intervals.get('balanced_accuracy'))} | "
                     f"{_interval(intervals.get('macro_f1'))} | "
                     f"{_number(metrics.get('roc_auc_macro'))} |")
    lines += ["", "Recall per class (support in brackets):", "",
              "| evaluated | " + " | ".join(CLASS_CODES) + " |", "| --- |" + " --- |" * len(CLASS_CODES)]
    for metrics in evaluations:
        per_class = metrics.get("per_class", {})
        cells = [f"{_number(per_class[code]['recall'])} ({per_class[code]['support']})" if code in per_class
                 else "–" for code in CLASS_CODES]
        lines.append(f"| {_label(metrics)} | " + " | ".join(cells) + " |")
    return lines


def _malignancy_section(evaluations: list[dict[str, Any]], threshold: dict[str, Any] | None) -> list[str]:
    lines = ["## Malignant or benign", ""]
    if threshold:
        lines.append(f"The malignant flag is raised when the malignant probability is at least "
                     f"**{threshold['threshold']:.3f}**, the highest threshold that flagged at least "
                     f"{threshold['target_sensitivity']:.0%} of the {threshold['malignant_samples']} "
                     f"malignant images of the {threshold['fitted_on']} part ({threshold['samples']} "
                     f"images; there: "
                     f"sensitivity {threshold['sensitivity']:.3f}, "
                     f"specificity {threshold['specificity']:.3f}). "
                     f"`predict`, `serve` and the exported model apply it.")
    else:
        lines.append("No threshold has been fitted (the run is not evaluated yet): the flag falls back to a "
                     "malignant probability of 0.5, and says so.")
    rows = [metrics for metrics in evaluations if metrics.get("malignancy")]
    if rows:
        lines += ["", "| evaluated | sensitivity | specificity | ROC AUC | melanoma sens. at spec. 0.80 | "
                      "at 0.90 |", "| --- | --- | --- | --- | --- | --- |"]
        for metrics in rows:
            malignancy = metrics["malignancy"]
            at = malignancy.get("melanoma", {}).get("sensitivity_at_specificity", {})
            lines.append(f"| {_label(metrics)} | {_interval(malignancy.get('sensitivity'))} | "
                         f"{_interval(malignancy.get('specificity'))} | "
                         f"{_interval(malignancy.get('roc_auc'))} | "
                         f"{_interval(at.get('0.80'))} | {_interval(at.get('0.90'))} |")
    return lines


def _calibration_section(evaluations: list[dict[str, Any]]) -> list[str]:
    lines = ["## Calibration", ""]
    fits = [metrics["evaluation"].get("temperature") for metrics in evaluations]
    fit = next((fit for fit in fits if fit), None)
    if fit:
        lines.append(f"A temperature of {fit['temperature']:.3f} was fitted on the {fit['fitted_on']} part "
                     f"({fit['samples']} images; NLL {fit['nll_before']:.3f} -> {fit['nll_after']:.3f}); "
                     f"the probabilities shown are divided by it.")
    else:
        lines.append("No temperature fitted: probabilities are the plain softmax.")
    for metrics in evaluations:
        lines.append(f"- {_label(metrics)}: expected calibration error {_number(metrics.get('ece'))} "
                     f"({metrics.get('ece_bins')} bins), "
                     f"negative log-likelihood {_number(metrics.get('nll'))}.")
    return lines


def _limits(recipe: dict[str, Any]) -> list[str]:
    return [
        "## Known limits",
        "",
        f"- Every image is resized to a {recipe.get('image_size')} px square: fine structure of larger "
        "images is lost. It has seen dermoscopic images only; clinical photographs and other devices are "
        "outside its data.",
        "- HAM10000 comes from two sites (Vienna and Queensland), mostly light-skinned patients; skin type "
        "is not recorded, and skin types, body sites and ages rare in it are not represented, so its figures "
        "may not hold there.",
        "- Classes are very unequal (nv is two thirds); the rare classes (df, vasc) have few test images, so "
        "their recall has wide intervals.",
        "- Labels are partly histopathology and partly follow-up or expert consensus; no clinical validation "
        "of any kind has been made.",
        "- Grad-CAM maps show where the network responded, not why, and can miss the lesion "
        "(docs/explanations.md).",
    ]


def render_model_card(run_dir: Path) -> str:
    """The card's Markdown for the run in `run_dir`, from the files the run holds now."""
    run = _read_json(run_dir / "run.json") or {}
    recipe_path = run_dir / "config.yaml"
    recipe = yaml.safe_load(recipe_path.read_text(encoding="utf-8")) if recipe_path.is_file() else {}
    card = _read_json(run_dir / "best.json")
    threshold = _read_json(run_dir / "best.malignancy.json")
    evaluations = _evaluations(run_dir)
    sections = [
        [f"# Model card: {run.get('name', run_dir.name)}", "",
         f"Made by lesionlab from this run's records (`run.json`, `config.yaml`, `eval/*/metrics.json`); "
         f"status `{run.get('status')}`, ended {run.get('ended', '–')}."],
        _intended_use(), _data_section(run, recipe, card), _recipe_section(run, recipe, card),
        _figures_section(evaluations), _metadata_section(recipe, card, evaluations),
        _malignancy_section(evaluations, threshold),
        _calibration_section(evaluations), _limits(recipe),
    ]
    return "\n\n".join("\n".join(section) for section in sections if section) + "\n"


def write_model_card(run_dir: str | Path) -> Path:
    """Write (or rewrite) `run_dir/MODEL_CARD.md` atomically; return its path."""
    path = Path(run_dir) / CARD_NAME
    atomic_write_text(path, render_model_card(Path(run_dir)))
    return path
