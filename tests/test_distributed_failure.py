"""A process of a multi-process run that dies stops the others with an error naming it, instead of leaving
them waiting in a collective; a failed collective reads as what it is, with what to do."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lesionlab.training import distributed

REPO_ROOT = Path(__file__).resolve().parents[1]
HANG_SECONDS = 900
"""The collective timeout the processes get: a run that ends well before it did not wait it out."""
DYING_RANK = """
import os
import torch
from lesionlab.training import distributed

distributed.setup(torch.device("cpu"))
if distributed.rank() == 1:
    os._exit(3)
for _ in range(3):
    distributed.barrier()
"""


def test_a_failed_collective_names_this_rank_and_the_way_back() -> None:
    failed = pytest.raises(distributed.PeerLostError, match=r"rank 0 of 1: sharing .* failed.*--resume")
    with failed, distributed.collective("sharing a record"):
        raise RuntimeError("Connection closed by peer")


def test_around_a_whole_run_a_plain_runtime_error_stays_itself() -> None:
    with pytest.raises(RuntimeError, match="bug") as raised, distributed.collective("training", failures=()):
        raise RuntimeError("a bug")
    assert not isinstance(raised.value, distributed.PeerLostError)


def test_a_rank_that_dies_stops_the_others_and_is_named(tmp_path: Path) -> None:
    script = tmp_path / "dying_rank.py"
    script.write_text(DYING_RANK, encoding="utf-8")
    env = {**os.environ, distributed.TIMEOUT_ENV: str(HANG_SECONDS), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           "2", str(script)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=HANG_SECONDS // 2)  # waiting out the collective timeout fails here
    output = done.stdout + done.stderr
    assert done.returncode != 0
    root_cause = output[output.find("Root Cause"):]
    assert re.search(r"rank\s*:\s*1 ", root_cause), output[-3000:]
    assert re.search(r"exitcode\s*:\s*3", root_cause), output[-3000:]
