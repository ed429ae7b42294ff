"""Which images an evaluation runs on: the run's own split, or another dataset, and how its labels map onto
the model's classes.

A run records its dataset (`run.json`: root, format) and its split (`split.csv`, whose fingerprint is that of
the whole dataset, even when the run trained on a subset). `read_split` checks the fingerprint, which ties the
evaluation to exactly the data the run was split from; data with that fingerprint passed as `--data` is the
run's own data, and its split applies.

Another dataset is evaluated whole, unless it carries its own split (MedMNIST): then its test part by default.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesionlab.classes import CLASS_CODES
from lesionlab.data.readers import read_dataset
from lesionlab.data.readers.samples import Sample, SampleTable
from lesionlab.data.split import PARTS, Split, read_split, split_samples_table
from lesionlab.errors import CheckpointError, DataError
from lesionlab.run_json import read_run_json
from lesionlab.training.recipe import Recipe, load_recipe

ALL_PARTS = "all"
SPLIT_CHOICES: tuple[str, ...] = (*PARTS, ALL_PARTS)


@dataclass(frozen=True)
class EvaluationData:
    """The samples to evaluate and the table their cached pixels are keyed by; the run's own table and split
    (for the data summary and for fitting the temperature on its validation part)."""

    name: str
    split: str
    samples: list[Sample]
    table: SampleTable
    run_table: SampleTable
    run_split: Split


def read_run_recipe(run_dir: Path) -> Recipe:
    """The resolved recipe the run trained with (its `config.yaml`)."""
    return load_recipe(Path(run_dir) / "config.yaml")


def run_data(run_dir: Path) -> tuple[SampleTable, Split]:
    """The run's dataset, from where `run.json` says it was read, and the run's split of it, checked."""
    dataset = read_run_json(run_dir).get("dataset", {})
    if "root" not in dataset:
        raise CheckpointError(f"{run_dir}/run.json: no dataset recorded; the run directory is incomplete.")
    table = read_dataset(dataset["root"], dataset.get("format"))
    return table, read_split(Path(run_dir) / "split.csv", table)


def dataset_name(path: Path) -> str:
    """A short folder-safe name: the folder's name, or a CSV's stem without `_GroundTruth`, lowercased."""
    name = path.stem if path.is_file() else path.name
    name = re.sub(r"[_-]?groundtruth$", "", name, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9_.]+", "-", name.lower()).strip("-") or "data"


def select_evaluation_data(
    run_dir: Path, data: str | Path | None, fmt: str | None, split: str | None
) -> EvaluationData:
    """Resolve `--data`/`--format`/`--split` to the samples to evaluate (see the module docstring)."""
    if split is not None and split not in SPLIT_CHOICES:
        raise DataError(f"--split {split}: choose one of {', '.join(SPLIT_CHOICES)}")
    own_table, run_split = run_data(run_dir)
    run_table = split_samples_table(own_table, run_split)
    if data is None:
        name = dataset_name(own_table.root)
        return _from_run_split(name, run_table, run_split, split or "test")
    table = read_dataset(data, fmt)
    name = dataset_name(Path(data))
    if table.fingerprint == run_split.fingerprint:
        return _from_run_split(name, run_table, run_split, split or "test")
    if all(sample.part in PARTS for sample in table.samples):
        chosen = split or "test"
        samples = table.samples if chosen == ALL_PARTS else [s for s in table.samples if s.part == chosen]
        return _checked(EvaluationData(name, chosen, samples, table, run_table, run_split), data)
    if split not in (None, ALL_PARTS):
        raise DataError(
            f"{data}: this is not the dataset run {Path(run_dir).name} was split from, and it carries no "
            f"split of its own, so it has no '{split}' part; evaluate all of it with --split all "
            f"(the default)."
        )
    return _checked(EvaluationData(name, ALL_PARTS, list(table.samples), table, run_table, run_split), data)


def _from_run_split(name: str, run_table: SampleTable, run_split: Split, split: str) -> EvaluationData:
    """The run's own data: one part of its split, or every image the split covers."""
    samples = run_table.samples if split == ALL_PARTS else run_split.parts[split]
    selection = EvaluationData(name, split, list(samples), run_table, run_table, run_split)
    return _checked(selection, run_table.root)


def _checked(selection: EvaluationData, where: str | Path) -> EvaluationData:
    """Refuse an empty selection with a message naming the data."""
    if not selection.samples:
        raise DataError(f"{where}: the '{selection.split}' part is empty; choose another --split.")
    return selection


def model_labels(samples: Sequence[Sample], model_classes: Sequence[str], where: str | Path) -> np.ndarray:
    """Sample labels re-indexed into the model's class order; a class the model lacks is a `DataError`."""
    position = {code: index for index, code in enumerate(model_classes)}
    unknown = sorted({CLASS_CODES[s.label] for s in samples} - position.keys())
    if unknown:
        raise DataError(
            f"{where}: the data has class(es) {', '.join(unknown)} that the model does not know (it predicts "
            f"{', '.join(model_classes)}); evaluate on data with only those classes."
        )
    return np.array([position[CLASS_CODES[s.label]] for s in samples], dtype=np.int64)
