"""Faults on disk: a run whose folder fills up or turns read-only mid-training stops with a clear error that
names the file, keeps its last completed epoch, and resumes to the same weights as a run never disturbed.

Each run is a real `lesionlab train` subprocess (the recipe and images of `test_resume_exact`), started
together with the others (`concurrent_runs`); the fault is a real refusal by the kernel
(`tests/disk_fault.py`: a lowered file-size limit, or a read-only folder).
The workspace is world-readable because, as root, the read-only case runs on as `nobody`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from concurrent_runs import Finished, run_together
from lesionlab.models.checkpoint import load_checkpoint
from lesionlab.training.rundir import RunDirectory
from test_resume_exact import RECIPE, REPO_ROOT, RUN_SECONDS, assert_identical, make_workspace

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def workspace(shared_data_dir: Path) -> Iterator[dict[str, Any]]:
    """Real images in class folders (symbolic links), an image cache and a runs folder, readable by all."""
    root = Path(tempfile.mkdtemp(prefix="lesionlab-disk-faults-"))
    root.chmod(0o755)
    yield make_workspace(shared_data_dir, root)
    for folder in (root / "runs").glob("*"):
        make_writable(folder)
    shutil.rmtree(root, ignore_errors=True)


def make_writable(run_dir: Path) -> None:
    """Undo the read-only fault (the test process keeps its own rights)."""
    for folder in (run_dir, run_dir / "checkpoints"):
        if folder.is_dir():
            folder.chmod(0o755)


FAULTS = {
    "full": ("full:1", "File too large"),  # stage 1 epoch 1 committed, then no room for stage 1 epoch 2
    "read-only": ("read-only:3", "Permission denied"),  # stage 2 epoch 1 committed, then the folder read-only
}


def train_command(*arguments: str, fault: str | None = None) -> list[str]:
    """`lesionlab train ARGUMENTS` (through the disk-fault helper when `fault` is MODE:COUNT)."""
    entry = [str(REPO_ROOT / "tests" / "disk_fault.py"), fault] if fault else ["-m", "lesionlab"]
    return [sys.executable, *entry, "train", *arguments]


def new_run(workspace: dict[str, Any], name: str, fault: str | None = None) -> list[str]:
    return train_command("--data", str(workspace["data"]), "--runs-dir", str(workspace["runs"]),
                         "--name", name, *RECIPE, fault=fault)


@dataclass(frozen=True)
class Runs:
    """How the undisturbed run, each faulted run and each resume ended, and what each faulted run's folder
    held once its disk was back (before its resume)."""

    started: dict[str, Finished]
    resumed: dict[str, Finished]
    committed_epochs: dict[str, int]
    best_run_names: dict[str, str]
    temporaries: dict[str, list[str]]


@pytest.fixture(scope="module")
def runs(workspace: dict[str, Any]) -> Runs:
    """The undisturbed run and the faulted ones started together, then the faulted ones resumed together."""
    folder = workspace["runs"]
    together = {"env": workspace["env"], "cwd": REPO_ROOT}
    started = run_together({"straight": new_run(workspace, "straight"),
                            **{name: new_run(workspace, name, fault) for name, (fault, _) in FAULTS.items()}},
                           RUN_SECONDS, **together)
    assert started["straight"].code == 0, started["straight"].err
    committed, best, temporaries = {}, {}, {}
    for name in FAULTS:
        make_writable(folder / name)
        committed[name] = len(RunDirectory(folder / name).load_state()[0]["history"])
        model, card = load_checkpoint(folder / name / "best.safetensors")  # the last best checkpoint is whole
        best[name] = card.run_name if model is not None else ""
        temporaries[name] = [path.name for path in (folder / name).rglob(".*.tmp")]
    resumed = run_together({name: train_command("--resume", str(folder / name)) for name in FAULTS},
                           RUN_SECONDS, **together)
    return Runs(started, resumed, committed, best, temporaries)


@pytest.mark.parametrize("name", FAULTS)
def test_a_disk_fault_stops_the_run_clearly_and_it_resumes_exactly(workspace: dict[str, Any], runs: Runs,
                                                                   name: str) -> None:
    fault, reason = FAULTS[name]
    run_dir = workspace["runs"] / name
    err = runs.started[name].err

    assert runs.started[name].code == 2, err
    assert "Traceback" not in err, err
    assert f"({reason})" in err and f"{run_dir}" in err, err
    assert "free space on that disk or make the folder writable" in err
    assert f"Resume it with:\n  lesionlab train --resume {run_dir}\n" in err

    assert runs.committed_epochs[name] == int(fault.partition(":")[2])
    assert runs.best_run_names[name] == name
    assert runs.temporaries[name] == [], "a refused write left its temporary file"

    assert runs.resumed[name].code == 0, runs.resumed[name].err
    assert_identical(workspace["runs"] / "straight", run_dir)
