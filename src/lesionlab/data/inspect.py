"""Survey a dataset before training on it: class balance, lesions per class, image sizes, and every bad file.

A training run that dies at epoch 7 on a truncated JPEG wastes hours, so `inspect` decodes every image up
front and lists each problem as `file: reason` instead of stopping at the first.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from lesionlab.classes import CLASS_CODES
from lesionlab.data.imageio import load_rgb, map_images, read_image_size
from lesionlab.data.readers import read_dataset
from lesionlab.data.readers.samples import Sample, class_counts
from lesionlab.errors import ImageDecodeError

COMMON_SIZES_SHOWN = 5


@dataclass
class ClassSummary:
    """One class's row: images, their share of the dataset, distinct lesions (None when ids are unknown)."""

    code: str
    images: int
    share: float
    lesions: int | None


@dataclass
class SizeSummary:
    """Image dimensions seen: the most common (width, height) pairs with counts, and the ranges."""

    most_common: list[tuple[tuple[int, int], int]]
    min_width: int
    max_width: int
    min_height: int
    max_height: int


@dataclass
class InspectionReport:
    """Everything `lesionlab data inspect` prints.

    `images` counts the samples found, `readable` those that decoded; `problems` holds `file: reason` lines
    for bad images and for listed images whose file is missing.
    """

    root: Path
    format: str
    fingerprint: str
    images: int
    readable: int
    lesions: int | None
    classes: list[ClassSummary]
    sizes: SizeSummary | None
    problems: list[str]
    decoded: bool

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict for programs (`--json`)."""
        payload = asdict(self)
        payload["root"] = str(self.root)
        return payload


def inspect_dataset(
    path: str | os.PathLike[str] | None = None,
    fmt: str | None = None,
    decode: bool = True,
    workers: int = 2,
    progress: bool = True,
) -> InspectionReport:
    """Read a dataset and check its images (fully decoded, or headers only with `decode=False`)."""
    table = read_dataset(path, fmt, skip_missing=True)
    probe = _decoded_size if decode else _header_size
    sizes: list[tuple[int, int]] = []
    problems = list(table.missing)
    for size, problem in map_images(
        probe, table.samples, workers, "decode" if decode else "headers", progress
    ):
        if problem is not None:
            problems.append(problem)
        else:
            sizes.append(size)
    return InspectionReport(
        root=table.root,
        format=table.format,
        fingerprint=table.fingerprint,
        images=len(table),
        readable=len(sizes),
        lesions=_lesion_count(table.samples),
        classes=_class_summaries(table.samples),
        sizes=_size_summary(sizes),
        problems=problems,
        decoded=decode,
    )


def _decoded_size(sample: Sample) -> tuple[tuple[int, int], str | None]:
    try:
        return load_rgb(sample.path).size, None
    except ImageDecodeError as error:
        return (0, 0), f"{error.path}: {error.reason}"


def _header_size(sample: Sample) -> tuple[tuple[int, int], str | None]:
    try:
        return read_image_size(sample.path), None
    except ImageDecodeError as error:
        return (0, 0), f"{error.path}: {error.reason}"


def _lesion_count(samples: list[Sample]) -> int | None:
    """Distinct lesions, a sample without a lesion id counting as its own; None when no sample has one."""
    if not samples:
        return 0
    if not any(sample.lesion_id for sample in samples):
        return None
    return len({sample.lesion_id or f"image:{sample.image_id}" for sample in samples})


def _class_summaries(samples: list[Sample]) -> list[ClassSummary]:
    counts = class_counts(samples)
    total = max(len(samples), 1)
    return [
        ClassSummary(
            code, count, count / total, _lesion_count([sample for sample in samples if sample.label == label])
        )
        for label, (code, count) in enumerate(zip(CLASS_CODES, counts, strict=True))
    ]


def _size_summary(sizes: list[tuple[int, int]]) -> SizeSummary | None:
    if not sizes:
        return None
    widths = [width for width, _ in sizes]
    heights = [height for _, height in sizes]
    return SizeSummary(
        Counter(sizes).most_common(COMMON_SIZES_SHOWN), min(widths), max(widths), min(heights), max(heights)
    )
