"""Decode every image once, keep the resized pixels on disk, and read them back in every epoch for free.

Decoding a JPEG and resizing it costs more than a MobileNetV3 forward pass on a small CPU, and it is the same
work every epoch. The cache stores all images of one dataset as one uint8 array `(N, size, size, 3)` in a
`.npy` file (read back memory-mapped, so DataLoader workers share the page cache instead of copies) plus an
index JSON mapping `image_id` to row.

Safety rules:
- The files are named by dataset fingerprint, size and cache version, and the index repeats them; an index
  that disagrees, or an array whose shape does not match it, makes the cache stale: it is rebuilt, never read.
- The array is streamed through `io_utils.atomic_writer` (a temporary name, fsync, rename when complete);
  the index is written (atomically) after that and removed before a rebuild starts, so a half-written cache
  never has a valid index beside it. A write the disk refuses is a `DiskWriteError` naming the file, and the
  temporary file is removed.
- `ensure` builds under an exclusive file lock (`fcntl.flock`), so concurrent processes build it once.
- The memmap is opened lazily in each process and dropped when pickled, so forked or spawned workers open
  their own.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np

from lesionlab.data.imageio import load_resized_array, map_images
from lesionlab.data.readers.samples import Sample
from lesionlab.errors import DataError, DiskWriteError
from lesionlab.io_utils import atomic_write_json, atomic_writer

CACHE_VERSION = 1
CACHE_ENV = "LESIONLAB_CACHE"
FINGERPRINT_CHARS_IN_NAME = 16


def default_cache_root() -> Path:
    """`$LESIONLAB_CACHE`, else `~/.cache/lesionlab`."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lesionlab"


class DecodedImageCache:
    """Resized RGB pixels of one dataset (by fingerprint) at one size, stored once on disk.

    Call `ensure(table.samples)` once (it builds only when needed), then `get(image_id)` from any process.
    """

    def __init__(self, fingerprint: str, size: int, root: str | os.PathLike[str] | None = None) -> None:
        self.fingerprint = fingerprint
        self.size = size
        self.root = Path(root) if root is not None else default_cache_root()
        stem = f"decoded-{fingerprint[:FINGERPRINT_CHARS_IN_NAME]}-{size}px-v{CACHE_VERSION}"
        self.array_path = self.root / f"{stem}.npy"
        self.index_path = self.root / f"{stem}.json"
        self.lock_path = self.root / f".{stem}.lock"
        self._rows: dict[str, int] | None = None
        self._pixels: np.ndarray | None = None
        self._pixels_pid: int | None = None

    def __getstate__(self) -> dict[str, object]:
        """Pickle without the open memmap, so DataLoader workers open their own."""
        state = self.__dict__.copy()
        state["_pixels"] = None
        state["_pixels_pid"] = None
        return state

    def _read_valid_index(self) -> dict[str, int] | None:
        """The row index if index and array are complete and belong to this fingerprint, size and version."""
        try:
            index = json.loads(self.index_path.read_text(encoding="utf-8"))
            pixels = np.load(self.array_path, mmap_mode="r")
        except (OSError, ValueError):
            return None
        expected = {"version": CACHE_VERSION, "fingerprint": self.fingerprint, "size": self.size}
        if not isinstance(index, dict) or any(index.get(key) != value for key, value in expected.items()):
            return None
        rows = index.get("rows")
        shape_ok = pixels.dtype == np.uint8 and pixels.shape == (len(rows or {}), self.size, self.size, 3)
        return rows if isinstance(rows, dict) and shape_ok else None

    def is_ready(self, image_ids: Sequence[str] = ()) -> bool:
        """Whether a complete, current cache exists on disk and holds every id in `image_ids`."""
        rows = self._read_valid_index()
        return rows is not None and all(image_id in rows for image_id in image_ids)

    def ensure(self, samples: Sequence[Sample], workers: int = 2, progress: bool = True) -> bool:
        """Build the cache unless a current one holds all `samples` (pass the whole table's samples).

        Safe when several processes (the ranks of one run, or runs started at once) ensure the same cache:
        the build holds an exclusive lock on the cache's lock file, and a process that waited for the lock
        finds the cache ready and reads it. Returns whether this call built it.
        """
        if self._holds(samples):
            return False
        with self._open_lock() as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if self._holds(samples):
                    return False
                self.build(samples, workers=workers, progress=progress)
                return True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _open_lock(self) -> BinaryIO:
        """The build lock file, created in the cache folder; a folder that cannot hold it is a
        `DiskWriteError` naming it, like any refused write."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            return open(self.lock_path, "a+b")  # the caller's `with` closes it
        except OSError as error:
            raise DiskWriteError(self.lock_path, error.strerror or str(error)) from error

    def _holds(self, samples: Sequence[Sample]) -> bool:
        """Whether a current cache on disk holds every sample (then remember its index)."""
        rows = self._read_valid_index()
        if rows is not None and all(sample.image_id in rows for sample in samples):
            self._rows = rows
            return True
        return False

    def build(self, samples: Sequence[Sample], workers: int = 2, progress: bool = True) -> None:
        """Decode and resize every sample into a fresh array; a decode error or a write the disk refuses
        (`DiskWriteError`, naming the array) aborts, leaving no cache."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.index_path.unlink(missing_ok=True)
        except OSError as error:
            raise DiskWriteError(self.index_path, error.strerror or str(error)) from error
        with atomic_writer(self.array_path) as handle:
            self._write_array(handle, samples, workers, progress)
        rows = {sample.image_id: row for row, sample in enumerate(samples)}
        atomic_write_json(
            self.index_path,
            {"version": CACHE_VERSION, "fingerprint": self.fingerprint, "size": self.size, "rows": rows},
        )
        self._rows = rows
        self._pixels = None

    def _write_array(self, handle: BinaryIO, samples: Sequence[Sample], workers: int, progress: bool) -> None:
        """Stream a `.npy` into `handle`: its header, then each decoded row as it comes, so memory stays at
        one image, and a full disk is an `OSError` from `write` (a memory map would die of SIGBUS)."""
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
            "fortran_order": False,
            "shape": (len(samples), self.size, self.size, 3),
        }
        np.lib.format.write_array_header_1_0(handle, header)
        decode = partial(load_resized_array, size=self.size)
        paths = [sample.path for sample in samples]
        for resized in map_images(decode, paths, workers, f"cache {self.size}px", progress):
            handle.write(np.ascontiguousarray(resized, dtype=np.uint8).tobytes())

    def _row_index(self) -> dict[str, int]:
        if self._rows is None:
            self._rows = self._read_valid_index()
            if self._rows is None:
                raise DataError(
                    f"{self.array_path}: decoded-image cache is missing or stale; build it with "
                    "DecodedImageCache.ensure(table.samples)"
                )
        return self._rows

    def _pixel_array(self) -> np.ndarray:
        if self._pixels is None or self._pixels_pid != os.getpid():
            self._pixels = np.load(self.array_path, mmap_mode="r")
            self._pixels_pid = os.getpid()
        return self._pixels

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._row_index()

    def get(self, image_id: str) -> np.ndarray:
        """A writable copy of one image's pixels, uint8 `(size, size, 3)`."""
        try:
            row = self._row_index()[image_id]
        except KeyError:
            raise DataError(
                f"image '{image_id}' is not in the decoded-image cache {self.array_path}; build it "
                "for the whole dataset with DecodedImageCache.ensure(table.samples)"
            ) from None
        return np.array(self._pixel_array()[row])
