"""Run the lesionlab CLI and make the run folder's disk fail right after a chosen commit.

Usage: `python tests/disk_fault.py MODE:COUNT lesionlab-arguments...`. Right after the COUNT-th commit of
`state.safetensors` (the end of an epoch), MODE:
- `full`: lowers this process's file-size limit (RLIMIT_FSIZE, what `ulimit -f` sets) below that file's
  size, so the kernel refuses the next checkpoint write (EFBIG) as a full disk would refuse it (ENOSPC);
- `read-only`: removes write permission from the run folder and its `checkpoints/` (chmod a-w). Root is
  not bound by permissions, so a process running as root also takes the effective uid of `nobody`, and the
  kernel enforces them.
The faults are real: the kernel refuses the writes, nothing in lesionlab is replaced. A test helper only;
lesionlab itself carries no such hook.
"""

from __future__ import annotations

import os
import resource
import stat
import sys
from pathlib import Path

from lesionlab.cli import main

NOBODY = 65534
STATE_FILE = "state.safetensors"


def make_read_only(run_dir: Path) -> None:
    """chmod a-w the run folder and its checkpoints; as root, give up the right to ignore that."""
    for folder in (run_dir, run_dir / "checkpoints"):
        if folder.is_dir():
            folder.chmod(folder.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    if os.geteuid() == 0:
        os.setegid(NOBODY)
        os.seteuid(NOBODY)


def fault_after_commit(mode: str, count: int) -> None:
    """Wrap `os.replace`, which commits every lesionlab write, to break the disk after the chosen commit."""
    real_replace = os.replace
    seen = [0]

    def replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        real_replace(source, target)
        committed = Path(target)
        if committed.name != STATE_FILE:
            return
        seen[0] += 1
        if seen[0] != count:
            return
        if mode == "full":
            limit = committed.stat().st_size // 2
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        else:
            make_read_only(committed.parent)

    os.replace = replace  # type: ignore[assignment]


if __name__ == "__main__":
    fault, _, number = sys.argv[1].rpartition(":")
    if fault not in ("full", "read-only"):
        raise SystemExit(f"unknown fault {fault!r}; use full:COUNT or read-only:COUNT")
    fault_after_commit(fault, int(number))
    sys.exit(main(sys.argv[2:]))
