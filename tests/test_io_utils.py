"""Atomic writes: the target appears whole or not at all, with ordinary permissions."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from lesionlab.io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text


def test_writes_replace_the_file_and_leave_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "out.json"
    atomic_write_text(target, "old")
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [path.name for path in target.parent.iterdir()] == ["out.json"]


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "file.bin", b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.txt"
    atomic_write_text(target, "kept")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "kept"
    assert [path.name for path in tmp_path.iterdir()] == ["keep.txt"]
