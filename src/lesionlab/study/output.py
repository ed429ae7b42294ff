"""A study's outputs: study.json, study.csv, study.md (with the comparison table) and study.png, all from
the same rows, and `model.json`, the recommended row as a model `predict`, `serve` and `lesionlab.load`
take."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from lesionlab.class_offsets import CLASS_OFFSETS_FILE
from lesionlab.classes import CLASS_CODES
from lesionlab.errors import ConfigError
from lesionlab.evaluation.metrics import cluster_ids, paired_differences
from lesionlab.evaluation.predictions import read_predictions
from lesionlab.evaluation.report import number
from lesionlab.inference.model_file import MODEL_FILE_NAME
from lesionlab.io_utils import atomic_write_json, atomic_write_text
from lesionlab.malignancy import DEFAULT_TARGET_SENSITIVITY, ThresholdFit
from lesionlab.study.budget import Budget
from lesionlab.study.schema import CLASS_OFFSETS, Study, views
from lesionlab.study.scoring import VAL_PREDICTIONS
from lesionlab.tables import Table, format_table
from lesionlab.training.rundir import RunDirectory
from lesionlab.views import IDENTITY


def best_row(rows: list[dict[str, Any]]) -> int:
    """The index of the recommended row (-1: none): the highest validation balanced accuracy, never test,
    among the per-image rows that score as their model file would (a lesion-level row answers another
    question, see `evaluation.decision`; a fields-withheld row is its metadata model used without fields)."""
    eligible = [index for index, row in enumerate(rows)
                if not row.get("lesion_level") and not row.get("fields_withheld")]
    return max(eligible, key=lambda i: rows[i]["val_balanced_accuracy"]) if eligible else -1


def compare_with_best(folder: Path, rows: list[dict[str, Any]]) -> None:
    """Add to each row `val_vs_best` (with `_low`, `_high`): its validation balanced accuracy minus the best
    row's, with a paired bootstrap interval (`metrics.paired_differences`: both rows' decisions on the same
    resampled lesions). A row whose interval holds 0 is one validation cannot tell from the best, so the
    choice between them is a coin toss at this sample size. The interval is over the images, for these
    trained models: it does not cover the training seed, which can move one recipe by more."""
    best = best_row(rows)
    if best < 0 or VAL_PREDICTIONS not in rows[best]:
        return
    reference = read_predictions(folder / rows[best][VAL_PREDICTIONS])
    clusters, _ = cluster_ids(reference.image_ids, reference.lesion_ids)
    for index, row in enumerate(rows):
        if index == best or VAL_PREDICTIONS not in row:
            continue
        predictions = read_predictions(folder / row[VAL_PREDICTIONS])
        if predictions.image_ids != reference.image_ids:
            continue
        difference = paired_differences(reference.labels, predictions.predicted, reference.predicted,
                                        clusters, len(reference.class_codes))["balanced_accuracy"]
        row.update(val_vs_best=difference["estimate"], val_vs_best_low=difference["low"],
                   val_vs_best_high=difference["high"])


def _versus_best(row: dict[str, Any]) -> str:
    if row.get("val_vs_best") is None:
        return ""
    return f"{row['val_vs_best']:+.3f} ({row['val_vs_best_low']:+.3f} to {row['val_vs_best_high']:+.3f})"


def study_table(rows: list[dict[str, Any]]) -> Table:
    """The comparison table, the row `best_row` recommends marked best."""
    best = best_row(rows)
    header = [
        "run",
        "val bal acc",
        "val vs best (paired 95%)",
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
                _versus_best(row),
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
    """study.json, study.csv, study.md and the figure, all from the same rows (each compared with the best
    on validation first)."""
    from lesionlab.evaluation.plots import plot_study

    compare_with_best(folder, rows)

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
        "Metrics on the test part; the row marked best has the highest validation balanced accuracy. "
        "`val vs best` is a row's validation balanced accuracy minus the best row's, with a paired "
        "bootstrap interval over the validation lesions: where it holds 0, validation cannot tell the two "
        "trained models apart. It covers which images were drawn, not training noise: two training seeds "
        "of one recipe can differ by more.",
        f"It is saved as `{MODEL_FILE_NAME}` in this folder: `lesionlab predict {MODEL_FILE_NAME} IMAGE` (or "
        f"`serve`, `evaluate`, `lesionlab.load`) scores as that row.",
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
    best = best_row(rows)
    if best >= 0:
        write_recommended_model(study, folder, rows[best])


def recommended_members(study: Study, folder: Path, row: dict[str, Any]) -> tuple[list[Path], Path | None]:
    """The member checkpoints (a run directory for a run's best model, a stage's best checkpoint stem for a
    per-stage row) and the class-offsets file of a row."""
    if "members" in row:
        with_offsets = CLASS_OFFSETS in row.get("decisions", ())
        offsets = folder / row["run"] / CLASS_OFFSETS_FILE if with_offsets else None
        return [folder / member for member in row["members"]], offsets
    names = {run.name for run in study.runs}
    if row["run"] in names:
        return [folder / row["run"]], None
    for name in names:
        prefix = f"{name}-stage"
        if row["run"].startswith(prefix) and row["run"][len(prefix):].isdigit():
            return [RunDirectory(folder / name).stage_best(int(row["run"][len(prefix):]))], None
    raise ConfigError(f"{folder}: row {row['run']} names no run of study {study.name}")


def validation_folders(study: Study, folder: Path, row: dict[str, Any]) -> list[Path]:
    """The evaluation folders on the validation part of a row's members (a per-stage row: that stage's)."""
    if "members" in row:
        return [folder / member / "eval" / "val" for member in row["members"]]
    for run in study.runs:
        prefix = f"{run.name}-stage"
        if row["run"].startswith(prefix) and row["run"][len(prefix):].isdigit():
            return [folder / run.name / "eval" / f"val-stage{row['run'][len(prefix):]}"]
    return [folder / row["run"] / "eval" / "val"]


def recommended_threshold(study: Study, folder: Path, row: dict[str, Any],
                          offsets: Path | None) -> ThresholdFit | None:
    """The malignancy threshold of the recommended model, fitted on its validation probabilities as the
    model file scores them (the members' saved logits, temperatures, views and class offsets), for the
    default sensitivity: what `evaluate MODEL.json` fits on the same part."""
    from lesionlab.class_offsets import load_class_offsets
    from lesionlab.evaluation.ensemble import ensemble_rule
    from lesionlab.evaluation.predictions import read_predictions
    from lesionlab.evaluation.view_logits import LOGITS_FILE, ensemble_probabilities, read_view_logits

    evaluations = validation_folders(study, folder, row)
    logits = [read_view_logits(evaluation / LOGITS_FILE) for evaluation in evaluations]
    values = None if offsets is None else load_class_offsets(offsets).offsets
    probabilities = ensemble_probabilities(logits, [str(path) for path in evaluations], values)
    validation = read_predictions(evaluations[0] / "predictions.csv").with_probabilities(probabilities)
    return ensemble_rule(validation, DEFAULT_TARGET_SENSITIVITY).fit


def write_recommended_model(study: Study, folder: Path, row: dict[str, Any]) -> Path:
    """`model.json` for the recommended row: its members with the temperatures they were scored with, the
    study's TTA views, the row's class offsets and the malignancy threshold fitted on its validation part,
    so `lesionlab predict model.json` scores and flags as the row."""
    from lesionlab.evaluation.ensemble import member_temperature
    from lesionlab.inference.model_file import write_model_file

    members, offsets = recommended_members(study, folder, row)
    calibrated = [(member, member_temperature(member)) for member in members]
    return write_model_file(folder / MODEL_FILE_NAME, calibrated,
                            views(study) or (IDENTITY,), offsets,
                            recommended_threshold(study, folder, row, offsets))
