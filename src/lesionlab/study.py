"""Studies: several recipes trained on one shared split, each evaluated on its test part, in one table.

A study file (YAML) names a base recipe, overrides shared by every run, the split, and a list of runs, each
with its own overrides; optional ensembles average the test probabilities of finished runs. The study folder
holds `split.csv` (made once, so every run sees the same images), `budget.json`, one run directory per run,
`study.json` (the budget and the rows), `study.csv`, `study.md` and `study.png`. A finished run is skipped, an
interrupted one resumed, so rerunning the same command after an interruption finishes the study; a rerun under
another budget is refused rather than mixed into the old folder.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lesionlab.class_offsets import (
    CLASS_OFFSETS_FILE,
    ClassOffsets,
    apply_class_offsets,
    save_class_offsets,
)
from lesionlab.classes import CLASS_CODES
from lesionlab.data.readers import SampleTable, read_dataset
from lesionlab.data.split import Split, read_split, write_split
from lesionlab.errors import ConfigError
from lesionlab.evaluation.calibration import file_sha256
from lesionlab.evaluation.decision import fit_class_offsets, lesion_mean, out_of_fold_offsets
from lesionlab.evaluation.evaluate import EvaluationOptions, evaluate_run
from lesionlab.evaluation.metrics import compute_metrics
from lesionlab.evaluation.predictions import Predictions, read_predictions
from lesionlab.evaluation.report import Table, format_table, number
from lesionlab.evaluation.tta import DEFAULT_VIEWS
from lesionlab.io_utils import atomic_write_json, atomic_write_text
from lesionlab.models.checkpoint import BEST_STEM, WEIGHTS_SUFFIX
from lesionlab.pipeline import new_run_split
from lesionlab.training.recipe import (
    Recipe,
    load_recipe,
    resolve_config_path,
    scale_epochs,
    shipped_config_names,
)
from lesionlab.training.rundir import RunDirectory
from lesionlab.training.runner import train_run

log = logging.getLogger(__name__)

STUDY_KEYS = frozenset(
    {"name", "description", "base", "set", "stages", "split", "evaluate", "runs", "ensembles"}
)
RUN_KEYS = frozenset({"name", "label", "base", "set", "stages", "note"})
ENSEMBLE_KEYS = frozenset({"name", "label", "members"})
EVALUATE_KEYS = frozenset({"tta", "stages_separately", "decisions"})
CLASS_OFFSETS = "class-offsets"
LESION_MEAN = "lesion-mean"
DECISIONS = (CLASS_OFFSETS, LESION_MEAN)
DECISION_LABELS = {CLASS_OFFSETS: "class offsets", LESION_MEAN: "lesion mean"}
DECISION_NOTES = {
    CLASS_OFFSETS: "class offsets fitted on val (its val column is out of fold)",
    LESION_MEAN: "lesion-level: the probabilities of a lesion's images averaged",
}


@dataclass(frozen=True)
class Budget:
    """What a study was shrunk to so it fits a machine: stated in every table it produces."""

    image_size: int | None = None
    epochs_scale: float = 1.0
    subset: int | None = None

    def describe(self) -> str:
        parts = [
            f"image size {self.image_size} px" if self.image_size else "each recipe's image size",
            f"epochs x{self.epochs_scale:g}",
            f"subset of about {self.subset} images" if self.subset else "the whole dataset",
        ]
        return ", ".join(parts)


@dataclass(frozen=True)
class StudyRun:
    """One recipe of a study: a base recipe plus overrides."""

    name: str
    label: str
    base: str
    overrides: tuple[str, ...]
    note: str = ""


@dataclass(frozen=True)
class Ensemble:
    """Finished runs whose test probabilities are averaged."""

    name: str
    label: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class Study:
    """A parsed study file."""

    name: str
    description: str
    split: dict[str, Any]
    stages_separately: bool
    tta: bool
    runs: tuple[StudyRun, ...]
    ensembles: tuple[Ensemble, ...] = field(default=())
    decisions: tuple[str, ...] = field(default=())


def _unknown(keys: set[str], allowed: frozenset[str], where: str) -> None:
    extra = sorted(keys - allowed)
    if extra:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}"
        )


def _overrides(entry: dict[str, Any], where: str) -> list[str]:
    """`set:` as `key=value` strings or a mapping, plus `stages:` as one override of the whole list."""
    raw_set = entry.get("set") or []
    if isinstance(raw_set, dict):
        overrides = [
            f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
            for key, value in raw_set.items()
        ]
    elif isinstance(raw_set, list) and all(isinstance(item, str) for item in raw_set):
        overrides = list(raw_set)
    else:
        raise ConfigError(f"{where}: 'set' must be a list of key=value strings or a mapping")
    if "stages" in entry:
        overrides.append("stages=" + yaml.safe_dump(entry["stages"], default_flow_style=True).strip())
    return overrides


def load_study(path: str | Path) -> Study:
    """Read and check a study file; each run's recipe is resolved here so a typo fails before training."""
    path = resolve_config_path(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: study file not found; pass a path or one of the shipped names: "
                          f"{', '.join(shipped_config_names())}.") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(raw, dict) or not raw.get("runs"):
        raise ConfigError(f"{path}: a study needs a 'runs' list")
    _unknown(set(raw), STUDY_KEYS, str(path))
    shared = _overrides(raw, f"{path}")
    base = str(raw.get("base", "default"))
    runs = []
    for index, entry in enumerate(raw["runs"]):
        where = f"{path}: runs[{index}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{where}: each run needs a 'name'")
        _unknown(set(entry), RUN_KEYS, where)
        run = StudyRun(
            name=str(entry["name"]),
            label=str(entry.get("label", entry["name"])),
            base=str(entry.get("base", base)),
            overrides=(*shared, *_overrides(entry, where)),
            note=str(entry.get("note", "")),
        )
        load_recipe(run.base, run.overrides)
        runs.append(run)
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: run names must be unique")
    ensembles = []
    for index, entry in enumerate(raw.get("ensembles") or []):
        where = f"{path}: ensembles[{index}]"
        _unknown(set(entry), ENSEMBLE_KEYS, where)
        members = tuple(str(member) for member in entry.get("members", ()))
        if len(members) < 2 or not set(members) <= set(names):
            raise ConfigError(
                f"{where}: 'members' must list at least two of the study's runs ({', '.join(names)})"
            )
        ensembles.append(Ensemble(str(entry["name"]), str(entry.get("label", entry["name"])), members))
    evaluate = raw.get("evaluate") or {}
    _unknown(set(evaluate), EVALUATE_KEYS, f"{path}: evaluate")
    decisions = tuple(str(rule) for rule in evaluate.get("decisions") or ())
    if not set(decisions) <= set(DECISIONS):
        raise ConfigError(
            f"{path}: evaluate.decisions takes {', '.join(DECISIONS)}, not {', '.join(decisions)}"
        )
    if decisions and not ensembles:
        raise ConfigError(f"{path}: evaluate.decisions applies to ensembles; the study lists none")
    return Study(
        name=str(raw.get("name", Path(path).stem)),
        description=str(raw.get("description", "")),
        split={"val": 0.15, "test": 0.15, "seed": 0, "group": "lesion", **(raw.get("split") or {})},
        stages_separately=bool(evaluate.get("stages_separately", False)),
        tta=bool(evaluate.get("tta", False)),
        runs=tuple(runs),
        ensembles=tuple(ensembles),
        decisions=decisions,
    )


def run_recipe(run: StudyRun, budget: Budget) -> Recipe:
    """The run's recipe with the study's budget applied."""
    overrides = [*run.overrides, *([f"image_size={budget.image_size}"] if budget.image_size else [])]
    recipe = load_recipe(run.base, overrides)
    return scale_epochs(recipe, budget.epochs_scale) if budget.epochs_scale != 1.0 else recipe


def recorded_budget(folder: Path) -> Budget | None:
    """The budget a study folder was started with (`budget.json`, else the finished `study.json`)."""
    for name, key in (("budget.json", None), ("study.json", "budget")):
        path = folder / name
        if path.is_file():
            record = json.loads(path.read_text(encoding="utf-8"))
            return Budget(**(record[key] if key else record))
    return None


def check_budget(folder: Path, budget: Budget) -> None:
    """Refuse to resume a study folder under another budget: its split and finished runs belong to the old
    one, and mixing them would publish a table whose rows were trained differently from what it states."""
    recorded = recorded_budget(folder)
    if recorded is not None and recorded != budget:
        raise ConfigError(
            f"{folder} was started with budget ({recorded.describe()}), not ({budget.describe()}); rerun "
            f"with the same options to resume it, or pass --runs-dir another folder for the new budget."
        )
    atomic_write_json(folder / "budget.json", budget.__dict__)


def study_split(study: Study, table: SampleTable, folder: Path, budget: Budget) -> Split:
    """The study's one split: read back when it exists (resume), else made and saved."""
    path = folder / "split.csv"
    if path.exists():
        return read_split(path, table)
    split = new_run_split(
        table,
        budget.subset,
        int(study.split["seed"]),
        float(study.split["val"]),
        float(study.split["test"]),
        str(study.split["group"]),
    )
    write_split(path, split)
    return split


def _run_status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("status")
    except FileNotFoundError:
        return None


def train_study_run(run: StudyRun, recipe: Recipe, table: SampleTable, split: Split, run_dir: Path) -> None:
    """Train a run unless it finished before; continue it where an earlier attempt stopped."""
    status = _run_status(run_dir)
    if status == "finished":
        log.info("%s: already trained, skipped", run.name)
        return
    resumable = status is not None and (run_dir / "state.json").exists()
    train_run(recipe, table, split, run_dir, resume=resumable)


def views(study: Study) -> tuple[str, ...] | None:
    """The test-time augmentation views a study evaluates with (None: no TTA)."""
    return DEFAULT_VIEWS if study.tta else None


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
    minutes = sum(float(row["seconds"]) for row in rows if int(row["stage"]) <= last) / 60
    return round(minutes, 1), (float(np.mean(speeds)) if speeds else None)


def current_evaluation(
    out_dir: Path, weights: Path, tta_views: tuple[str, ...] | None
) -> dict[str, Any] | None:
    """The metrics an earlier run of the study wrote in `out_dir`, when they belong to these exact weights
    (the sha256 their temperature was fitted for) and these views; None means evaluate again. This is what
    makes rerunning a finished study cheap: only what changed is measured again."""
    path = out_dir / "metrics.json"
    if not path.is_file() or not (out_dir / "predictions.csv").is_file():
        return None
    metrics = json.loads(path.read_text(encoding="utf-8"))
    evaluation = metrics.get("evaluation", {})
    fit = evaluation.get("temperature") or {}
    same_views = evaluation.get("tta_views") == (list(tta_views) if tta_views else None)
    if same_views and fit.get("checkpoint_sha256") == file_sha256(weights):
        return metrics
    return None


def evaluate_study_run(study: Study, run: StudyRun, recipe: Recipe, run_dir: Path) -> list[dict[str, Any]]:
    """Evaluate each chosen checkpoint of a trained run on the validation part (the column a reader picks
    by) and on the test part (reported), both with the study's test-time augmentation; one row each. An
    evaluation already on disk for the same weights and views is read back, not repeated."""
    rows = []
    for stage, stem in _evaluations(study, recipe, run_dir):
        tag = f"-stage{stage}" if stage else ""
        scores = {}
        for part in ("val", "test"):
            out_dir = run_dir / "eval" / f"{part}{tag}"
            weights = (stem or run_dir / BEST_STEM).with_suffix(WEIGHTS_SUFFIX)
            scores[part] = current_evaluation(out_dir, weights, views(study))
            if scores[part] is None:
                options = EvaluationOptions(
                    split=part, tta_views=views(study), checkpoint=stem, out_dir=out_dir
                )
                scores[part] = evaluate_run(run_dir, options).metrics
        metrics = scores["test"]
        minutes, speed = training_effort(run_dir, stage)
        extra = {
            "val_balanced_accuracy": scores["val"]["balanced_accuracy"],
            "val_macro_f1": scores["val"]["macro_f1"],
            "arch": recipe.arch,
            "pretrained": recipe.pretrained if recipe.pretrained in ("imagenet", "none") else "file",
            "image_size": recipe.image_size,
            "parameters": metrics["model"]["parameters"],
            "train_minutes": minutes,
            "train_images_per_s": speed,
            "report": (run_dir / "eval" / f"test{tag}" / "report.md").relative_to(run_dir.parent).as_posix(),
            "note": run.note,
        }
        suffix = f" / stage {stage}" if stage else ""
        rows.append(_row(run.name + tag, run.label + suffix, metrics, extra))
    return rows


def averaged_predictions(ensemble: Ensemble, folder: Path, part: str) -> Predictions:
    """The members' probabilities on one part (`test` or `val`), averaged image by image and renormalised
    (predictions.csv rounds each probability)."""
    members = [
        read_predictions(folder / member / "eval" / part / "predictions.csv") for member in ensemble.members
    ]
    first = members[0]
    for member, predictions in zip(ensemble.members, members, strict=True):
        if predictions.image_ids != first.image_ids:
            raise ConfigError(f"ensemble {ensemble.name}: run {member} was evaluated on other images")
    mean = np.mean([member.probabilities for member in members], axis=0)
    return first.with_probabilities(mean / mean.sum(axis=1, keepdims=True))


def predictions_row(
    name: str, label: str, val: Predictions, test: Predictions, out_dir: Path, extra: dict[str, Any]
) -> dict[str, Any]:
    """Measure predictions on the test part, with the validation score beside it for choosing honestly;
    `out_dir/metrics.json` keeps both in full."""
    metrics = compute_metrics(test)
    validation = compute_metrics(val)
    atomic_write_json(out_dir / "metrics.json", {**extra, **metrics, "validation": validation})
    scores = {
        "val_balanced_accuracy": validation["balanced_accuracy"],
        "val_macro_f1": validation["macro_f1"],
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
        averaged_predictions(ensemble, folder, "val"),
        averaged_predictions(ensemble, folder, "test"),
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
    averaged = {part: averaged_predictions(ensemble, folder, part) for part in ("val", "test")}
    for rules in decision_variants(study.decisions):
        val, test = averaged["val"], averaged["test"]
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
            test = test.with_probabilities(apply_class_offsets(test.probabilities, offsets))
            val = out_of_fold_offsets(val)
        extra["note"] = "; ".join(DECISION_NOTES[rule] for rule in rules)
        extra["lesion_level"] = LESION_MEAN in rules
        label = f"{ensemble.label} + " + " + ".join(DECISION_LABELS[rule] for rule in rules)
        rows.append(predictions_row(name, label, val, test, folder / name, extra))
    return rows


def study_table(rows: list[dict[str, Any]]) -> Table:
    """The comparison table; the row marked best is chosen by validation balanced accuracy, never by test,
    among the per-image rows (a lesion-level row answers another question; see `evaluation.decision`)."""
    eligible = [index for index, row in enumerate(rows) if not row.get("lesion_level")]
    best = max(eligible, key=lambda i: rows[i]["val_balanced_accuracy"]) if eligible else -1
    header = [
        "run",
        "val bal acc",
        "acc",
        "bal acc",
        "macro F1",
        *[f"rec {code}" for code in CLASS_CODES],
        "params",
        "train min",
        "img/s",
    ]
    body = []
    for index, row in enumerate(rows):
        params = row.get("parameters")
        speed = row.get("train_images_per_s")
        body.append(
            [
                ("**best** " if index == best else "") + row["label"],
                f"{row['val_balanced_accuracy']:.3f}",
                f"{row['accuracy']:.3f}",
                f"{row['balanced_accuracy']:.3f}",
                f"{row['macro_f1']:.3f}",
                *[number(row.get(f"recall_{code}"), 2) for code in CLASS_CODES],
                f"{params / 1e6:.2f}M" if params else "",
                str(row.get("train_minutes", "")),
                f"{speed:.0f}" if speed else "",
            ]
        )
    return Table(header, body)


def write_study_outputs(
    study: Study, folder: Path, budget: Budget, data_root: Path, rows: list[dict[str, Any]]
) -> None:
    """study.json, study.csv, study.md and the figure, all from the same rows."""
    from lesionlab.evaluation.plots import plot_study

    atomic_write_json(
        folder / "study.json",
        {"study": study.name, "budget": budget.__dict__, "data": str(data_root), "rows": rows},
    )
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(folder / "study.csv", buffer.getvalue())
    plot_study(rows, f"{study.name}: test part, {budget.describe()}", folder / "study.png")
    notes = [f"- {row['label']}: {row['note']}" for row in rows if row.get("note")]
    lines = [
        f"# Study {study.name}",
        "",
        study.description,
        "",
        f"Data: `{data_root}`; lesion-grouped split seed {study.split['seed']} "
        f"(val {study.split['val']}, test {study.split['test']}); budget: {budget.describe()}.",
        "Metrics on the test part; the row marked best has the highest validation balanced accuracy.",
        "",
        format_table(study_table(rows)),
        "",
        *(["Notes:", *notes, ""] if notes else []),
        "![study](study.png)",
        "",
        "Full report per run: "
        + ", ".join(f"[{row['label']}]({row['report']})" for row in rows if row.get("report")),
        "",
    ]
    atomic_write_text(folder / "study.md", "\n".join(lines))


def run_study(
    config: str | Path,
    *,
    data: str | Path | None = None,
    fmt: str | None = None,
    runs_dir: str | Path = "runs",
    budget: Budget | None = None,
    only: tuple[str, ...] = (),
) -> Path:
    """Train and evaluate every run of a study (skipping finished ones) and write the comparison."""
    budget = budget or Budget()
    study = load_study(config)
    unknown = set(only) - {run.name for run in study.runs}
    if unknown:
        raise ConfigError(f"--only {', '.join(sorted(unknown))}: not runs of {study.name}")
    table = read_dataset(data, fmt)
    folder = Path(runs_dir) / f"study-{study.name}"
    folder.mkdir(parents=True, exist_ok=True)
    check_budget(folder, budget)
    split = study_split(study, table, folder, budget)
    rows: list[dict[str, Any]] = []
    for run in study.runs:
        if only and run.name not in only:
            continue
        recipe = run_recipe(run, budget)
        run_dir = folder / run.name
        log.info("study %s: run %s", study.name, run.name)
        train_study_run(run, recipe, table, split, run_dir)
        rows.extend(evaluate_study_run(study, run, recipe, run_dir))
    for ensemble in study.ensembles:
        if not only or set(ensemble.members) <= set(only):
            rows.append(ensemble_row(ensemble, folder))
            rows.extend(decision_rows(study, ensemble, folder))
    write_study_outputs(study, folder, budget, table.root, rows)
    return folder
