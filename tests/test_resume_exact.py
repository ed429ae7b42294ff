"""Exact resume on real images: runs killed with SIGKILL (or stopped by SIGINT/SIGTERM) at several points end
bit-identical to an uninterrupted run, and so does a fresh run given the run's own split.csv.

Each run is a real `lesionlab train` subprocess on 42 real HAM10000 images in the class-folder layout, whose
dataset order differs from image-id order (the order an older split.csv held), with a tiny CNN at 32 px, two
stages of two epochs, one process and deterministic algorithms.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

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
    " optimizer: adamw}]",
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


def train(workspace: dict[str, Any], *arguments: str, killer: str | None = None) -> subprocess.Popen[str]:
    """Start `lesionlab train` (through the kill-at-write helper when `killer` is NAME:COUNT)."""
    entry = [str(REPO_ROOT / "tests" / "kill_at_write.py"), killer] if killer else ["-m", "lesionlab"]
    return subprocess.Popen([sys.executable, *entry, "train", *arguments], cwd=REPO_ROOT,
                            env=workspace["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def new_run(workspace: dict[str, Any], name: str, *extra: str, killer: str | None = None
            ) -> subprocess.Popen[str]:
    return train(workspace, "--data", str(workspace["data"]), "--runs-dir", str(workspace["runs"]),
                 "--name", name, *RECIPE, *extra, killer=killer)


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Wait for a run (killing it past `RUN_SECONDS`); return its exit code, stdout and stderr."""
    try:
        out, err = process.communicate(timeout=RUN_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"the run took over {RUN_SECONDS} s:\n{err[-2000:]}")
    return process.returncode, out, err


def resume(workspace: dict[str, Any], name: str) -> None:
    code, _, err = finish(train(workspace, "--resume", str(workspace["runs"] / name)))
    assert code == 0, err


def signal_after_line(process: subprocess.Popen[str], prefix: str, signal_number: int) -> tuple[int, str]:
    """Send a signal once the run prints a line starting with `prefix`; return its exit code and stderr."""
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(prefix):
            process.send_signal(signal_number)
            break
    code, _, err = finish(process)
    return code, err


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


@pytest.fixture(scope="module")
def straight(workspace: dict[str, Any]) -> Path:
    """The uninterrupted run every other run must equal."""
    code, _, err = finish(new_run(workspace, "straight"))
    assert code == 0, err
    return workspace["runs"] / "straight"


def test_the_dataset_order_is_not_image_id_order(straight: Path) -> None:
    """Guard: the bug this file tests only shows where the dataset's order and the sorted order differ."""
    rows = [line.split(",") for line in (straight / "split.csv").read_text().splitlines()[2:]]
    train_ids = [row[0] for row in rows if row[4] == "train"]
    assert train_ids != sorted(train_ids)


def test_rerun_from_the_runs_split_file_is_identical(workspace: dict[str, Any], straight: Path) -> None:
    code, _, err = finish(new_run(workspace, "from-split", "--split", str(straight / "split.csv")))
    assert code == 0, err
    assert_identical(straight, workspace["runs"] / "from-split")


@pytest.mark.parametrize(
    ("case", "killer"),
    [
        ("in-stage-1", "stage1-e002.safetensors:1"),  # stage 1 epoch 2 trained, nothing of it saved
        ("stage-boundary", "history.csv:2"),  # stage 1's last state committed, the files after it not
        ("checkpoint-write", "state.safetensors:3"),  # stage 2 epoch 1's state written, never renamed
    ],
)
def test_sigkill_at_an_exact_point_then_resume(workspace: dict[str, Any], straight: Path, case: str,
                                               killer: str) -> None:
    code, _, err = finish(new_run(workspace, case, killer=killer))
    assert code == -signal.SIGKILL, err
    run_dir = workspace["runs"] / case
    if case == "checkpoint-write":
        assert list(run_dir.glob(".state.safetensors.*.tmp")), "the kill should land inside the write"
    resume(workspace, case)
    assert_identical(straight, run_dir)


def test_kill_9_from_outside_in_stage_2_then_resume(workspace: dict[str, Any], straight: Path) -> None:
    code, err = signal_after_line(new_run(workspace, "kill-9"), "stage 2 epoch 1/2", signal.SIGKILL)
    assert code == -signal.SIGKILL, err
    resume(workspace, "kill-9")
    assert_identical(straight, workspace["runs"] / "kill-9")


def test_sigterm_stops_cleanly_says_how_to_resume_and_resumes_exactly(workspace: dict[str, Any],
                                                                      straight: Path) -> None:
    name, signal_number = "stopped", signal.SIGTERM
    code, err = signal_after_line(new_run(workspace, name), "stage 2 epoch 1/2", signal_number)
    run_dir = workspace["runs"] / name
    assert code == 128 + signal_number, err
    command = f"lesionlab train --resume {run_dir}"
    assert f"Resume it with:\n  {command}\n" in err
    assert json.loads((run_dir / "run.json").read_text())["status"] == "stopped"
    resume(workspace, name)
    assert_identical(straight, run_dir)
