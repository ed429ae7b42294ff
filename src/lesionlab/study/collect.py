"""A study whose runs train as separate jobs: `--jobs` prepares the study folder and prints one
`lesionlab train` command per run, `--collect` builds the study's table and ensembles from the finished run
directories.

On a cluster each run of a study can be its own job (with `torchrun` where it should use several GPUs). The
commands `--jobs` prints train each run on the study's one split, with the recipe the study gives it, into
the study folder under the run's name, exactly where `lesionlab study` itself would train it. `--collect`
then trains nothing: it refuses, naming them, runs that are missing or unfinished, and runs whose recipe or
split is not the study's (the table would compare them on something other than it states).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from lesionlab.data.readers import read_dataset
from lesionlab.data.readers.samples import SampleTable
from lesionlab.data.split import read_split
from lesionlab.errors import ConfigError
from lesionlab.study.budget import Budget, check_budget, recorded_budget, run_overrides, run_recipe
from lesionlab.study.orchestration import (
    JOBS_HINT,
    check_only,
    prepare_study,
    score_study,
    selected_runs,
    study_folder,
)
from lesionlab.study.schema import StudyRun, load_study
from lesionlab.training.reuse import check_run_matches, run_status


def train_command(run: StudyRun, budget: Budget, table: SampleTable, fmt: str | None, folder: Path) -> str:
    """The `lesionlab train` command that trains `run` as `lesionlab study` would: its base recipe, the
    overrides in the order `run_recipe` applies them, the study's split, and the study folder as its place."""
    words = ["lesionlab", "train", "--config", run.base]
    for override in run_overrides(run, budget):
        words += ["--set", override]
    if budget.epochs_scale != 1.0:
        words += ["--epochs-scale", repr(budget.epochs_scale)]
    words += ["--data", str(table.root), *(["--format", fmt] if fmt else []),
              "--split", str(folder / "split.csv"), "--runs-dir", str(folder), "--name", run.name]
    return shlex.join(words)


def prepare_jobs(config: str | Path, *, data: str | Path | None = None, fmt: str | None = None,
                 runs_dir: str | Path = "runs", budget: Budget | None = None,
                 only: tuple[str, ...] = ()) -> list[str]:
    """Make the study folder, its budget record and its one split; return a `lesionlab train` command per
    run (those of `only`, when given), to start as separate jobs."""
    budget = budget or Budget()
    prepared = prepare_study(config, data, fmt, runs_dir, budget, only)
    return [train_command(run, budget, prepared.table, fmt, prepared.folder)
            for run in selected_runs(prepared.study, only)]


def collect_study(config: str | Path, *, data: str | Path | None = None, fmt: str | None = None,
                  runs_dir: str | Path = "runs", budget: Budget | None = None,
                  only: tuple[str, ...] = ()) -> Path:
    """Score a study's runs trained as separate jobs and write its outputs; train nothing.

    `budget` None means the one the study folder records (`--jobs` wrote it); a different one is refused.
    """
    study = load_study(config)
    check_only(study, only)
    folder = study_folder(study, runs_dir)
    if not (folder / "split.csv").is_file():
        raise ConfigError(f"{folder}: no study split here (split.csv); prepare the study folder and its "
                          f"commands with `lesionlab study {config} --jobs`, train each run, then collect.")
    budget = budget or recorded_budget(folder) or Budget()
    check_budget(folder, budget)
    runs = selected_runs(study, only)
    _check_finished(folder, runs)
    table = read_dataset(data, fmt)
    split = read_split(folder / "split.csv", table)
    for run in runs:
        check_run_matches(folder / run.name, run.name, run_recipe(run, budget), table, split, JOBS_HINT)
    score_study(study, folder, budget, table.root, only)
    return folder


def _check_finished(folder: Path, runs: list[StudyRun]) -> None:
    """Every run must have finished training; name each that has not, with what to do about it."""
    problems = []
    for run in runs:
        run_dir = folder / run.name
        status = run_status(run_dir)
        if status is None:
            problems.append(f"{run.name}: not trained ({run_dir} has no run.json); start its job")
        elif status != "finished":
            problems.append(f"{run.name}: {status}, not finished; let its job end, or continue it with "
                            f"`lesionlab train --resume {run_dir}`")
    if problems:
        raise ConfigError(f"{folder}: cannot collect the study yet:\n  " + "\n  ".join(problems))

