"""A model file whose members mix a metadata model and an image-only model (the recommended model's shape):
the patient fields reach the metadata member only, so `predict`, `serve`, the Python API and the one exported
graph all take them and score alike; a model none of whose members reads metadata still refuses them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import lesionlab
from lesionlab.classes import CLASS_CODES
from lesionlab.cli import main
from lesionlab.data.imageio import load_rgb
from lesionlab.data.metadata import PatientMetadata
from lesionlab.errors import ConfigError
from lesionlab.inference import load_predictor
from lesionlab.inference.scored import ScoredPredictor
from lesionlab.inference.torch_backend import TorchPredictor
from lesionlab.serve.app import create_app
from lesionlab.serve.limits import WorkLimits

pytestmark = pytest.mark.integration

FLAGS = ["--age", "60", "--sex", "female", "--site", "back"]
READ_AS = PatientMetadata(60.0, "female", "posterior torso")
LIMITS = WorkLimits(workers=1, queue=2, timeout_s=0, decode_min_size=None)


@pytest.fixture(scope="module")
def image_path(shared_data_dir: Path) -> Path:
    return shared_data_dir / "images" / "ISIC_0034321.jpg"


@pytest.fixture(scope="module")
def mixed_model_file(tiny_run_dir: Path, tiny_metadata_run_dir: Path,
                     tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`model.json` of the image-only tiny run and the tiny metadata run, with test-time augmentation."""
    folder = tmp_path_factory.mktemp("mixed")
    return lesionlab.load(tiny_run_dir, tta=["identity", "hflip"],
                          ensemble=[tiny_metadata_run_dir]).save(folder / "model.json")


def expected_probabilities(tiny_run_dir: Path, tiny_metadata_run_dir: Path, image_path: Path,
                           fields: PatientMetadata | None) -> np.ndarray:
    """The mean of the two members' own TTA probabilities, the fields given to the metadata member alone."""
    image = load_rgb(image_path)
    members = [TorchPredictor.from_path(run) for run in (tiny_run_dir, tiny_metadata_run_dir)]
    for member in members:
        member.views = ("identity", "hflip")
    return (members[0].image_probabilities(image) + members[1].image_probabilities(image, fields)) / 2


def json_probabilities(document: dict) -> np.ndarray:
    return np.array([document["predictions"][0]["probabilities"][code] for code in CLASS_CODES])


def test_the_fields_reach_the_metadata_member_only(mixed_model_file: Path, tiny_run_dir: Path,
                                                   tiny_metadata_run_dir: Path, image_path: Path) -> None:
    predictor = load_predictor(mixed_model_file)
    assert predictor.metadata_fields == ("age", "sex", "site")
    image = load_rgb(image_path)
    with_fields = predictor.image_probabilities(image, READ_AS)
    without = predictor.image_probabilities(image)
    assert np.abs(with_fields - without).max() > 1e-3
    for fields, probabilities in ((READ_AS, with_fields), (None, without)):
        expected = expected_probabilities(tiny_run_dir, tiny_metadata_run_dir, image_path, fields)
        assert np.abs(probabilities - expected).max() < 1e-6
    encoded = predictor.encode_metadata(READ_AS, 1)
    batch = predictor.preprocessing.to_batch(image)
    assert np.abs(predictor.predict_batch(batch, encoded)[0] - with_fields).max() < 1e-6


def test_predict_and_the_python_api_take_the_fields(mixed_model_file: Path, tiny_run_dir: Path,
                                                    tiny_metadata_run_dir: Path, image_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    expected = expected_probabilities(tiny_run_dir, tiny_metadata_run_dir, image_path, READ_AS)
    assert main(["predict", str(mixed_model_file), str(image_path), *FLAGS, "--json"]) == 0
    assert np.abs(json_probabilities(json.loads(capsys.readouterr().out)) - expected).max() < 1e-5
    model = lesionlab.load(mixed_model_file)
    assert model.metadata_fields == ("age", "sex", "site")
    result = model.predict(image_path, age=60, sex="female", site="back")
    assert np.abs(np.array([result.probabilities[code] for code in CLASS_CODES]) - expected).max() < 1e-6


def test_serve_takes_the_fields(mixed_model_file: Path, tiny_run_dir: Path, tiny_metadata_run_dir: Path,
                                image_path: Path) -> None:
    client = TestClient(create_app(load_predictor(mixed_model_file), limits=LIMITS))
    assert client.get("/health").json()["metadata_fields"] == ["age", "sex", "site"]
    upload = {"file": (image_path.name, image_path.read_bytes(), "image/jpeg")}
    response = client.post("/predict", files=upload, data={"age": "60", "sex": "female", "site": "back"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["metadata"]["used"] == {"age": 60.0, "sex": "female", "site": "posterior torso"}
    expected = expected_probabilities(tiny_run_dir, tiny_metadata_run_dir, image_path, READ_AS)
    assert np.abs(np.array([body["probabilities"][code] for code in CLASS_CODES]) - expected).max() < 1e-5


def test_the_exported_graph_takes_the_fields_for_its_metadata_member(
        mixed_model_file: Path, tiny_run_dir: Path, tiny_metadata_run_dir: Path, image_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(mixed_model_file), "--max-images", "6"]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith(("onnxruntime fp32", "openvino fp32"))]
    assert len(rows) == 4 and all("100.0%" in row for row in rows)
    assert sum("with fields" in row for row in rows) == 2
    exported = mixed_model_file.with_suffix(".onnx")
    for fields, flags in ((READ_AS, FLAGS), (None, [])):
        expected = expected_probabilities(tiny_run_dir, tiny_metadata_run_dir, image_path, fields)
        assert main(["predict", str(exported), str(image_path), *flags, "--json"]) == 0
        assert np.abs(json_probabilities(json.loads(capsys.readouterr().out)) - expected).max() < 1e-5


def test_a_model_none_of_whose_members_reads_metadata_refuses_fields(
        tiny_run_dir: Path, calibrated_run_dir: Path, image_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    model_file = lesionlab.load(tiny_run_dir, ensemble=[calibrated_run_dir]).save(tmp_path / "model.json")
    assert main(["predict", str(model_file), str(image_path), *FLAGS]) == 2
    assert "reads no patient metadata" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="reads no patient metadata"):
        lesionlab.load(model_file).predict(image_path, age=60)


def test_metadata_members_that_read_other_fields_are_refused(tiny_run_dir: Path,
                                                             tiny_metadata_run_dir: Path) -> None:
    reads_all = TorchPredictor.from_path(tiny_metadata_run_dir)
    reads_age = TorchPredictor.from_path(tiny_metadata_run_dir)
    reads_age.card = replace(reads_age.card, metadata={**reads_age.card.metadata, "fields": ["age"]})
    with pytest.raises(ConfigError, match="read the same fields"):
        ScoredPredictor([TorchPredictor.from_path(tiny_run_dir), reads_all, reads_age])
