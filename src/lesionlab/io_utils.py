"""Atomic file writes (a reader never sees a half-written file; an interrupted run loses nothing saved) and
the one file hash that checkpoints, temperatures, weights and model ids are checked by."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from lesionlab.errors import DiskWriteError


def _current_umask() -> int:
    """The process umask; mkstemp creates files 0600, but outputs should get the usual permissions."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path` for writing; on a clean exit fsync it and rename it onto `path`.

    For files too large to hold in memory (the decoded-image cache), written piece by piece. Any failure
    inside the block or in the commit removes the temporary file, so `path` stays as it was; a write the
    system refuses (disk full, read-only folder, file-size limit) raises `DiskWriteError` naming `path`, so
    every verb reports it the same way.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as error:
        raise DiskWriteError(target, error.strerror or str(error)) from error
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException as error:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise DiskWriteError(target, error.strerror or str(error)) from error
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically (`atomic_writer`): the old file or the new one, never half of it."""
    with atomic_writer(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write indented JSON atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def file_sha256(*paths: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in chunks (of several files' bytes in order, for a model stored as
    graph plus weights), so any change to the weights changes the digest."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for chunk in iter(lambda handle=handle: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
