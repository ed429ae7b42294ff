"""User-facing errors: each says what went wrong, on which file, and what to do about it.

The CLI prints these without a traceback and exits with `USER_ERROR`; anything else is a bug, keeps its
traceback and exits with `INTERNAL_ERROR` (Python's own code for an uncaught exception).
"""

from __future__ import annotations

INTERNAL_ERROR = 1
USER_ERROR = 2


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


class CheckpointError(LesionlabError):
    """A checkpoint or run directory is missing, truncated or inconsistent."""


class WeightsError(LesionlabError):
    """Pretrained weights are missing or fail their checksum."""


class ConfigError(LesionlabError):
    """A recipe or a --set override is invalid."""
