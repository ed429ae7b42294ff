"""Folder listings, CSV reading and row checks shared by the layouts, so each reports problems alike."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from lesionlab.classes import CLASS_CODES, class_index
from lesionlab.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def visible_files(folder: Path, suffixes: Iterable[str]) -> list[Path]:
    """Files in a folder with one of the suffixes, sorted, hidden files (e.g. macOS `._x.jpg`) left out."""
    wanted = frozenset(suffixes)
    return sorted(
        entry
        for entry in folder.iterdir()
        if not entry.name.startswith(".") and entry.suffix.lower() in wanted and entry.is_file()
    )


def visible_folders(folder: Path) -> list[Path]:
    """Sub-folders of a folder, sorted, hidden ones left out."""
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith(".") and entry.is_dir())


def csv_header(path: Path) -> list[str]:
    """The lower-cased column names of a CSV (first line only)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            first = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read CSV header ({error})") from None
    return [name.strip().lower() for name in first]


def read_csv_rows(path: Path, required: Sequence[str], expected: str) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV as (line number, {lower-case column: stripped value}); a missing column is an error."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip().lower() for name in reader.fieldnames or []]
            absent = [column for column in required if column not in header]
            if absent:
                raise DataError(
                    f"{path}: missing column(s) {', '.join(absent)}; expected {expected}; "
                    f"found columns: {', '.join(header) or 'none'}"
                )
            return [
                (
                    reader.line_num,
                    {
                        key.strip().lower(): (value or "").strip()
                        for key, value in row.items()
                        if key is not None
                    },
                )
                for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read CSV ({error})") from None


def find_csv(folder: Path, accepts: Callable[[list[str]], bool], expected: str) -> Path:
    """The one CSV in a folder whose header fits; ask for the file itself when there are none or several."""
    matches = [csv_file for csv_file in visible_files(folder, {".csv"}) if accepts(csv_header(csv_file))]
    if len(matches) != 1:
        found = ", ".join(match.name for match in matches) or "none"
        raise DataError(
            f"{folder}: expected exactly one {expected}, found {found}; point at the CSV file itself"
        )
    return matches[0]


def index_images(folders: Iterable[Path]) -> dict[str, Path]:
    """Map image file stem to path over several folders; the first folder holding a stem wins."""
    index: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda item: item.name):
                stem, suffix = os.path.splitext(entry.name)
                if not entry.name.startswith(".") and suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                    index.setdefault(stem, Path(entry.path))
    return index


def label_of_code(code: str, where: str) -> int:
    """The label of a class code (any case); an unknown code is an error naming the known ones."""
    try:
        return class_index(code)
    except KeyError:
        raise DataError(
            f"{where}: unknown class '{code}'; expected one of {', '.join(CLASS_CODES)} (case-insensitive)"
        ) from None


def check_new_id(image_id: str, seen: set[str], where: str) -> None:
    """Refuse an empty image id, or one listed before (each image must be listed once)."""
    if not image_id:
        raise DataError(f"{where}: empty image id")
    if image_id in seen:
        raise DataError(f"{where}: image id '{image_id}' appears twice; each image must be listed once")
    seen.add(image_id)


def missing_message(image_id: str, csv_path: Path, line: int, folders: Sequence[Path]) -> str:
    """The `file: reason` line for a CSV row whose image was found in none of the searched folders."""
    searched = ", ".join(str(folder) for folder in folders if folder.is_dir()) or "no existing image folder"
    return f"{image_id}: listed in {csv_path} row {line} but no file {image_id}.* found (searched {searched})"


def require_folder(path: Path, layout: str) -> None:
    """The folder layouts (prefix, folders) read a folder, never a single file."""
    if not path.is_dir():
        raise DataError(f"{path}: the {layout} layout is a folder of images; point at the folder, not a file")
