"""The data layer on the real HAM10000 and ISIC 2018 validation files in ../shared/data/ham10000."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lesionlab.cli import main
from lesionlab.data.imageio import load_rgb
from lesionlab.data.readers import read_dataset
from lesionlab.data.readers.samples import class_counts
from lesionlab.data.split import PARTS, make_split, shared_lesions

pytestmark = pytest.mark.integration

HAM_COUNTS = [327, 514, 1099, 115, 1113, 6705, 142]
ISIC_VALIDATION_COUNTS = [8, 15, 22, 1, 21, 123, 3]


def test_ham10000_table_has_the_published_counts(shared_data_dir: Path) -> None:
    table = read_dataset(shared_data_dir)
    assert table.format == "ham10000"
    assert len(table) == 10_015
    assert class_counts(table.samples) == HAM_COUNTS
    assert len({sample.lesion_id for sample in table.samples}) == 7_470


def test_isic_ground_truth_csv_reads_as_193_with_lesion_ids(shared_data_dir: Path) -> None:
    table = read_dataset(shared_data_dir / "ISIC2018_Task3_Validation_GroundTruth.csv")
    assert table.format == "isic"
    assert len(table) == 193
    assert class_counts(table.samples) == ISIC_VALIDATION_COUNTS
    assert all(sample.lesion_id and sample.lesion_id.startswith("IL_") for sample in table.samples)


def test_real_split_is_leak_free_and_stratified(shared_data_dir: Path) -> None:
    table = read_dataset(shared_data_dir)
    split = make_split(table, val=0.15, test=0.15, seed=0)
    assert shared_lesions(split) == set()
    whole = np.asarray(class_counts(table.samples)) / len(table)
    for part in PARTS:
        shares = np.asarray(class_counts(split.parts[part])) / len(split.parts[part])
        assert np.abs(shares - whole).max() < 0.02, part


def test_a_subset_of_real_images_decodes(shared_data_dir: Path) -> None:
    table = read_dataset(shared_data_dir)
    for sample in table.samples[:: len(table) // 50][:50]:
        image = load_rgb(sample.path)
        assert image.mode == "RGB" and image.size == (300, 225)


def test_inspect_reports_real_counts(shared_data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "inspect", str(shared_data_dir), "--no-decode", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["images"] for row in report["classes"]] == HAM_COUNTS
    assert report["lesions"] == 7_470 and report["problems"] == []
