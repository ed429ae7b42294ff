"""Running a study: one shared split, each run trained (skipped when finished, resumed when interrupted), then
every run scored, ensembles and decision rules after, then the outputs.

Under torchrun every process trains each run together; rank 0 alone scores them and writes the outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lesionlab.data.readers import read_dataset
from lesionlab.data.readers.samples import SampleTable
from lesionlab.data.split import Split, read_split, write_split
from lesionlab.errors import ConfigError
from lesionlab.pipeline import new_run_split
from lesionlab.study.budget import Budget, check_budget, run_recipe
from lesionlab.study.output import write_study_outputs
from lesionlab.study.schema import Study, StudyRun, load_study
from lesionlab.study.scoring import decision_rows, ensemble_row, evaluate_study_run
from lesionlab.training import distributed
from lesionlab.training.reuse import train_or_reuse

log = logging.getLogger("lesionlab.study")


def study_folder(study: Study, runs_dir: str | Path) -> Path:
    """Where a study's split, runs and outputs live."""
    return Path(runs_dir) / f"study-{study.name}"


def check_only(study: Study, only: tuple[str, ...]) -> None:
    """`--only` must name runs of the study."""
    unknown = set(only) - {run.name for run in study.runs}
    if unknown:
        raise ConfigError(f"--only {', '.join(sorted(unknown))}: not runs of {study.name}")


def selected_runs(study: Study, only: tuple[str, ...]) -> list[StudyRun]:
    """The study's runs that `--only` names, or all of them when it names none."""
    return [run for run in study.runs if not only or run.name in only]


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


JOBS_HINT = "train it with the command `lesionlab study ... --jobs` prints"


@dataclass(frozen=True)
class PreparedStudy:
    """A study with its data, its folder and its one split, ready for its runs to train."""

    study: Study
    table: SampleTable
    folder: Path
    split: Split


def prepare_study(config: str | Path, data: str | Path | None, fmt: str | None, runs_dir: str | Path,
                  budget: Budget, only: tuple[str, ...]) -> PreparedStudy:
    """Read the study and its data, check `only`, and make the study folder, its budget record and its one
    split: the start of a study trained here and of one trained as separate jobs alike."""
    study = load_study(config)
    check_only(study, only)
    table = read_dataset(data, fmt)
    folder = study_folder(study, runs_dir)
    folder.mkdir(parents=True, exist_ok=True)
    check_budget(folder, budget)
    return PreparedStudy(study, table, folder, study_split(study, table, folder, budget))


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
    prepared = prepare_study(config, data, fmt, runs_dir, budget, only)
    study, folder = prepared.study, prepared.folder
    for run in selected_runs(study, only):
        log.info("study %s: run %s", study.name, run.name)
        train_or_reuse(run.name, run_recipe(run, budget), prepared.table, prepared.split, folder / run.name,
                       JOBS_HINT)
    if distributed.is_main():
        score_study(study, folder, budget, prepared.table.root, only)
    return folder


def score_study(study: Study, folder: Path, budget: Budget, data_root: Path,
                only: tuple[str, ...] = ()) -> None:
    """Evaluate the study's trained runs (those of `only`, when given), score the ensembles whose members
    are all among them, and write the outputs."""
    rows: list[dict[str, Any]] = []
    for run in selected_runs(study, only):
        rows.extend(evaluate_study_run(study, run, run_recipe(run, budget), folder / run.name))
    for ensemble in study.ensembles:
        if not only or set(ensemble.members) <= set(only):
            rows.append(ensemble_row(ensemble, folder))
            rows.extend(decision_rows(study, ensemble, folder))
    write_study_outputs(study, folder, budget, data_root, rows)
