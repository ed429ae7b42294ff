"""Faults on disk: a run whose folder fills up or turns read-only mid-training stops with a clear error that
names the file, keeps its last completed epoch, and resumes to the same weights as a run never disturbed.

Each run is a real `lesionlab train` subprocess (the recipe and images of `test_resume_exact`); the fault
is a real refusal by the kernel (`tests/disk_fault.py`: a lowered file-size limit, or a read-only folder).
The workspace is world-readable because, as root, the read-only case runs on as `nobody`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lesionlab.models.checkpoint import load_checkpoint
from lesionlab.training.rundir import RunDirectory
from test_resume_exact import RECIPE, REPO_ROOT, assert_identical, finish, make_workspace

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


def train(workspace: dict[str, Any], *arguments: str, fault: str | None = None) -> tuple[int, str]:
    """Run `lesionlab train` (through the disk-fault helper when `fault` is MODE:COUNT); exit code, stderr."""
    entry = [str(REPO_ROOT / "tests" / "disk_fault.py"), fault] if fault else ["-m", "lesionlab"]
    process = subprocess.Popen([sys.executable, *entry, "train", *arguments], cwd=REPO_ROOT, text=True,
                               env=workspace["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    code, _, err = finish(process)
    return code, err


def new_run(workspace: dict[str, Any], name: str, fault: str | None = None) -> tuple[int, str]:
    return train(workspace, "--data", str(workspace["data"]), "--runs-dir", str(workspace["runs"]),
                 "--name", name, *RECIPE, fault=fault)


@pytest.fixture(scope="module")
def straight(workspace: dict[str, Any]) -> Path:
    """The undisturbed run the resumed ones must equal."""
    code, err = new_run(workspace, "straight")
    assert code == 0, err
    return workspace["runs"] / "straight"


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("full:1", "File too large"),  # stage 1 epoch 1 committed, then no room for stage 1 epoch 2
        ("read-only:3", "Permission denied"),  # stage 2 epoch 1 committed, then the folder turns read-only
    ],
)
def test_a_disk_fault_stops_the_run_clearly_and_it_resumes_exactly(workspace: dict[str, Any], straight: Path,
                                                                   fault: str, reason: str) -> None:
    name = fault.partition(":")[0]
    run_dir = workspace["runs"] / name
    committed_epochs = int(fault.partition(":")[2])
    code, err = new_run(workspace, name, fault=fault)

    assert code == 2, err
    assert "Traceback" not in err, err
    assert f"({reason})" in err and f"{run_dir}" in err, err
    assert "free space on that disk or make the folder writable" in err
    assert f"Resume it with:\n  lesionlab train --resume {run_dir}\n" in err

    make_writable(run_dir)
    assert len(RunDirectory(run_dir).load_state()[0]["history"]) == committed_epochs
    model, card = load_checkpoint(run_dir / "best.safetensors")  # the last best checkpoint is whole
    assert card.run_name == name and model is not None
    assert not list(run_dir.rglob(".*.tmp")), "a refused write left its temporary file"

    code, err = train(workspace, "--resume", str(run_dir))
    assert code == 0, err
    assert_identical(straight, run_dir)
