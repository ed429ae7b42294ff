"""Run the lesionlab CLI and SIGKILL this very process inside the atomic write of a chosen file.

Usage: `python tests/kill_at_write.py NAME:COUNT lesionlab-arguments...`. On the COUNT-th write of a file
named NAME, after its temporary file is written and fsynced and before the rename that commits it, the
process sends itself SIGKILL: a real `kill -9` at an exact point, with no timing involved. A test helper
only; lesionlab itself carries no such hook.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from lesionlab.cli import main


def kill_at_write(name: str, count: int) -> None:
    """Wrap `os.replace`, which `lesionlab.io_utils` commits every write with, to die at the chosen write."""
    real_replace = os.replace
    seen = [0]

    def replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        if Path(target).name == name:
            seen[0] += 1
            if seen[0] == count:
                os.kill(os.getpid(), signal.SIGKILL)
        real_replace(source, target)

    os.replace = replace  # type: ignore[assignment]


if __name__ == "__main__":
    file_name, _, number = sys.argv[1].rpartition(":")
    kill_at_write(file_name, int(number))
    sys.exit(main(sys.argv[2:]))
