"""Exact resume on real images: runs killed with SIGKILL (or stopped by SIGINT/SIGTERM) at several points end
bit-identical to an uninterrupted run, and so does a fresh run given the run's own split.csv.

Each run is a real `lesionlab train` subprocess on 42 real HAM10000 images in the class-folder layout, whose
dataset order differs from image-id order (the order an older split.csv held), with a tiny CNN at 32 px, two
stages of two epochs, one process and deterministic algorithms. The runs start together (`concurrent_runs`),
each on one thread, so two cores run two at a time. Stage 2 mixes half its batches (MixUp or CutMix), so
the mixing draws are part of what must resume exactly.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from concurrent_runs import Finished, run_together
from lesionlab.training.rundir import TIMING_COLUMNS

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[1]

IMAGES_PER_CLASS = 6
RECIPE = (
    "--set", "arch=small_cnn", "--set", "pretrained=none", "--set", "image_size=32", "--set", "workers=0",
    "--set", "threads=1", "--set", "deterministic=true", "--set", "channels_last=false",
    "--set", "device=cpu",
    "--set", "stages=["
    "{trainable: head, bn: frozen, feature_cache: {views: 2}, epochs: 2, batch_size: 8, eval_batch_size: 16,"
    " lr: 0.01},"
    "{trainable: all, bn: train, epochs: 2, batch_size: 8, eval_batch_size: 16, lr: 0.001,"
    " optimizer: adamw, mixing: {mixup_alpha: 0.2, cutmix_alpha: 1.0, probability: 0.5}}]",
)
WEIGHT_FILES = ("state.safetensors", "best.safetensors", "stage1-best.safetensors", "stage2-best.safetensors")
RUN_SECONDS = 900


def make_workspace(shared_data_dir: Path, root: Path) -> dict[str, Any]:
    """Under `root`: a class-folder dataset of `IMAGES_PER_CLASS` real images per class (symbolic links), a
    private image cache and a runs folder, with the environment a `lesionlab` subprocess needs for them."""
    import csv

    data = root / "data"
    with (shared_data_dir / "HAM10000_metadata.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_class: dict[str, list[str]] = {}
    for row in rows:
        by_class.setdefault(row["dx"], []).append(row["image_id"])
    for code, image_ids in by_class.items():
        (data / code).mkdir(parents=True)
        ordered = sorted(image_ids)
        for image_id in ordered[:: len(ordered) // IMAGES_PER_CLASS][:IMAGES_PER_CLASS]:
            (data / code / f"{image_id}.jpg").symlink_to(shared_data_dir / "images" / f"{image_id}.jpg")
    env = {**os.environ, "LESIONLAB_CACHE": str(root / "cache"), "PYTHONUNBUFFERED": "1"}
    return {"data": data, "runs": root / "runs", "env": env}


@pytest.fixture(scope="module")
def workspace(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A class-folder dataset of real images (symbolic links), a shared image cache, and a runs folder."""
    yield make_workspace(shared_data_dir, tmp_path_factory.mktemp("resume"))


def train_command(*arguments: str, killer: str | None = None) -> list[str]:
    """`lesionlab train ARGUMENTS` (through the kill-at-write helper when `killer` is NAME:COUNT)."""
    entry = [str(REPO_ROOT / "tests" / "kill_at_write.py"), killer] if killer else ["-m", "lesionlab"]
    return [sys.executable, *entry, "train", *arguments]


def new_run(workspace: dict[str, Any], name: str, *extra: str, killer: str | None = None) -> list[str]:
    """The command of a new run `name` of `RECIPE` on the workspace's data."""
    return train_command("--data", str(workspace["data"]), "--runs-dir", str(workspace["runs"]),
                         "--name", name, *RECIPE, *extra, killer=killer)


def run_all(workspace: dict[str, Any], commands: dict[str, list[str]],
            signal_at: dict[str, tuple[str, int]] | None = None) -> dict[str, Finished]:
    """Run the commands together in the workspace's environment (`concurrent_runs`)."""
    return run_together(commands, RUN_SECONDS, env=workspace["env"], cwd=REPO_ROOT, signal_at=signal_at)


def assert_identical(expected: Path, actual: Path) -> None:
    """Every weight file bit for bit, and the history without its timings."""
    for name in WEIGHT_FILES:
        want, got = load_file(expected / name), load_file(actual / name)
        assert want.keys() == got.keys(), name
        assert all(torch.equal(want[key], got[key]) for key in want), f"{actual.name}: {name} differs"
    assert history(expected) == history(actual)
    assert not list(actual.rglob(".*.tmp")), "a temporary file of a cut-short write was left behind"


def history(run_dir: Path) -> list[dict[str, Any]]:
    rows = json.loads((run_dir / "state.json").read_text())["history"]
    return [{key: value for key, value in row.items() if key not in TIMING_COLUMNS} for row in rows]


KILLED_AT_WRITE = {
    "in-stage-1": "stage1-e002.safetensors:1",  # stage 1 epoch 2 trained, nothing of it saved
    "stage-boundary": "history.csv:2",  # stage 1's last state committed, the files after it not
    "checkpoint-write": "state.safetensors:3",  # stage 2 epoch 1's state written, never renamed
}
SIGNALLED_IN_STAGE_2 = {"kill-9": signal.SIGKILL, "stopped": signal.SIGTERM}
STAGE_2_LINE = "stage 2 epoch 1/2"


@dataclass(frozen=True)
class Runs:
    """How this module's processes ended, and what each interrupted run's folder held before its resume."""

    started: dict[str, Finished]
    """The first process of each run (the rerun from split.csv among them)."""
    resumed: dict[str, Finished]
    """The resume of each interrupted run."""
    status: dict[str, str]
    """Each interrupted run's run.json status before its resume."""
    temporaries: dict[str, list[str]]
    """Each interrupted run's temporary files of cut-short writes before its resume."""


@pytest.fixture(scope="module")
def runs(workspace: dict[str, Any]) -> Runs:
    """Every run of this module, in two waves of processes started together: the uninterrupted run and each
    interrupted one (killed at an exact write, or signalled from outside once it announces stage 2); then,
    once all have ended, the resume of each interrupted run and a new run given the first one's split.csv."""
    folder = workspace["runs"]
    started = run_all(
        workspace,
        {"straight": new_run(workspace, "straight"),
         **{case: new_run(workspace, case, killer=killer) for case, killer in KILLED_AT_WRITE.items()},
         **{case: new_run(workspace, case) for case in SIGNALLED_IN_STAGE_2}},
        signal_at={case: (STAGE_2_LINE, number) for case, number in SIGNALLED_IN_STAGE_2.items()},
    )
    assert started["straight"].code == 0, started["straight"].err
    interrupted = [*KILLED_AT_WRITE, *SIGNALLED_IN_STAGE_2]
    status = {case: json.loads((folder / case / "run.json").read_text())["status"] for case in interrupted}
    temporaries = {case: [path.name for path in (folder / case).rglob(".*.tmp")] for case in interrupted}
    resumed = run_all(workspace, {
        "from-split": new_run(workspace, "from-split", "--split", str(folder / "straight" / "split.csv")),
        **{case: train_command("--resume", str(folder / case)) for case in interrupted},
    })
    started["from-split"] = resumed.pop("from-split")
    return Runs(started, resumed, status, temporaries)


def test_the_dataset_order_is_not_image_id_order(workspace: dict[str, Any], runs: Runs) -> None:
    """Guard: the bug this file tests only shows where the dataset's order and the sorted order differ."""
    lines = (workspace["runs"] / "straight" / "split.csv").read_text().splitlines()[2:]
    train_ids = [row[0] for row in (line.split(",") for line in lines) if row[4] == "train"]
    assert train_ids != sorted(train_ids)


def test_rerun_from_the_runs_split_file_is_identical(workspace: dict[str, Any], runs: Runs) -> None:
    assert runs.started["from-split"].code == 0, runs.started["from-split"].err
    assert_identical(workspace["runs"] / "straight", workspace["runs"] / "from-split")


@pytest.mark.parametrize("case", KILLED_AT_WRITE)
def test_sigkill_at_an_exact_point_then_resume(workspace: dict[str, Any], runs: Runs, case: str) -> None:
    assert runs.started[case].code == -signal.SIGKILL, runs.started[case].err
    if case == "checkpoint-write":
        assert any(name.startswith(".state.safetensors.") for name in runs.temporaries[case]), \
            "the kill should land inside the write"
    assert runs.resumed[case].code == 0, runs.resumed[case].err
    assert_identical(workspace["runs"] / "straight", workspace["runs"] / case)


def test_kill_9_from_outside_in_stage_2_then_resume(workspace: dict[str, Any], runs: Runs) -> None:
    assert runs.started["kill-9"].code == -signal.SIGKILL, runs.started["kill-9"].err
    assert runs.resumed["kill-9"].code == 0, runs.resumed["kill-9"].err
    assert_identical(workspace["runs"] / "straight", workspace["runs"] / "kill-9")


def test_sigterm_stops_cleanly_says_how_to_resume_and_resumes_exactly(workspace: dict[str, Any],
                                                                      runs: Runs) -> None:
    run_dir = workspace["runs"] / "stopped"
    stopped = runs.started["stopped"]
    assert stopped.code == 128 + signal.SIGTERM, stopped.err
    assert f"Resume it with:\n  lesionlab train --resume {run_dir}\n" in stopped.err
    assert runs.status["stopped"] == "stopped"
    assert runs.resumed["stopped"].code == 0, runs.resumed["stopped"].err
    assert_identical(workspace["runs"] / "straight", run_dir)
