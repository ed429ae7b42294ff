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


def test_a_refused_write_names_the_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    """A file-size limit (`ulimit -f`, what a full disk does to a big write) refuses the write for real, in a
    child process so the limit stays there."""
    import subprocess
    import sys

    target = tmp_path / "state.bin"
    target.write_bytes(b"committed")
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "from lesionlab.errors import DiskWriteError\n"
        "from lesionlab.io_utils import atomic_write_bytes\n"
        "try:\n"
        f"    atomic_write_bytes({str(target)!r}, bytes(100_000))\n"
        "except DiskWriteError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.startswith(f"{target}: cannot write it (File too large)"), done.stdout + done.stderr
    assert target.read_bytes() == b"committed"
    assert [path.name for path in tmp_path.iterdir()] == ["state.bin"]


def test_a_folder_that_cannot_be_made_is_a_write_error_naming_the_file(tmp_path: Path) -> None:
    from lesionlab.errors import DiskWriteError

    (tmp_path / "a-file").write_text("")
    with pytest.raises(DiskWriteError, match=r"a-file/out\.json: cannot write it"):
        atomic_write_json(tmp_path / "a-file" / "out.json", {})
