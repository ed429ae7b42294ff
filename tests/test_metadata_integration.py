"""A metadata model end to end on a small real HAM10000 subset: `lesionlab run` with configs/metadata.yaml
trains, saves and evaluates it; resume rebuilds it; evaluate scores it with and without its fields, on the
test part and on the ISIC 2018 validation CSV; predict with and without fields; ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lesionlab.cli import main
from lesionlab.data.imageio import load_rgb

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


def test_predict_with_and_without_fields_and_export(metadata_run: Path, shared_data_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from lesionlab.data.metadata import PatientMetadata
    from lesionlab.inference.torch_backend import TorchPredictor

    image = shared_data_dir / "images" / "ISIC_0034321.jpg"
    assert main(["predict", str(metadata_run), str(image), "--json"]) == 0
    assert main(["predict", str(metadata_run), str(image), "--json", "--age", "60", "--sex", "female",
                 "--site", "back"]) == 0
    assert main(["predict", str(metadata_run), str(image), "--site", "elbow"]) == 2
    fields = tmp_path / "fields.csv"
    fields.write_text(f"image,age,sex,localization\n{image},60,female,back\n{image},,,\n")
    assert main(["predict", str(metadata_run), "--metadata-csv", str(fields)]) == 0
    assert "'elbow' is not known" in capsys.readouterr().err
    predictor = TorchPredictor.from_path(metadata_run)
    with torch.no_grad():
        predictor.model.classifier.head[0].weight[:, -32:].normal_()
    pil = load_rgb(image)
    without = predictor.image_probabilities(pil)
    assert np.allclose(predictor.image_probabilities(pil, PatientMetadata()), without, atol=1e-6)
    older = PatientMetadata(80.0, "male", "head/neck")
    assert not np.allclose(predictor.image_probabilities(pil, older), without, atol=1e-4)
    assert main(["export", str(metadata_run), "--format", "onnx", "--data", str(shared_data_dir),
                 "--max-images", "16", "--out", str(tmp_path / "model.onnx")]) == 0
    assert (tmp_path / "model.onnx").is_file()


def test_an_image_only_model_refuses_fields(tiny_run_dir: Path, shared_data_dir: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tiny_run_dir), "--no-metadata"]) == 2
    image = shared_data_dir / "images" / "ISIC_0034321.jpg"
    assert main(["predict", str(tiny_run_dir), str(image), "--age", "50"]) == 2
    assert "reads no patient metadata" in capsys.readouterr().err
