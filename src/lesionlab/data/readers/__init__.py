"""Read a skin-lesion dataset, in whichever layout it arrived, into one `SampleTable`.

Five layouts are understood, detected from the path (or forced with `fmt`), one module each: `ham10000`
(metadata CSV plus image folders), `isic` (one-hot ground-truth CSV plus images), `prefix` (the reference's
flat folder, class digit first), `folders` (one sub-folder per class) and `medmnist` (a DermaMNIST `.npz`,
keeping its own split). `locate` finds the dataset when no path is given, `samples` holds the rows every
reader returns and the fingerprint over them, so nothing downstream knows or cares where the data came from.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from lesionlab.classes import is_known_code
from lesionlab.data.readers import folders, ham10000, isic, medmnist, prefix
from lesionlab.data.readers.files import IMAGE_SUFFIXES, csv_header, visible_files, visible_folders
from lesionlab.data.readers.locate import HOW_TO_GET_DATA, resolve_data_path
from lesionlab.data.readers.samples import ReaderResult, SampleTable, compute_fingerprint
from lesionlab.errors import DataError

READERS: dict[str, Callable[[Path], ReaderResult]] = {
    "ham10000": ham10000.read,
    "isic": isic.read,
    "prefix": prefix.read,
    "folders": folders.read,
    "medmnist": medmnist.read,
}
FORMATS: tuple[str, ...] = tuple(READERS)
MISSING_SHOWN = 10


def read_dataset(
    path: str | os.PathLike[str] | None = None, fmt: str | None = None, *, skip_missing: bool = False
) -> SampleTable:
    """Read a dataset in any supported layout; `fmt` overrides detection.

    A row whose image file is missing is an error naming it, unless `skip_missing` is set: then the row is
    left out and listed in `SampleTable.missing` (so `lesionlab data inspect` can report every problem).
    """
    location = resolve_data_path(path)
    layout = (fmt or detect_format(location)).lower()
    if layout not in READERS:
        raise DataError(f"unknown dataset format '{fmt}'; choose one of {', '.join(FORMATS)}")
    samples, missing = READERS[layout](location)
    if missing and not skip_missing:
        shown = "\n  ".join(missing[:MISSING_SHOWN])
        more = f"\n  ... and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else ""
        raise DataError(
            f"{len(missing)} image(s) listed in the dataset at {location} are missing:\n  {shown}{more}\n"
            "Restore them, or run `lesionlab data inspect` to list every problem."
        )
    if not samples:
        raise DataError(f"{location}: no images found in the {layout} layout")
    root = location if location.is_dir() else location.parent
    return SampleTable(samples, root, layout, compute_fingerprint(samples), missing)


def detect_format(path: Path) -> str:
    """Recognise the layout of a dataset folder or file; raise DataError listing the layouts if none fits."""
    if path.is_file():
        return _detect_file_format(path)
    csv_files = visible_files(path, {".csv"})
    if any(csv_file.name.lower() == ham10000.METADATA_NAME for csv_file in csv_files):
        return "ham10000"
    headers = [csv_header(csv_file) for csv_file in csv_files]
    if any(isic.is_one_hot_header(header) for header in headers):
        return "isic"
    if any(ham10000.is_metadata_header(header) for header in headers):
        return "ham10000"
    if visible_files(path, {".npz"}):
        return "medmnist"
    if any(is_known_code(folder.name) for folder in visible_folders(path)):
        return "folders"
    if any(prefix.NAME.match(image.stem) for image in visible_files(path, IMAGE_SUFFIXES)):
        return "prefix"
    raise DataError(
        f"{path}: no dataset layout recognised. lesionlab reads: HAM10000 (HAM10000_metadata.csv + image "
        "folders), ISIC (one-hot ground-truth CSV + images), prefix (files named <digit 1..7>_<id>.png), "
        "folders (one sub-folder per class code: akiec/, bcc/, ...), MedMNIST (.npz). Point at such a "
        f"folder or file, or pass --format. {HOW_TO_GET_DATA}"
    )


def _detect_file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "medmnist"
    if suffix == ".csv":
        header = csv_header(path)
        if isic.is_one_hot_header(header):
            return "isic"
        if "image_id" in header or "dx" in header:
            return "ham10000"
        raise DataError(
            f"{path}: not a dataset CSV: expected {ham10000.EXPECTED} or {isic.EXPECTED}; "
            f"found columns: {', '.join(header) or 'none'}"
        )
    raise DataError(
        f"{path}: cannot read a dataset from a '{suffix}' file; point at a dataset folder, a CSV "
        "(HAM10000 metadata or ISIC ground truth) or a MedMNIST .npz"
    )
