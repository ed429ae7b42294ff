"""Graceful stop: SIGINT or SIGTERM ends training at the next batch, keeps the run resumable, says how.

Why the stop abandons the epoch in progress rather than saving it: the resume state is committed atomically
once per epoch (`RunDirectory.save_state`) and every epoch replays bit for bit from (seed, stage, epoch), so
the last completed epoch is already a resumable state that continues exactly as if never interrupted. Saving
mid-epoch would need the sampler's position, every random generator and the loader workers' state, to save
at most one epoch of work. Stopping between batches means nothing half-done ever reaches the disk.

A first signal only sets a flag; the training loop calls `check()` before each batch, which raises
`TrainingStopped` there. A second signal stops at once (the batch in hand is dropped too): the last committed
epoch is still the resume point. The handlers exist only while `stop_on_signals` is active, and only in the
main thread (Python allows no other); the previous handlers come back afterwards. SIGTERM matters as much as
Ctrl-C: it is what `kill`, systemd, Docker and batch schedulers send, and by default it ends the process
without a word.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(KeyboardInterrupt):
    """Training stopped on a signal; the run resumes from its last completed epoch.

    A `KeyboardInterrupt`, so code that catches `Exception` lets it through, as it does Ctrl-C.
    `exit_code` follows the shell's convention, 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signal_number: int, run_dir: Path | None = None) -> None:
        self.signal_number = signal_number
        self.run_dir = run_dir
        name = signal.Signals(signal_number).name
        where = f" {run_dir}" if run_dir is not None else ""
        super().__init__(f"{name}: training stopped; the epoch in progress was abandoned and the run{where} "
                         f"keeps its last completed epoch")

    @property
    def exit_code(self) -> int:
        """128 + the signal number."""
        return 128 + self.signal_number


class _StopRequest:
    """The signal that asked for a stop, set from the handler and read by the training loop."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def handle(self, signal_number: int, frame: FrameType | None) -> None:
        """First signal: ask for a stop at the next batch. Second: stop now."""
        if self.signal_number is not None:
            raise TrainingStopped(self.signal_number)
        self.signal_number = signal_number
        print(f"\n{signal.Signals(signal_number).name} received: stopping at the next batch (send it again "
              "to stop at once); the run keeps its last completed epoch.", file=sys.stderr, flush=True)


_request = _StopRequest()


def check() -> None:
    """Raise `TrainingStopped` if a stop signal has arrived; the training loop calls it before each batch."""
    if _request.signal_number is not None:
        raise TrainingStopped(_request.signal_number)


@contextmanager
def stop_on_signals(run_dir: Path) -> Iterator[None]:
    """While training `run_dir`, turn SIGINT/SIGTERM into a clean stop that names the run."""
    global _request
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _request = _StopRequest()
    previous = {number: signal.signal(number, _request.handle) for number in STOP_SIGNALS}
    try:
        yield
    except TrainingStopped as stop:
        raise TrainingStopped(stop.signal_number, run_dir) from None
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _request = _StopRequest()


def resume_command(verb: str, argv: Sequence[str], run_dir: Path) -> str:
    """The exact command that continues a stopped run, for the verb that was running it.

    `run` resumes with its own flag (and evaluates afterwards), a study resumes by running the same command
    again, and any other run directory continues with `train --resume`.
    """
    if verb == "run":
        return shlex.join(["lesionlab", "run", "--resume", "--name", run_dir.name,
                           "--runs-dir", str(run_dir.parent)])
    if verb == "study":
        return shlex.join(["lesionlab", *argv])
    return shlex.join(["lesionlab", "train", "--resume", str(run_dir)])
