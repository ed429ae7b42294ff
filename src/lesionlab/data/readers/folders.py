"""One sub-folder per class code (`akiec/`, `BCC/`, ...), each holding that class's images."""

from __future__ import annotations

from pathlib import Path

from lesionlab.classes import CLASS_CODES
from lesionlab.data.readers.files import (
    IMAGE_SUFFIXES,
    check_new_id,
    label_of_code,
    require_folder,
    visible_files,
    visible_folders,
)
from lesionlab.data.readers.samples import ReaderResult, Sample
from lesionlab.errors import DataError


def read(path: Path) -> ReaderResult:
    """Samples of every image in the class folders of `path`; a folder not named by a class is an error."""
    require_folder(path, "folders")
    samples: list[Sample] = []
    seen: set[str] = set()
    class_folders = visible_folders(path)
    if not class_folders:
        raise DataError(
            f"{path}: no class sub-folders; expected one per class code: {', '.join(CLASS_CODES)}"
        )
    for folder in class_folders:
        label = label_of_code(folder.name, f"{folder}: folder name")
        for image in visible_files(folder, IMAGE_SUFFIXES):
            check_new_id(image.stem, seen, str(image))
            samples.append(Sample(image.stem, str(image), label, None, "folders"))
    return samples, []
