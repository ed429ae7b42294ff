"""The reference's flat folder: the class digit 1..7 leads each file name (`1_abc_12.png` is akiec)."""

from __future__ import annotations

import re
from pathlib import Path

from lesionlab.data.readers.files import IMAGE_SUFFIXES, check_new_id, require_folder, visible_files
from lesionlab.data.readers.samples import ReaderResult, Sample
from lesionlab.errors import DataError

NAME = re.compile(r"^(?P<digit>[1-7])_(?P<image_id>.+)$")


def read(path: Path) -> ReaderResult:
    """Samples of every image in the folder `path`; a file without the class prefix is an error."""
    require_folder(path, "prefix")
    samples: list[Sample] = []
    seen: set[str] = set()
    for image in visible_files(path, IMAGE_SUFFIXES):
        match = NAME.match(image.stem)
        if match is None:
            raise DataError(
                f"{image}: file name does not start with a class digit 1..7 and '_' (e.g. 1_abc_12.png "
                "is akiec); rename or remove the file, or pass --format for another layout"
            )
        check_new_id(match["image_id"], seen, str(image))
        samples.append(Sample(match["image_id"], str(image), int(match["digit"]) - 1, None, "prefix"))
    return samples, []
