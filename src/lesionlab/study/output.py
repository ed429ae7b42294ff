"""A study's outputs: study.json, study.csv, study.md (with the comparison table) and study.png, all from
the same rows."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from lesionlab.classes import CLASS_CODES
from lesionlab.evaluation.report import number
from lesionlab.io_utils import atomic_write_json, atomic_write_text
from lesionlab.study.budget import Budget
from lesionlab.study.schema import Study
from lesionlab.tables import Table, format_table


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
