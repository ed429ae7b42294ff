"""A training run end to end: recipe + dataset + split in, a complete run directory out.

`train_run` prepares the run folder (resolved config, split copy, run.json), builds the data (with the
teachers' logits of a distilled run), and hands them to the stage loop (`training.loop.run_stages`). With
`resume=True` it continues a run from its last completed epoch, mid-recipe included. Only the split's `train`
and `val` parts are read. This module keeps the run's session bookkeeping in run.json and its summary table.
SIGINT and SIGTERM stop a run cleanly (`training.interrupt`); a new run that fails before completing an
epoch removes what it created, as it holds nothing to resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesionlab.classes import NUM_CLASSES
from lesionlab.data.readers.samples import SampleTable, compute_fingerprint
from lesionlab.data.split import Split, assign_groups, read_split, write_split
from lesionlab.data.transforms import train_transform
from lesionlab.device import pick_device
from lesionlab.errors import CheckpointError, ConfigError, DiskWriteError
from lesionlab.forward_backend import check_worker_forks
from lesionlab.io_utils import atomic_write_json, atomic_write_text
from lesionlab.model_card import write_model_card
from lesionlab.precision import forward_precision
from lesionlab.run_json import read_run_json
from lesionlab.tables import Table, format_table
from lesionlab.training import distributed
from lesionlab.training.batches import StageData, stage_data
from lesionlab.training.distill import (
    AugmentedViews,
    TeacherCache,
    check_teacher,
    compute_teacher_logits,
    load_teachers,
    teacher_key,
)
from lesionlab.training.interrupt import stop_on_signals
from lesionlab.training.loop import run_stages
from lesionlab.training.progress import RunProgress
from lesionlab.training.recipe import Recipe, load_recipe
from lesionlab.training.release import ReleasePlan
from lesionlab.training.rundir import RunDirectory, epoch_seconds
from lesionlab.training.validation import stage_precision

log = logging.getLogger("lesionlab")


def now() -> str:
    """Current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def subset_table(table: SampleTable, count: int, seed: int) -> SampleTable:
    """About `count` samples, class-stratified and lesion-grouped (whole lesions only), for budget runs."""
    if count >= len(table):
        return table
    if count < NUM_CLASSES:
        raise ConfigError(f"--subset {count}: too small; use at least {NUM_CLASSES} images")
    groups = [f"lesion:{s.lesion_id}" if s.lesion_id else f"image:{s.image_id}" for s in table.samples]
    fraction = count / len(table)
    part = assign_groups(np.asarray(table.labels), groups, np.array([fraction, 1.0 - fraction]), seed)
    samples = [sample for sample, index in zip(table.samples, part, strict=True) if index == 0]
    return SampleTable(samples, table.root, table.format, compute_fingerprint(samples))


@contextmanager
def run_logging(run: RunDirectory) -> Any:
    """Send lesionlab's log records to the run's `train.log` while the run lasts (rank 0 alone writes it)."""
    if not distributed.is_main():
        yield
        return
    handler = logging.FileHandler(run.log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    previous_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(previous_level)
        handler.close()


@contextmanager
def torch_settings(recipe: Recipe) -> Any:
    """Apply the recipe's thread count and determinism for the run, then restore the process defaults."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.use_deterministic_algorithms(recipe.deterministic)
    torch.backends.cudnn.benchmark = not recipe.deterministic  # fastest CUDA kernels; a no-op on a CPU
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.benchmark = benchmark


def _refuse_existing_run(run: RunDirectory) -> None:
    """A new run never reuses a run folder."""
    if run.config.exists() or run.state_tensors.exists():
        raise CheckpointError(
            f"{run.path}: a run already exists here; choose another --name, or continue it "
            f"with `lesionlab train --resume {run.path}`."
        )


def _prepare_new_run(run: RunDirectory, recipe: Recipe, table: SampleTable, split: Split) -> Split:
    """Create the run folder with its resolved config, split copy and run.json.

    Returns the split as read back from the run's `split.csv`: the one order of samples that this run, its
    resumed sessions and any rerun from that file all train on.
    """
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.config, recipe.to_yaml())
    write_split(run.split, split)
    split = read_split(run.split, table)
    atomic_write_json(
        run.run_json,
        {
            "name": run.name,
            "status": "created",
            "created": now(),
            "sessions": [],
            "train_seconds": 0.0,
            "versions": {package: version(package) for package in ("lesionlab", "torch", "torchvision")},
            "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "dataset": {
                "root": str(table.root),
                "format": table.format,
                "fingerprint": table.fingerprint,
                "images": len(table),
            },
            "split": {
                "fingerprint": split.fingerprint,
                "seed": split.seed,
                "group": split.group,
                **{f"{part}_images": len(samples) for part, samples in split.parts.items()},
            },
        },
    )
    return split


def _update_run_json(run: RunDirectory, **changes: Any) -> dict[str, Any]:
    """Merge changes into run.json (status, sessions, times); only rank 0 writes it."""
    payload = read_run_json(run.path)
    payload.update(changes)
    if distributed.is_main():
        atomic_write_json(run.run_json, payload)
    return payload


def _check_resumable(run: RunDirectory, recipe: Recipe) -> None:
    """A resumed run must be a lesionlab run folder and keep the recipe it started with.

    Its config.yaml is read as a recipe file, so a key added to lesionlab after the run started, absent from
    that file, takes its default there as it does in `recipe`: a run from an older version resumes.
    """
    if not run.config.is_file():
        raise CheckpointError(
            f"{run.path}: not a lesionlab run directory (no config.yaml); pass the folder "
            f"of a run started with `lesionlab train`."
        )
    try:
        started_with = load_recipe(run.config)
    except ConfigError as error:
        raise ConfigError(
            f"{run.config}: this run's recipe no longer reads ({error}); resume it with the "
            f"lesionlab version that started it, or start a new run."
        ) from error
    if started_with.to_dict() != recipe.to_dict():
        raise ConfigError(
            f"{run.config}: the recipe differs from the one this run started with; a resumed "
            f"run keeps its recipe. Start a new run to change it."
        )


def train_run(
    recipe: Recipe,
    table: SampleTable,
    split: Split,
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    release: ReleasePlan | None = None,
) -> Path:
    """Train every stage of `recipe` into `run_dir` (or continue it with `resume=True`); return the folder.

    `release` makes a new run a release fit (`lesionlab.training.release`): its split has no validation
    part and each stage keeps the epoch the plan names. A resumed run reads its plan back from run.json.
    A recipe whose forward passes would crash forked loader workers is refused before anything is written
    (`forward_backend.check_worker_forks`).
    """
    check_worker_forks(recipe.forward_backend, recipe.workers)
    run = RunDirectory(run_dir)
    distributed.setup(pick_device(recipe.device))
    created_folder = not run.path.exists()
    if resume:
        _check_resumable(run, recipe)
        recorded = read_run_json(run.path).get("release")
        release = ReleasePlan.from_dict(recorded) if recorded else None
    else:
        with distributed.main_first():
            split = _start_new_run(run, recipe, table, split, release, created_folder)
    session = {"started": now(), "ended": None}
    sessions = _update_run_json(run, status="running")["sessions"]
    wall_start = time.perf_counter()
    with run_logging(run), torch_settings(recipe):
        try:
            with stop_on_signals(run.path), distributed.collective("training", failures=()):
                progress = _train(recipe, table, split, run, resume, release)
        except BaseException as error:
            stopped = isinstance(error, KeyboardInterrupt)
            session.update(ended=now(), error=f"{type(error).__name__}: {error}")
            try:
                _update_run_json(
                    run, status="stopped" if stopped else "failed", sessions=[*sessions, session]
                )
            except DiskWriteError as unrecorded:  # the disk that failed the run may refuse this too
                log.error("run.json not updated: %s", unrecorded)
            log.error("run stopped: %s: %s", type(error).__name__, error)
            if not (resume or stopped) and distributed.is_main():
                run.remove_new_run(created_folder)
            if isinstance(error, DiskWriteError) and run.state_tensors.is_file():
                raise DiskWriteError(error.path, error.reason, run_dir=run.path) from error
            raise
    session.update(ended=now(), wall_seconds=round(time.perf_counter() - wall_start, 1))
    sessions = [*sessions, session]
    _update_run_json(
        run,
        status="finished",
        sessions=sessions,
        started=sessions[0]["started"],
        ended=session["ended"],
        train_seconds=round(progress.train_seconds, 1),
        precision=progress.precision,
    )
    if distributed.is_main():
        write_model_card(run.path)
    return run.path


def _start_new_run(
    run: RunDirectory,
    recipe: Recipe,
    table: SampleTable,
    split: Split,
    release: ReleasePlan | None,
    created_folder: bool,
) -> Split:
    """Rank 0 creates the run folder (removing it again if that fails); the others read its split back."""
    if not distributed.is_main():
        return read_split(run.split, table)
    _refuse_existing_run(run)
    try:
        split = _prepare_new_run(run, recipe, table, split)
        if release is not None:
            _update_run_json(run, release=release.to_dict())
    except BaseException:
        run.remove_new_run(created_folder)
        raise
    return split


def _train(
    recipe: Recipe,
    table: SampleTable,
    split: Split,
    run: RunDirectory,
    resume: bool,
    release: ReleasePlan | None,
) -> RunProgress:
    """Build the run's data (and its teachers' logits, when distilling), then run the stage loop."""
    device = distributed.setup(pick_device(recipe.device))
    data = stage_data(recipe, table, split, device, needs_validation=release is None)
    if recipe.teacher_runs():
        with distributed.main_first():
            data = _with_teachers(recipe, data, split, run)
    return run_stages(recipe, data, run, resume, release)


def _with_teachers(recipe: Recipe, data: StageData, split: Split, run: RunDirectory) -> StageData:
    """The stage data of a distilled run: fixed views of the training set and their teachers' logits.

    The logits come from the teacher cache when it holds this exact key, else are computed (forward only,
    in the precision the first teacher's parity check allows) and cached. run.json records the teachers.
    """
    run_dirs = [Path(path) for path in recipe.teacher_runs()]
    for run_dir in run_dirs:
        check_teacher(run_dir, split)
    teachers = load_teachers(run_dirs)
    precision = stage_precision(teachers[0].model, recipe, data)
    view_count = recipe.distill.views
    cache = TeacherCache(
        teacher_key(teachers, data.train_set, view_count, recipe.seed, recipe.augment, precision["precision"])
    )
    logits = cache.load()
    computed = logits is None
    start = time.perf_counter()
    if logits is None:
        teacher_views = [
            AugmentedViews(
                data.train_set,
                recipe.seed,
                train_transform(recipe.augment, teacher.card.input_size, teacher.card.grayscale),
            )
            for teacher in teachers
        ]
        with forward_precision(precision["precision"], data.device):
            logits = compute_teacher_logits(
                teachers,
                teacher_views,
                view_count,
                recipe.stages[0].eval_batch_size,
                data.workers,
                data.device,
                data.channels_last,
            )
        cache.save(logits)
    seconds = time.perf_counter() - start
    log.info("teacher logits %s: %s (%.1f s)", tuple(logits.shape), cache.path, seconds)
    source = "computed into" if computed else "read from"
    print(
        f"distilling from {len(teachers)} teacher(s): logits of {view_count} views x "
        f"{len(data.train_set)} images {source} {cache.path} ({seconds:.0f} s)"
    )
    _update_run_json(
        run,
        distill={
            "teachers": [
                {"run": str(teacher.run_dir), "weights_sha256": teacher.weights_sha256}
                for teacher in teachers
            ],
            "views": view_count,
            "alpha": recipe.distill.alpha,
            "temperature": recipe.distill.temperature,
            "precision": precision,
            "cache": str(cache.path),
            "seconds": round(seconds, 1),
        },
    )
    return dataclasses.replace(
        data, views=AugmentedViews(data.train_set, recipe.seed, teacher_logits=logits), view_count=view_count
    )


def summary_rows(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Per stage: best epoch and its validation metrics, and the stage's total seconds (from state.json)."""
    run = RunDirectory(run_dir)
    try:
        state = json.loads(run.state_json.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise CheckpointError(f"{run.state_json}: missing; the run has not completed an epoch.") from error
    rows = []
    for stage, best in sorted(state["stage_bests"].items(), key=lambda item: int(item[0])):
        seconds = sum(epoch_seconds(row) for row in state["history"] if str(row["stage"]) == stage)
        rows.append(
            {
                "stage": int(stage),
                "best_epoch": best["epoch"],
                "val_accuracy": best.get("val_accuracy"),
                "val_balanced_accuracy": best.get("val_balanced_accuracy"),
                "val_macro_f1": best.get("val_macro_f1"),
                "seconds": seconds,
            }
        )
    return rows


def summary_table(run_dir: str | os.PathLike[str]) -> str:
    """The table `lesionlab train` ends with; `-` where a release fit had no validation part."""
    rows = tuple(
        (
            str(row["stage"]),
            str(row["best_epoch"]),
            *(
                "-" if row[key] is None else f"{row[key]:.4f}"
                for key in ("val_accuracy", "val_balanced_accuracy", "val_macro_f1")
            ),
            f"{row['seconds'] / 60:.1f} m",
        )
        for row in summary_rows(run_dir)
    )
    headers = ("stage", "best epoch", "val acc", "bal acc", "macro F1", "time")
    return format_table(Table(headers, rows, numeric_from=0))
