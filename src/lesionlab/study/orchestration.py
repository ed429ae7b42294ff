"""Running a study: one shared split, each run trained (skipped when finished, resumed when interrupted) and
scored, ensembles and decision rules after, then the outputs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lesionlab.data.readers import SampleTable, read_dataset
from lesionlab.data.split import Split, read_split, write_split
from lesionlab.errors import ConfigError
from lesionlab.pipeline import new_run_split
from lesionlab.run_json import RUN_JSON, read_run_json
from lesionlab.study.budget import Budget, check_budget, run_recipe
from lesionlab.study.output import write_study_outputs
from lesionlab.study.schema import Study, StudyRun, load_study
from lesionlab.study.scoring import decision_rows, ensemble_row, evaluate_study_run
from lesionlab.training.recipe import Recipe
from lesionlab.training.runner import train_run

log = logging.getLogger("lesionlab.study")


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
    """The run's recorded status (`finished`, `stopped`, ...), or None when it was never started."""
    return read_run_json(run_dir).get("status") if (run_dir / RUN_JSON).is_file() else None


def train_study_run(run: StudyRun, recipe: Recipe, table: SampleTable, split: Split, run_dir: Path) -> None:
    """Train a run unless it finished before; continue it where an earlier attempt stopped."""
    status = _run_status(run_dir)
    if status == "finished":
        log.info("%s: already trained, skipped", run.name)
        return
    resumable = status is not None and (run_dir / "state.json").exists()
    train_run(recipe, table, split, run_dir, resume=resumable)


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
