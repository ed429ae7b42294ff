"""Class offsets at prediction time: `predict` and `serve` apply a study's `class-offsets.json` to the final
probabilities (after TTA and ensemble averaging), explain the class the offsets decide, and refuse a file
that does not match the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lesionlab.class_offsets import (
    CLASS_OFFSETS_FILE,
    ClassOffsets,
    apply_class_offsets,
    load_class_offsets,
    save_class_offsets,
)
from lesionlab.classes import CLASS_CODES
from lesionlab.cli import main
from lesionlab.data.imageio import load_rgb
from lesionlab.errors import ConfigError
from lesionlab.inference import load_predictor
from lesionlab.serve.app import create_app
from lesionlab.views import DEFAULT_VIEWS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def image_path(shared_data_dir: Path) -> Path:
    """One real HAM10000 JPEG."""
    return sorted((shared_data_dir / "images").glob("ISIC_*.jpg"))[0]


def offsets_towards(tmp_path: Path, favoured: str, members: tuple[str, ...] = ("tiny-run",)) -> Path:
    """A class-offsets file fitted (it says) for `members` that strongly favours one class, so its effect on
    the decision is certain."""
    values = np.array([8.0 if code == favoured else 0.0 for code in CLASS_CODES])
    record = ClassOffsets(CLASS_CODES, tuple((values - values.mean()).tolist()), "val", members, 100)
    return save_class_offsets(tmp_path / "ensemble-ab+class-offsets" / CLASS_OFFSETS_FILE, record)


def test_offsets_file_round_trips_and_bad_files_say_what_to_do(tmp_path: Path) -> None:
    path = offsets_towards(tmp_path, "df")
    assert load_class_offsets(path.parent) == load_class_offsets(path)
    assert load_class_offsets(path).as_array().sum() == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="no class-offsets file"):
        load_class_offsets(tmp_path / "missing.json")
    path.write_text(json.dumps({"classes": ["a"]}), encoding="utf-8")
    with pytest.raises(ConfigError, match="not a class-offsets file"):
        load_class_offsets(path)


def test_offsets_shift_the_tta_ensemble_probabilities(
        tiny_run_dir: Path, calibrated_run_dir: Path, image_path: Path, tmp_path: Path) -> None:
    path = offsets_towards(tmp_path, "vasc", members=("tiny-run", "tiny-run"))
    inner = load_predictor(tiny_run_dir, views=DEFAULT_VIEWS, ensemble=[calibrated_run_dir])
    shifted = load_predictor(tiny_run_dir, views=DEFAULT_VIEWS, ensemble=[calibrated_run_dir],
                             class_offsets=path)
    image = load_rgb(image_path)
    expected = apply_class_offsets(inner.image_probabilities(image), load_class_offsets(path).as_array())
    assert shifted.image_probabilities(image) == pytest.approx(expected, abs=1e-9)
    assert shifted.predict_image(image).top_class == "vasc"
    assert not shifted.calibrated and "class offsets" in shifted.calibration
    assert shifted.model_id.startswith(inner.model_id) and shifted.views == DEFAULT_VIEWS


def test_a_single_model_with_offsets_explains_the_class_they_decide(
        tiny_run_dir: Path, image_path: Path, tmp_path: Path) -> None:
    shifted = load_predictor(tiny_run_dir, class_offsets=offsets_towards(tmp_path, "df"))
    assert shifted.can_explain
    explanation = shifted.explain(load_rgb(image_path))
    assert explanation.prediction.top_class == "df"
    batch = shifted.preprocessing.to_batch(load_rgb(image_path))
    assert shifted.predict_batch(batch).argmax(axis=1).tolist() == [CLASS_CODES.index("df")]


def test_offsets_for_other_classes_or_other_runs_are_refused(
        tiny_run_dir: Path, calibrated_run_dir: Path, tmp_path: Path) -> None:
    record = ClassOffsets(tuple(reversed(CLASS_CODES)), (0.0,) * 7, "val", (), 10)
    path = save_class_offsets(tmp_path / CLASS_OFFSETS_FILE, record)
    with pytest.raises(ConfigError, match="class offsets are for classes"):
        load_predictor(tiny_run_dir, class_offsets=path)
    with pytest.raises(ConfigError, match="fitted for runs default, strong"):
        load_predictor(tiny_run_dir, class_offsets=offsets_towards(tmp_path, "df", ("default", "strong")))
    with pytest.raises(ConfigError, match="fitted for runs tiny-run, not tiny-run, tiny-run"):
        load_predictor(tiny_run_dir, ensemble=[calibrated_run_dir],
                       class_offsets=offsets_towards(tmp_path, "df", ("tiny-run",)))


def test_predict_and_serve_take_class_offsets(
        tiny_run_dir: Path, image_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = offsets_towards(tmp_path, "akiec")
    assert main(["predict", str(tiny_run_dir), str(image_path), "--class-offsets", str(path), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["predictions"][0]["top_class"] == "akiec"
    assert "class offsets" in document["calibration"]
    client = TestClient(create_app(load_predictor(tiny_run_dir, class_offsets=path)))
    health = client.get("/health").json()
    assert health["calibrated"] is False and "class offsets" in health["calibration"]
    files = {"file": ("lesion.jpg", image_path.read_bytes(), "image/jpeg")}
    assert client.post("/predict", files=files).json()["top_class"] == "akiec"
    assert client.post("/explain", files=files).json()["top_class"] == "akiec"
