"""Test-time augmentation and ensembles at prediction time: the recommended model of docs/results.md is an
ensemble evaluated with TTA, so `predict` and `serve` must run exactly that."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lesionlab.cli import main
from lesionlab.data.imageio import load_rgb
from lesionlab.errors import ConfigError
from lesionlab.inference import ExplainUnavailableError, load_predictor
from lesionlab.inference.scored import ScoredPredictor
from lesionlab.serve.app import create_app
from lesionlab.views import DEFAULT_VIEWS, apply_view

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def image_path(shared_data_dir: Path) -> Path:
    """One real HAM10000 JPEG."""
    return sorted((shared_data_dir / "images").glob("ISIC_*.jpg"))[0]


def plain_image(path: Path) -> Image.Image:
    """The decoded RGB image, as predictors see it."""
    return load_rgb(path)


def test_tta_averages_the_views_of_one_image(tiny_run_dir: Path, image_path: Path) -> None:
    plain = load_predictor(tiny_run_dir)
    tta = load_predictor(tiny_run_dir, views=DEFAULT_VIEWS)
    batch = plain.preprocessing.to_batch(plain_image(image_path))
    per_view = [plain.predict_batch(np.ascontiguousarray(apply_view(name, batch)))[0]
                for name in DEFAULT_VIEWS]
    expected = np.mean(per_view, axis=0)
    probabilities = np.array(list(tta.predict_file(image_path).probabilities.values()))
    assert np.abs(probabilities - expected).max() < 1e-5
    assert np.abs(expected - per_view[0]).max() > 1e-4, "the views must change the input"


def test_explanation_reports_the_tta_prediction(tiny_run_dir: Path, image_path: Path) -> None:
    tta = load_predictor(tiny_run_dir, views=DEFAULT_VIEWS)
    explanation = tta.explain(plain_image(image_path))
    expected = tta.predict_file(image_path)
    assert explanation.prediction.top_class == expected.top_class
    assert explanation.prediction.probabilities == pytest.approx(expected.probabilities, abs=1e-6)
    assert explanation.heatmap.min() >= 0.0 and explanation.heatmap.max() <= 1.0


def test_ensemble_averages_its_members(tiny_run_dir: Path, calibrated_run_dir: Path, tiny_onnx_file: Path,
                                       image_path: Path) -> None:
    members = [load_predictor(path) for path in (tiny_run_dir, calibrated_run_dir, tiny_onnx_file)]
    ensemble = load_predictor(tiny_run_dir, ensemble=[calibrated_run_dir, tiny_onnx_file])
    assert isinstance(ensemble, ScoredPredictor) and ensemble.backend == "ensemble"
    expected = np.mean([member.image_probabilities(plain_image(image_path)) for member in members], axis=0)
    assert np.abs(members[0].image_probabilities(plain_image(image_path)) - expected).max() > 1e-4
    prediction = ensemble.predict_file(image_path)
    assert np.abs(np.array(list(prediction.probabilities.values())) - expected).max() < 1e-5
    assert all(member.model_id in ensemble.model_id for member in members)
    assert "2.000" in ensemble.calibration and "uncalibrated" in ensemble.calibration
    assert not ensemble.calibrated
    assert load_predictor(calibrated_run_dir, ensemble=[calibrated_run_dir]).calibrated
    assert not ensemble.can_explain
    with pytest.raises(ExplainUnavailableError, match="single member"):
        ensemble.explain(plain_image(image_path))
    batch = members[0].preprocessing.to_batch(plain_image(image_path))
    assert np.abs(ensemble.predict_batch(batch)[0] - expected).max() < 1e-5
    with pytest.raises(ConfigError, match="no logits of its own"):
        ensemble.batch_logits(batch)


def test_ensemble_members_must_share_classes(tiny_run_dir: Path) -> None:
    first, second = load_predictor(tiny_run_dir), load_predictor(tiny_run_dir)
    second.classes = tuple(reversed(second.classes))
    with pytest.raises(ConfigError, match="differ from"):
        ScoredPredictor([first, second])


def test_predict_command_runs_an_ensemble_with_tta(
        tiny_run_dir: Path, calibrated_run_dir: Path, image_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["predict", str(tiny_run_dir), str(image_path), "--ensemble", str(calibrated_run_dir),
                 "--tta", "--json"]
    assert main(arguments) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["backend"] == "ensemble" and document["temperature"] is None
    expected = load_predictor(tiny_run_dir, views=DEFAULT_VIEWS, ensemble=[calibrated_run_dir])
    assert document["predictions"][0]["probabilities"] == pytest.approx(
        expected.predict_file(image_path).probabilities, abs=1e-6)
    assert main([*arguments[:-1], "--explain"]) == 2
    assert "single member" in capsys.readouterr().err


def test_service_over_an_ensemble(tiny_run_dir: Path, calibrated_run_dir: Path, image_path: Path) -> None:
    client = TestClient(create_app(load_predictor(tiny_run_dir, ensemble=[calibrated_run_dir])))
    health = client.get("/health").json()
    assert health["backend"] == "ensemble" and health["can_explain"] is False
    assert health["calibrated"] is False and "2.000" in health["calibration"]
    files = {"file": ("lesion.jpg", image_path.read_bytes(), "image/jpeg")}
    assert client.post("/predict", files=files).status_code == 200
    response = client.post("/explain", files=files)
    assert response.status_code == 501 and "single member" in response.json()["detail"]
