"""Write any dataset in the reference's layout: grayscale square PNGs with the class digit 1..7 in front.

This lets the reference's notebooks (or anyone comparing against them) run on exactly the images lesionlab
reads, e.g. HAM10000 as `5_ISIC_0024306.png` (mel is class 5 in the reference's 1-based numbering).
"""

from __future__ import annotations

import io
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lesionlab.data.imageio import load_rgb, map_images, resize_square
from lesionlab.data.readers.samples import Sample, SampleTable, class_counts
from lesionlab.errors import DataError
from lesionlab.io_utils import atomic_write_bytes

TARGETS: tuple[str, ...] = ("prefix-gray",)
REFERENCE_SIZE = 300
_UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class ConversionResult:
    """Where the images went and how many of each class (label order 0..6)."""

    out_dir: Path
    written: int
    per_class: list[int]


def prefix_file_name(sample: Sample) -> str:
    """`<class digit 1..7>_<image id>.png`, with characters unsafe in file names replaced by `_`."""
    return f"{sample.label + 1}_{_UNSAFE_NAME_CHARACTERS.sub('_', sample.image_id)}.png"


def convert_to_prefix_gray(
    table: SampleTable,
    out_dir: str | Path,
    size: int = REFERENCE_SIZE,
    workers: int = 2,
    progress: bool = True,
) -> ConversionResult:
    """Write every sample as a `size x size` grayscale PNG named by `prefix_file_name`, each file atomically.

    An image that cannot be decoded stops the conversion with its name; files already written are complete.
    """
    target = Path(out_dir)
    names = [prefix_file_name(sample) for sample in table.samples]
    clashes = sorted(name for name, count in Counter(names).items() if count > 1)
    if clashes:
        raise DataError(
            f"{table.root}: image ids collide as output file names ({', '.join(clashes[:5])}); "
            "rename the source images so their ids differ"
        )
    target.mkdir(parents=True, exist_ok=True)

    def write_one(job: tuple[Sample, str]) -> None:
        sample, name = job
        gray = resize_square(load_rgb(sample.path).convert("L"), size)
        encoded = io.BytesIO()
        gray.save(encoded, format="PNG")
        atomic_write_bytes(target / name, encoded.getvalue())

    jobs = list(zip(table.samples, names, strict=True))
    written = sum(1 for _ in map_images(write_one, jobs, workers, "convert", progress))
    return ConversionResult(target, written, class_counts(table.samples))
