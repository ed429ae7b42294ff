"""HAM10000: `HAM10000_metadata.csv` (`lesion_id,image_id,dx,...`) plus its image folders.

The images may sit in `HAM10000_images_part_1/`, `..._part_2/`, `images/` or the CSV's own folder. Only the
rows of the CSV are read, so other images in the same folder (e.g. the ISIC validation set) are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lesionlab.data.metadata import metadata_from_row
from lesionlab.data.readers.files import (
    check_new_id,
    find_csv,
    index_images,
    label_of_code,
    missing_message,
    read_csv_rows,
    visible_files,
    visible_folders,
)
from lesionlab.data.readers.samples import ReaderResult, Sample

METADATA_NAME = "ham10000_metadata.csv"
COLUMNS = ("lesion_id", "image_id", "dx")
EXPECTED = "a HAM10000 metadata CSV (lesion_id,image_id,dx,...)"


def is_metadata_header(header: Sequence[str]) -> bool:
    """Whether a CSV's columns are those of HAM10000's metadata (under another file name, say)."""
    return "image_id" in header and "dx" in header


def read(path: Path) -> ReaderResult:
    """Samples of the metadata CSV at `path` (or the one in the folder `path`), with patient fields."""
    if path.is_file():
        metadata = path
    else:
        named = [found for found in visible_files(path, {".csv"}) if found.name.lower() == METADATA_NAME]
        metadata = named[0] if named else find_csv(path, is_metadata_header, EXPECTED)
    folder = metadata.parent
    image_folders = [
        entry
        for entry in visible_folders(folder)
        if entry.name.lower().startswith("ham10000_images") or entry.name.lower() == "images"
    ]
    image_folders.append(folder)
    images = index_images(image_folders)
    samples: list[Sample] = []
    missing: list[str] = []
    seen: set[str] = set()
    for line, row in read_csv_rows(metadata, COLUMNS, EXPECTED):
        where = f"{metadata}: row {line}"
        image_id = row["image_id"]
        check_new_id(image_id, seen, where)
        label = label_of_code(row["dx"], f"{where} (image {image_id}), column dx")
        image = images.get(image_id)
        if image is None:
            missing.append(missing_message(image_id, metadata, line, image_folders))
            continue
        samples.append(
            Sample(
                image_id,
                str(image),
                label,
                row["lesion_id"] or None,
                "ham10000",
                metadata=metadata_from_row(row, f"{where} (image {image_id})"),
            )
        )
    return samples, missing
