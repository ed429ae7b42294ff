"""`lesionlab run` end to end on a small real HAM10000 subset, then `lesionlab evaluate` of that run on the
ISIC 2018 validation CSV: every output written, metrics consistent with the predictions, clear errors."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from lesionlab.classes import CLASS_CODES
from lesionlab.cli import main

pytestmark = pytest.mark.integration

ISIC_VALIDATION_CSV = "ISIC2018_Task3_Validation_GroundTruth.csv"
EVAL_FILES = ("predictions.csv", "metrics.json", "report.md", "report.html")


@pytest.fixture(scope="module")
def finished_run(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-stage run (1 epoch each) on 300 real images at 64 px, evaluated on its test part by `run`."""
    runs_dir = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LESIONLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        exit_code = main(
            [
                "run",
                "--data",
                str(shared_data_dir),
                "--subset",
                "300",
                "--image-size",
                "64",
                "--epochs-scale",
                "0.01",
                "--workers",
                "0",
                "--name",
                "smoke",
                "--runs-dir",
                str(runs_dir),
            ]
        )
    assert exit_code == 0
    return runs_dir / "smoke"


def test_run_trains_calibrates_and_reports_on_the_test_part(finished_run: Path) -> None:
    eval_dir = finished_run / "eval" / "ham10000-test"
    assert all((eval_dir / name).is_file() for name in EVAL_FILES)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    split_rows = finished_run.joinpath("split.csv").read_text().splitlines()[2:]
    assert metrics["samples"] == sum(row.endswith(",test") for row in split_rows)
    assert metrics["evaluation"]["training_overlap"] == {"images": 0, "lesions": 0}
    temperature = json.loads((finished_run / "best.temperature.json").read_text())
    assert temperature["fitted_on"] == "val"
    assert list(metrics["variants"]) == ["plain", "tta", "temperature", "tta+temperature"]
    assert metrics["model"]["flops_per_image"] > 0 and metrics["model"]["training_seconds"] > 0


def test_evaluate_on_the_isic_validation_csv_with_tta(
    finished_run: Path,
    shared_data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LESIONLAB_CACHE", str(tmp_path / "cache"))
    data = shared_data_dir / ISIC_VALIDATION_CSV
    assert main(["evaluate", str(finished_run), "--data", str(data), "--tta-views", "hflip,rot90"]) == 0
    printed = capsys.readouterr().out
    assert "balanced accuracy" in printed and "macro avg" in printed
    eval_dir = finished_run / "eval" / "isic2018_task3_validation-all"
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["samples"] == 193
    assert metrics["confidence_intervals"]["unit"] == "lesion"
    assert list(metrics["variants"]) == ["plain", "tta", "temperature", "tta+temperature"]
    with (eval_dir / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    truth = [CLASS_CODES.index(row["true_class"]) for row in rows]
    predicted = [CLASS_CODES.index(row["predicted_class"]) for row in rows]
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, predicted))
    assert np.bincount(truth, minlength=7).tolist() == [8, 15, 22, 1, 21, 123, 3]
    markdown = (eval_dir / "report.md").read_text()
    assert all((eval_dir / figure).is_file() for figure in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown))
    page = (eval_dir / "report.html").read_text()
    assert "https://" not in page and "http://" not in page
    assert all(source.startswith("data:image/png;base64,") for source in re.findall(r'src="([^"]*)"', page))


def test_evaluate_refuses_a_part_that_other_data_does_not_have(
    finished_run: Path, shared_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = shared_data_dir / ISIC_VALIDATION_CSV
    assert main(["evaluate", str(finished_run), "--data", str(data), "--split", "test"]) == 2
    assert "carries no split of its own" in capsys.readouterr().err
