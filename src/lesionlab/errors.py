"""User-facing errors: each says what went wrong, on which file, and what to do about it; and the exit codes
of every verb, in one place.

The CLI prints these errors without a traceback and exits with `USER_ERROR`; anything else is a bug: the CLI
prints its traceback with a request to report it and exits with `INTERNAL_ERROR`, a code of its own, so a
script can tell a bug from bad input (Python would exit 1 for both, and 1 here means "some inputs bad").
"""

from __future__ import annotations

from pathlib import Path

SOME_INPUTS_BAD = 1  # every good input was processed and each bad one named (predict, data inspect)
USER_ERROR = 2  # bad arguments or unusable data or environment, reported as one message; nothing was done
REFUSED = 3  # the work ran, but its result failed a quality check and was not kept (export --int8)
INTERNAL_ERROR = 4  # a bug in lesionlab: the traceback and a request to report it


class LesionlabError(Exception):
    """An error caused by the user's input or environment, with a message meant for a person."""


class DataError(LesionlabError):
    """A dataset, CSV, split file or image cannot be used as given."""


class ImageDecodeError(DataError):
    """One image file cannot be decoded; names the file and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class DiskWriteError(LesionlabError):
    """A file could not be written: the disk is full, the folder is read-only, or a file-size limit was hit.

    `path` is the file that failed. `run_dir` is set when a training run was stopped by it and can resume
    from its last completed epoch; the CLI then prints the command that resumes it.
    """

    def __init__(self, path: Path, reason: str, run_dir: Path | None = None) -> None:
        where = (f"; the run {run_dir} keeps its last completed epoch and resumes from it once the disk has "
                 f"room and the folder is writable" if run_dir is not None else "")
        super().__init__(f"{path}: cannot write it ({reason}); free space on that disk or make the folder "
                         f"writable{where}")
        self.path = path
        self.reason = reason
        self.run_dir = run_dir


class CheckpointError(LesionlabError):
    """A checkpoint or run directory is missing, truncated or inconsistent."""


class WeightsError(LesionlabError):
    """Pretrained weights are missing or fail their checksum."""


class ConfigError(LesionlabError):
    """A recipe or a --set override is invalid."""
