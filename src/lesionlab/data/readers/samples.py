"""The rows every reader returns, and the fingerprint that ties a run, a cache or a split to its data."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lesionlab.classes import CLASS_CODES, NUM_CLASSES
from lesionlab.data.imageio import parse_npz_member
from lesionlab.data.metadata import PatientMetadata


@dataclass(frozen=True)
class Sample:
    """One labelled image; `path` is a file, or `archive.npz#part/index` for MedMNIST.

    `metadata` holds the patient fields (age, sex, site) where the layout carries them (HAM10000, ISIC with
    its metadata CSV), else None.
    """

    image_id: str
    path: str
    label: int
    lesion_id: str | None
    source: str
    part: str | None = None
    metadata: PatientMetadata | None = None

    @property
    def code(self) -> str:
        """The class code (`akiec` ... `vasc`) of this sample's label."""
        return CLASS_CODES[self.label]


@dataclass
class SampleTable:
    """All samples of one dataset, where they came from, and a fingerprint that changes when the data does.

    `missing` lists rows whose image file is absent (`file: reason`); it is only non-empty when the table was
    read with `skip_missing=True`, otherwise such rows are an error.
    """

    samples: list[Sample]
    root: Path
    format: str
    fingerprint: str
    missing: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        """Every sample's label, in table order (for class weights and samplers)."""
        return [sample.label for sample in self.samples]


ReaderResult = tuple[list[Sample], list[str]]
"""What a layout's reader returns: the samples found, and a `file: reason` line per listed image missing."""


def compute_fingerprint(samples: Iterable[Sample]) -> str:
    """sha256 over the sorted `(image_id, label, lesion_id, file size)` rows: cheap, stable, data-bound."""
    archive_sizes: dict[str, int] = {}
    digest = hashlib.sha256()
    for sample in sorted(samples, key=lambda row: row.image_id):
        member = parse_npz_member(sample.path)
        if member is None:
            size = os.stat(sample.path).st_size
        else:
            archive = member[0]
            size = archive_sizes.setdefault(archive, os.stat(archive).st_size)
        digest.update(f"{sample.image_id}\t{sample.label}\t{sample.lesion_id or ''}\t{size}\n".encode())
    return digest.hexdigest()


def class_counts(samples: Iterable[Sample]) -> list[int]:
    """Images per class, in label order 0..6."""
    counts = Counter(sample.label for sample in samples)
    return [counts.get(label, 0) for label in range(NUM_CLASSES)]
