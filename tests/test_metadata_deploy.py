"""A metadata model deployed: the exported ONNX file takes the encoded patient fields as a second input, its
layout recorded in the file, and ONNX Runtime and OpenVINO score it exactly as PyTorch does with and without
fields; `predict --backend` runs it; Grad-CAM explains with the fields; int8 refuses it clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from lesionlab.cli import main
from lesionlab.data.imageio import load_rgb
from lesionlab.data.metadata import FIELDS, PatientMetadata, encoded_values, encoding_layout
from lesionlab.errors import CheckpointError, ConfigError
from lesionlab.export import ExportReport, export_run
from lesionlab.inference.backends import exported_fp32_path
from lesionlab.inference.onnx_backend import OnnxPredictor
from lesionlab.inference.onnx_metadata import METADATA_LAYOUT_KEY, METADATA_MISSING_KEY
from lesionlab.inference.openvino_backend import OpenVinoPredictor
from lesionlab.inference.torch_backend import TorchPredictor

pytestmark = pytest.mark.integration

PATIENTS = (
    PatientMetadata(60.0, "female", "posterior torso"),
    PatientMetadata(site="head/neck"),
    PatientMetadata(age=85.0, sex="male"),
)
PARITY = 1e-5


@pytest.fixture(scope="module")
def exported(tiny_metadata_run_dir: Path, shared_data_dir: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportReport]:
    """A copy of the tiny metadata run, exported to RUN/export/model.onnx and checked on 8 validation
    images."""
    run = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(tiny_metadata_run_dir, run)
    return run, export_run(run, data=shared_data_dir, max_images=8)


@pytest.fixture(scope="module")
def image(shared_data_dir: Path) -> Image.Image:
    return load_rgb(shared_data_dir / "images" / "ISIC_0034321.jpg")


def test_export_checks_both_engines_with_and_without_fields(exported: tuple[Path, ExportReport]) -> None:
    _, report = exported
    assert [file.label for file in report.files] == [
        "onnxruntime fp32, fields missing", "openvino fp32, fields missing",
        "onnxruntime fp32, with fields", "openvino fp32, with fields"]
    for file in report.files:
        assert file.agreement.images == 8
        assert file.agreement.max_abs_difference < 1e-4, file.label
        assert file.agreement.top1_agreement == 1.0


def test_the_file_records_its_metadata_input(exported: tuple[Path, ExportReport]) -> None:
    model = onnx.load(str(exported_fp32_path(exported[0])))
    assert [entry.name for entry in model.graph.input] == ["image", "metadata"]
    width = model.graph.input[1].type.tensor_type.shape.dim[1].dim_value
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    assert json.loads(metadata[METADATA_LAYOUT_KEY]) == encoding_layout(FIELDS)
    assert len(encoding_layout(FIELDS)) == width == 15
    assert json.loads(metadata[METADATA_MISSING_KEY]) == encoded_values(None, FIELDS)
    assert "site=posterior torso" in metadata[METADATA_LAYOUT_KEY]


@pytest.mark.parametrize("engine", [OnnxPredictor, OpenVinoPredictor])
def test_engines_score_as_pytorch_with_and_without_fields(exported: tuple[Path, ExportReport],
                                                          image: Image.Image, engine: type) -> None:
    run, _ = exported
    torch_predictor, exported_predictor = TorchPredictor.from_path(run), engine(exported_fp32_path(run))
    assert exported_predictor.metadata_fields == FIELDS
    without = torch_predictor.image_probabilities(image)
    assert np.abs(exported_predictor.image_probabilities(image) - without).max() < PARITY
    assert np.abs(exported_predictor.image_probabilities(image, PatientMetadata()) - without).max() < PARITY
    for patient in PATIENTS:
        expected = torch_predictor.image_probabilities(image, patient)
        assert np.abs(expected - without).max() > 1e-3, "the fields must move the tiny model's output"
        assert np.abs(exported_predictor.image_probabilities(image, patient) - expected).max() < PARITY


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_predict_with_a_backend_reads_the_fields(exported: tuple[Path, ExportReport], shared_data_dir: Path,
                                                 backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = exported
    path = shared_data_dir / "images" / "ISIC_0034321.jpg"
    answers = []
    for chosen in ("pytorch", backend):
        flags = [] if chosen == "pytorch" else ["--backend", chosen]
        for fields in ([], ["--age", "60", "--sex", "female", "--site", "back"]):
            assert main(["predict", str(run), str(path), "--json", *flags, *fields]) == 0
            answers.append(json.loads(capsys.readouterr().out)["predictions"][0]["probabilities"])
    torch_without, torch_with, exported_without, exported_with = (np.array(list(answer.values()))
                                                                  for answer in answers)
    assert np.abs(exported_without - torch_without).max() < PARITY
    assert np.abs(exported_with - torch_with).max() < PARITY
    assert np.abs(torch_with - torch_without).max() > 1e-3


def test_a_file_whose_layout_differs_is_refused(exported: tuple[Path, ExportReport], tmp_path: Path) -> None:
    model = onnx.load(str(exported_fp32_path(exported[0])))
    for entry in model.metadata_props:
        if entry.key == METADATA_LAYOUT_KEY:
            entry.value = json.dumps(list(reversed(json.loads(entry.value))))
    changed = tmp_path / "changed.onnx"
    onnx.save(model, str(changed))
    for engine in (OnnxPredictor, OpenVinoPredictor):
        with pytest.raises(CheckpointError, match="differs from this lesionlab's encoding"):
            engine(changed)


def test_grad_cam_explains_with_the_fields(tiny_metadata_run_dir: Path, image: Image.Image) -> None:
    predictor = TorchPredictor.from_path(tiny_metadata_run_dir)
    patient = PATIENTS[0]
    explained = predictor.explain(image, metadata=patient)
    assert explained.prediction == predictor.predict_image(image, patient)
    assert explained.prediction != predictor.predict_image(image)
    assert explained.heatmap.shape == (96, 96) and 0.0 <= explained.heatmap.min() <= explained.heatmap.max()


def test_int8_of_a_metadata_model_is_refused(tiny_metadata_run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--int8 calibrates on images alone"):
        export_run(tiny_metadata_run_dir, out=tmp_path / "model.onnx", int8=True)
