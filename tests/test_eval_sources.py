"""Choosing what an evaluation runs on: the run's own split, other data, and label mapping onto the model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from lesionlab.classes import CLASS_CODES
from lesionlab.data.readers import read_dataset
from lesionlab.data.split import make_split, write_split
from lesionlab.errors import DataError
from lesionlab.evaluation.sources import dataset_name, model_labels, select_evaluation_data


@pytest.fixture
def run_on_tiny_data(tiny_ham_dataset: Callable[..., Path], tmp_path: Path) -> tuple[Path, Path]:
    """A run folder holding only what evaluation reads about data (run.json, split.csv), and its dataset."""
    data = tiny_ham_dataset(images_per_class=10)
    table = read_dataset(data)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_split(run_dir / "split.csv", make_split(table, val=0.2, test=0.2, seed=0))
    (run_dir / "run.json").write_text(
        json.dumps({"dataset": {"root": str(table.root), "format": table.format}})
    )
    return run_dir, data


def test_default_is_the_test_part_of_the_runs_own_split(run_on_tiny_data: tuple[Path, Path]) -> None:
    run_dir, data = run_on_tiny_data
    selection = select_evaluation_data(run_dir, None, None, None)
    assert selection.split == "test"
    assert selection.samples == selection.run_split.parts["test"]
    assert selection.name == dataset_name(data)
    same_data = select_evaluation_data(run_dir, data, None, "val")
    assert same_data.samples == selection.run_split.parts["val"]
    assert len(select_evaluation_data(run_dir, None, None, "all").samples) == 70


def test_other_data_is_evaluated_whole_and_has_no_test_part(
    run_on_tiny_data: tuple[Path, Path], tiny_ham_dataset: Callable[..., Path]
) -> None:
    run_dir, _ = run_on_tiny_data
    other = tiny_ham_dataset(images_per_class=3, seed=5)
    selection = select_evaluation_data(run_dir, other, None, None)
    assert selection.split == "all" and len(selection.samples) == 21
    with pytest.raises(DataError, match="carries no split of its own"):
        select_evaluation_data(run_dir, other, None, "test")


def test_a_class_the_model_lacks_is_a_clear_error(run_on_tiny_data: tuple[Path, Path]) -> None:
    run_dir, data = run_on_tiny_data
    samples = select_evaluation_data(run_dir, None, None, "all").samples
    without_vasc = [code for code in CLASS_CODES if code != "vasc"]
    with pytest.raises(DataError, match=r"class\(es\) vasc that the model does not know"):
        model_labels(samples, without_vasc, data)
    reordered = list(reversed(CLASS_CODES))
    labels = model_labels(samples, reordered, data)
    assert [reordered[label] for label in labels] == [sample.code for sample in samples]


def test_dataset_names_are_short_and_folder_safe(tmp_path: Path) -> None:
    csv_file = tmp_path / "ISIC2018_Task3_Validation_GroundTruth.csv"
    csv_file.write_text("image\n")
    assert dataset_name(csv_file) == "isic2018_task3_validation"
    assert dataset_name(tmp_path / "HAM10000") == "ham10000"
