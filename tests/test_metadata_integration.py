"""A metadata model end to end on a small real HAM10000 subset: `lesionlab run` with configs/metadata.yaml
trains, saves and evaluates it; resume rebuilds it; evaluate scores it with and without its fields, on the
test part and on the ISIC 2018 validation CSV; predict and ONNX export work without fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lesionlab.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def metadata_run(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two stages of one epoch each on 100 real images at 64 px, with the metadata branch."""
    runs_dir = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LESIONLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        code = main(["run", "--config", "metadata", "--data", str(shared_data_dir), "--subset", "100",
                     "--image-size", "64", "--epochs-scale", "0.01", "--workers", "0", "--no-tta",
                     "--name", "meta", "--runs-dir", str(runs_dir)])
        assert code == 0
        assert main(["run", "--resume", str(runs_dir / "meta"), "--no-tta"]) == 0
    return runs_dir / "meta"


def test_the_card_names_the_fields_and_evaluation_records_them(metadata_run: Path) -> None:
    card = json.loads((metadata_run / "best.json").read_text())
    assert card["metadata"] == {"fields": ["age", "sex", "site"], "dropout": 0.3, "hidden": 32}
    metrics = json.loads((metadata_run / "eval" / "ham10000-test" / "metrics.json").read_text())
    assert metrics["evaluation"]["metadata"] == {"fields": ["age", "sex", "site"], "withheld": False}


def test_evaluate_with_fields_withheld_on_the_isic_validation_csv(metadata_run: Path, shared_data_dir: Path,
                                                                  tmp_path: Path) -> None:
    data = shared_data_dir / "ISIC2018_Task3_Validation_GroundTruth.csv"
    with_fields, without = tmp_path / "with", tmp_path / "without"
    assert main(["evaluate", str(metadata_run), "--data", str(data), "--tta-views", "hflip",
                 "--out", str(with_fields)]) == 0
    assert main(["evaluate", str(metadata_run), "--data", str(data), "--no-metadata",
                 "--out", str(without)]) == 0
    scored = json.loads((with_fields / "metrics.json").read_text())
    withheld = json.loads((without / "metrics.json").read_text())
    assert scored["samples"] == withheld["samples"] == 193
    assert withheld["evaluation"]["metadata"]["withheld"] is True
    assert (with_fields / "predictions.csv").read_text() != (without / "predictions.csv").read_text()


def test_predict_and_export_without_fields(metadata_run: Path, shared_data_dir: Path, tmp_path: Path) -> None:
    image = shared_data_dir / "images" / "ISIC_0034321.jpg"
    assert main(["predict", str(metadata_run), str(image), "--json"]) == 0
    assert main(["export", str(metadata_run), "--format", "onnx", "--data", str(shared_data_dir),
                 "--max-images", "16", "--out", str(tmp_path / "model.onnx")]) == 0
    assert (tmp_path / "model.onnx").is_file()


def test_no_metadata_on_an_image_only_model_is_a_clear_error(tiny_run_dir: Path) -> None:
    assert main(["evaluate", str(tiny_run_dir), "--no-metadata"]) == 2
