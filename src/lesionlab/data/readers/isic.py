"""ISIC: a one-hot ground-truth CSV (`image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`) with its images.

The images sit beside the CSV, in `images/`, in a folder named like the CSV, or in the challenge's `..._Input`
folder; lesion ids and patient fields come from the matching `..._metadata.csv` when present.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lesionlab.classes import CLASS_CODES
from lesionlab.data.metadata import PatientMetadata, metadata_from_row
from lesionlab.data.readers.files import (
    check_new_id,
    csv_header,
    find_csv,
    index_images,
    missing_message,
    read_csv_rows,
    visible_files,
    visible_folders,
)
from lesionlab.data.readers.samples import ReaderResult, Sample
from lesionlab.errors import DataError

COLUMNS = ("image", *CLASS_CODES)
EXPECTED = "an ISIC one-hot ground-truth CSV (image,MEL,NV,BCC,AKIEC,BKL,DF,VASC)"


def is_one_hot_header(header: Sequence[str]) -> bool:
    """Whether a CSV's columns are an ISIC ground truth: `image` and one column per class code."""
    return "image" in header and all(code in header for code in CLASS_CODES)


def image_folders(ground_truth: Path) -> list[Path]:
    """Where ISIC images may sit: beside the CSV, in `images/`, in a folder named like the CSV, or in the
    challenge's sibling folder sharing the CSV's prefix (`ISIC2018_Task3_Validation_Input/` for
    `ISIC2018_Task3_Validation_GroundTruth.csv`)."""
    folder = ground_truth.parent
    candidates = [folder, folder / "images", folder / ground_truth.stem]
    stem = ground_truth.stem.lower()
    prefix = stem.split("groundtruth")[0] if "groundtruth" in stem else ""
    if prefix:
        for base in (folder, folder.parent):
            candidates.extend(
                entry
                for entry in visible_folders(base)
                if entry.name.lower().startswith(prefix) and entry not in candidates
            )
    return [candidate for candidate in candidates if candidate.is_dir()]


def lesion_metadata(ground_truth: Path) -> dict[str, tuple[str | None, PatientMetadata | None]]:
    """Lesion id and patient fields per image from the metadata CSV named like the ground truth
    (`..._GroundTruth` -> `..._metadata`)."""
    stem = ground_truth.stem.lower()
    if "groundtruth" not in stem:
        return {}
    wanted = stem.replace("groundtruth", "metadata") + ".csv"
    matches = [
        csv_file
        for csv_file in visible_files(ground_truth.parent, {".csv"})
        if csv_file.name.lower() == wanted
    ]
    if not matches:
        return {}
    metadata = matches[0]
    image_column = "image" if "image" in csv_header(metadata) else "image_id"
    rows = read_csv_rows(
        metadata, (image_column, "lesion_id"), "an ISIC metadata CSV (image_id,lesion_id,...)"
    )
    return {
        row[image_column]: (row["lesion_id"] or None, metadata_from_row(row, f"{metadata}: row {line}"))
        for line, row in rows
        if row[image_column]
    }


def one_hot_label(row: dict[str, str], where: str) -> int:
    """The label a ground-truth row marks with its one 1 (every other class column 0)."""
    values: list[float] = []
    for code in CLASS_CODES:
        try:
            values.append(float(row[code]))
        except ValueError:
            raise DataError(f"{where}, column {code.upper()}: '{row[code]}' is not a number") from None
    hot = [index for index, value in enumerate(values) if value == 1.0]
    if len(hot) != 1 or any(value not in (0.0, 1.0) for value in values):
        raise DataError(
            f"{where}: expected exactly one 1 (others 0) over MEL, NV, BCC, AKIEC, BKL, DF, VASC, found "
            f"{', '.join(row[code] for code in CLASS_CODES)} (in akiec..vasc order); lesionlab knows "
            "only the 7 HAM10000 classes"
        )
    return hot[0]


def read(path: Path) -> ReaderResult:
    """Samples of the ground-truth CSV at `path` (or the one in the folder `path`)."""
    ground_truth = path if path.is_file() else find_csv(path, is_one_hot_header, EXPECTED)
    rows = read_csv_rows(ground_truth, COLUMNS, EXPECTED)
    folders = image_folders(ground_truth)
    images = index_images(folders)
    extras = lesion_metadata(ground_truth)
    samples: list[Sample] = []
    missing: list[str] = []
    seen: set[str] = set()
    for line, row in rows:
        image_id = row["image"]
        where = f"{ground_truth}: row {line} (image {image_id})"
        check_new_id(image_id, seen, where)
        label = one_hot_label(row, where)
        image = images.get(image_id)
        if image is None:
            missing.append(missing_message(image_id, ground_truth, line, folders))
            continue
        lesion_id, metadata = extras.get(image_id, (None, None))
        samples.append(Sample(image_id, str(image), label, lesion_id, "isic", metadata=metadata))
    return samples, missing
