"""Leak-free train/val/test splits, saved as a file every later step reads.

HAM10000 holds 10,015 images of only 7,470 lesions: a split by image puts photos of one lesion on both sides
and inflates every metric. So samples are grouped by `lesion_id` (a sample without one is its own group) and
whole groups go to one part, while each class keeps its share in every part.

Why not scikit-learn's `StratifiedGroupKFold`: it can only cut the data into K equal folds, so 15%/15% needs
K=20 and arbitrary fractions cannot be met exactly, and on HAM10000 it takes ~10 s (it scores every group
against every fold). The assignment below is the same greedy idea aimed at three unequal targets: groups are
visited rarest class first, largest first (ties in a seeded random order), and each goes to the part whose
target for the group's classes would be least filled after taking it. On HAM10000 every class share lands
within 0.1 percentage point of the whole in each part, in ~0.2 s.

The split file starts with `# lesionlab-split v2 fingerprint=... seed=... group=...` and then the CSV
`image_id,label,class,lesion_id,part`, so reading it against different data fails loudly instead of silently
evaluating on training images.

Order matters as much as membership: the seeded sampler draws positions in a part, so the same seed over the
same images in another order trains on other images. The file is therefore the one source of a part's order:
`write_split` writes each part's samples in the order it holds them, `read_split` gives them back in file
order, and a new run trains on the split as read back from its own `split.csv` (see `training.runner`). A
fresh run, a resumed run and a rerun from the run's `split.csv` thus draw the same images. Version 1 files
sorted their rows by image id, while the runs that wrote them trained on the dataset's own order;
`read_split` restores that order for them, so those runs still resume exactly.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesionlab.classes import CLASS_CODES, NUM_CLASSES
from lesionlab.data.imageio import parse_npz_member
from lesionlab.data.readers.samples import Sample, SampleTable, compute_fingerprint
from lesionlab.errors import ConfigError, DataError
from lesionlab.io_utils import atomic_write_text

SPLIT_VERSION = 2
DATASET_ORDER_VERSIONS: frozenset[int] = frozenset({1})
PARTS: tuple[str, ...] = ("train", "val", "test")
GROUPINGS: tuple[str, ...] = ("lesion", "none")
DATASET_GROUPING = "dataset"
HEADER_MARK = "# lesionlab-split"
COLUMNS: tuple[str, ...] = ("image_id", "label", "class", "lesion_id", "part")
LEAK_WARNING = (
    "group='none' splits by image, as the reference did: photos of the same lesion land in different "
    "parts and every metric comes out optimistic. Use group='lesion' for honest numbers."
)


@dataclass
class Split:
    """Which samples train, validate and test; `fingerprint` ties it to one exact dataset."""

    parts: dict[str, list[Sample]]
    fingerprint: str
    seed: int
    group: str


def make_split(table: SampleTable, val: float, test: float, seed: int, group: str = "lesion") -> Split:
    """Split a table into train/val/test, stratified by class and grouped by lesion (or by image for 'none').

    A dataset that carries its own split (MedMNIST: every `Sample.part` set) keeps it; `val`, `test` and
    `group` are then not used and the split's group is 'dataset'.
    """
    if all(sample.part in PARTS for sample in table.samples):
        parts = {part: [sample for sample in table.samples if sample.part == part] for part in PARTS}
        return Split(parts, table.fingerprint, seed, DATASET_GROUPING)
    if group not in GROUPINGS:
        raise ConfigError(f"unknown split grouping '{group}'; choose one of {', '.join(GROUPINGS)}")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ConfigError(
            f"val={val} and test={test} must each be in [0, 1) and leave a training part (val + test < 1)"
        )
    if group == "none":
        warnings.warn(LEAK_WARNING, UserWarning, stacklevel=2)
    group_keys = [_group_key(sample, group) for sample in table.samples]
    labels = np.array(table.labels, dtype=np.int64)
    fractions = np.array([1.0 - val - test, val, test])
    part_index = assign_groups(labels, group_keys, fractions, seed)
    parts = {
        part: [sample for sample, index in zip(table.samples, part_index, strict=True) if index == position]
        for position, part in enumerate(PARTS)
    }
    return Split(parts, table.fingerprint, seed, group)


def _group_key(sample: Sample, group: str) -> str:
    if group == "lesion" and sample.lesion_id:
        return f"lesion:{sample.lesion_id}"
    return f"image:{sample.image_id}"


def assign_groups(
    labels: np.ndarray, group_keys: Sequence[str], fractions: np.ndarray, seed: int
) -> np.ndarray:
    """Return a part index per sample so that no group spans two parts and class shares follow `fractions`.

    See the module docstring for the method. A part with fraction 0 receives nothing.
    """
    _, group_of_sample = np.unique(np.asarray(group_keys), return_inverse=True)
    group_count = int(group_of_sample.max()) + 1
    counts = np.zeros((group_count, NUM_CLASSES), dtype=np.int64)
    np.add.at(counts, (group_of_sample, labels), 1)
    class_totals = counts.sum(axis=0)
    targets = fractions[:, None] * class_totals[None, :]
    safe_targets = np.where(targets > 0, targets, 1.0)
    shuffled = np.random.default_rng(seed).permutation(group_count)
    majority_class = counts[shuffled].argmax(axis=1)
    group_sizes = counts[shuffled].sum(axis=1)
    visit_order = shuffled[np.lexsort((-group_sizes, class_totals[majority_class]))]
    filled = np.zeros_like(targets)
    closed = fractions <= 0
    part_of_group = np.empty(group_count, dtype=np.int64)
    for group in visit_order:
        group_counts = counts[group]
        room_after = ((targets - filled - group_counts) / safe_targets * group_counts).sum(axis=1)
        room_after[closed] = -np.inf
        chosen = int(np.argmax(room_after))
        part_of_group[group] = chosen
        filled[chosen] += group_counts
    return part_of_group[group_of_sample]


def fold_splits(split: Split, folds: int, seed: int) -> list[Split]:
    """`folds` splits for lesion-grouped K-fold cross-validation: the split's train and val parts pooled and
    cut into K class-stratified folds by `assign_groups` (equal targets), each fold in turn the validation
    part and the rest training; the test part stays the split's own, untouched by every fold.

    Why: one validation part of 1,502 images holds 17 df and 21 vasc images, so one image moves its balanced
    accuracy by almost a point; the pooled out-of-fold predictions of K folds score every train + val image
    once, with K-fold more images per class. The folds follow the split's grouping, so no lesion spans two.
    """
    if folds < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, not {folds}")
    pool = [*split.parts.get("train", []), *split.parts.get("val", [])]
    group = split.group if split.group in GROUPINGS else "lesion"
    labels = np.array([sample.label for sample in pool], dtype=np.int64)
    fold_of = assign_groups(labels, [_group_key(sample, group) for sample in pool],
                            np.full(folds, 1.0 / folds), seed)
    test = list(split.parts.get("test", []))
    return [
        Split({"train": [sample for sample, fold in zip(pool, fold_of, strict=True) if fold != held],
               "val": [sample for sample, fold in zip(pool, fold_of, strict=True) if fold == held],
               "test": test},
              split.fingerprint, split.seed, split.group)
        for held in range(folds)
    ]


def shared_lesions(split: Split) -> set[str]:
    """Lesion ids that occur in more than one part (empty for a leak-free split)."""
    part_of_lesion: dict[str, str] = {}
    shared: set[str] = set()
    for part, samples in split.parts.items():
        for sample in samples:
            if sample.lesion_id is None:
                continue
            if part_of_lesion.setdefault(sample.lesion_id, part) != part:
                shared.add(sample.lesion_id)
    return shared


def write_split(path: str | os.PathLike[str], split: Split) -> Path:
    """Write the split file (header line + CSV) atomically, each part's rows in the split's own order."""
    buffer = io.StringIO()
    buffer.write(
        f"{HEADER_MARK} v{SPLIT_VERSION} fingerprint={split.fingerprint} seed={split.seed} "
        f"group={split.group}\n"
    )
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for part in PARTS:
        for sample in split.parts.get(part, []):
            writer.writerow((sample.image_id, sample.label, sample.code, sample.lesion_id or "", part))
    return atomic_write_text(path, buffer.getvalue())


def read_part_ids(path: str | os.PathLike[str], part: str) -> frozenset[str]:
    """The image ids a split file puts in one part, read without the dataset (to compare two runs' parts)."""
    source = Path(path)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{source}: cannot read split file ({error})") from None
    _parse_header(source, lines[0] if lines else "")
    return frozenset(row["image_id"] for row in csv.DictReader(lines[1:]) if row.get("part") == part)


def _parse_header(path: Path, first_line: str) -> dict[str, str]:
    """The header's fields, plus `version` (1 or 2, both readable)."""
    tokens = first_line.strip().split()
    readable = {f"v{number}" for number in (SPLIT_VERSION, *DATASET_ORDER_VERSIONS)}
    if first_line.startswith(HEADER_MARK) and len(tokens) >= 3 and tokens[2] in readable:
        fields = dict(token.split("=", 1) for token in tokens[3:] if "=" in token)
        if {"fingerprint", "seed", "group"} <= fields.keys():
            return {**fields, "version": tokens[2][1:]}
    raise DataError(
        f"{path}: not a lesionlab split file (its first line should read '{HEADER_MARK} "
        f"v{SPLIT_VERSION} fingerprint=... seed=... group=...'); make one with `lesionlab data split`"
    )


def read_split(path: str | os.PathLike[str], table: SampleTable) -> Split:
    """Read a split file and bind it to `table`; fail clearly if made for other data or files are gone.

    Each part keeps the file's row order (version 1 files: the table's order, which their runs trained on).
    """
    source = Path(path)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{source}: split file not found; make one with `lesionlab data split`") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{source}: cannot read split file ({error})") from None
    header = _parse_header(source, lines[0] if lines else "")
    if header["fingerprint"] != table.fingerprint:
        raise DataError(
            f"{source}: made for a dataset with fingerprint {header['fingerprint'][:16]}..., but the data "
            f"at {table.root} has fingerprint {table.fingerprint[:16]}... (images, labels or lesion ids "
            "differ). Use the dataset it was made for, or make a new split with `lesionlab data split`."
        )
    parts = _read_rows(source, lines[1:], table)
    if int(header["version"]) in DATASET_ORDER_VERSIONS:
        parts = _in_table_order(parts, table)
    _check_files_exist(source, parts)
    return Split(parts, header["fingerprint"], int(header["seed"]), header["group"])


def _read_rows(source: Path, lines: list[str], table: SampleTable) -> dict[str, list[Sample]]:
    reader = csv.DictReader(lines)
    absent = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
    if absent:
        raise DataError(f"{source}: missing column(s) {', '.join(absent)}; expected {','.join(COLUMNS)}")
    by_id = {sample.image_id: sample for sample in table.samples}
    parts: dict[str, list[Sample]] = {part: [] for part in PARTS}
    seen: set[str] = set()
    for row_number, row in enumerate(reader, start=3):
        where = f"{source}: row {row_number}"
        sample = by_id.get(row["image_id"])
        if sample is None:
            raise DataError(f"{where}: image '{row['image_id']}' is not in the dataset at {table.root}")
        if row["image_id"] in seen:
            raise DataError(f"{where}: image '{row['image_id']}' is listed twice")
        seen.add(row["image_id"])
        if row["part"] not in parts:
            raise DataError(f"{where}: part '{row['part']}' is not one of {', '.join(PARTS)}")
        if row["label"] != str(sample.label):
            raise DataError(
                f"{where}: label {row['label']} differs from the dataset's {sample.label} "
                f"({CLASS_CODES[sample.label]}) for image '{sample.image_id}'"
            )
        parts[row["part"]].append(sample)
    return parts


def _in_table_order(parts: dict[str, list[Sample]], table: SampleTable) -> dict[str, list[Sample]]:
    """Each part's samples in the order `table` lists them (what `make_split` gives)."""
    position = {sample.image_id: index for index, sample in enumerate(table.samples)}
    return {part: sorted(samples, key=lambda sample: position[sample.image_id])
            for part, samples in parts.items()}


def _check_files_exist(source: Path, parts: dict[str, list[Sample]]) -> None:
    missing = sorted(
        {
            _file_of(sample)
            for samples in parts.values()
            for sample in samples
            if not os.path.isfile(_file_of(sample))
        }
    )
    if missing:
        shown = "\n  ".join(missing[:10])
        raise DataError(
            f"{source}: {len(missing)} image file(s) of this split are missing:\n  {shown}\n"
            "Restore them, or make a new split with `lesionlab data split`."
        )


def _file_of(sample: Sample) -> str:
    member = parse_npz_member(sample.path)
    return sample.path if member is None else member[0]


def split_samples_table(table: SampleTable, split: Split) -> SampleTable:
    """The samples a split covers, as a table (the whole dataset unless the split was made on a subset)."""
    samples = [sample for part in split.parts.values() for sample in part]
    return SampleTable(samples, table.root, table.format, compute_fingerprint(samples))
