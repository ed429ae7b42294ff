"""Start several commands at once and collect how each ended, for tests whose cost is mostly process start-up
and one-thread training: on two cores two children run at a time instead of one.

Each child's stdout and stderr are pipes drained by threads of their own, so no pipe fills while another
child is waited for (and a child whose file-size limit a test lowered can still print its error). A child
named in `signal_at` is sent a signal at the first line of its stdout that starts with the given prefix: a
real signal from outside, at a point the child announced.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest


@dataclass(frozen=True)
class Finished:
    """How one child ended: its exit status (minus the signal number when a signal killed it), stdout and
    stderr."""

    code: int
    out: str
    err: str


def run_together(commands: Mapping[str, Sequence[str]], timeout: float, *,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 signal_at: Mapping[str, tuple[str, int]] | None = None) -> dict[str, Finished]:
    """Run every command at once; fail the test (killing them all) when one is not done within `timeout` s."""
    signal_at = signal_at or {}
    started: dict[str, tuple[subprocess.Popen[str], list[str], list[str], list[threading.Thread]]] = {}
    for name, command in commands.items():
        process = subprocess.Popen(list(command), cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        out: list[str] = []
        err: list[str] = []
        assert process.stdout is not None and process.stderr is not None
        readers = [threading.Thread(target=_read, args=(process, process.stdout, out, signal_at.get(name))),
                   threading.Thread(target=_read, args=(process, process.stderr, err, None))]
        for reader in readers:
            reader.start()
        started[name] = (process, out, err, readers)
    deadline = time.monotonic() + timeout
    finished = {}
    for name, (process, out, err, readers) in started.items():
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            for other, *_ in started.values():
                other.kill()
            pytest.fail(f"{name}: not done within {timeout} s:\n{''.join(err)[-2000:]}")
        for reader in readers:
            reader.join()
        finished[name] = Finished(process.returncode, "".join(out), "".join(err))
    return finished


def _read(process: subprocess.Popen[str], stream: IO[str], lines: list[str],
          signal_at: tuple[str, int] | None) -> None:
    """Read one of the child's streams to its end; send the signal at the first line with the prefix."""
    for line in stream:
        lines.append(line)
        if signal_at is not None and line.startswith(signal_at[0]):
            process.send_signal(signal_at[1])
            signal_at = None
    stream.close()
