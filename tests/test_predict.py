"""Predicting with a run directory or an ONNX file: the predictors, the `predict` command, Grad-CAM files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lesionlab.classes import CLASS_CODES
from lesionlab.cli import main
from lesionlab.errors import SOME_INPUTS_BAD, CheckpointError, ImageDecodeError
from lesionlab.explain import LEGEND_WIDTH, TITLE_HEIGHT
from lesionlab.inference import ExplainUnavailableError, Prediction, load_predictor
from lesionlab.inference.files import expand_image_paths

pytestmark = pytest.mark.integration


def real_images(shared_data_dir: Path, count: int) -> list[Path]:
    """The first `count` HAM10000 images, by name."""
    return sorted((shared_data_dir / "images").glob("ISIC_*.jpg"))[:count]


@pytest.fixture
def image_folder(tmp_path: Path, shared_data_dir: Path) -> Path:
    """Three real images and one truncated JPEG in a folder of their own."""
    folder = tmp_path / "images"
    folder.mkdir()
    for image in real_images(shared_data_dir, 3):
        shutil.copy(image, folder / image.name)
    first = real_images(shared_data_dir, 1)[0].read_bytes()
    (folder / "broken.jpg").write_bytes(first[: len(first) // 3])
    return folder


def test_prediction_ranks_classes_and_reads_malignancy() -> None:
    probabilities = np.array([0.02, 0.1, 0.06, 0.03, 0.6, 0.15, 0.04])
    prediction = Prediction.from_probabilities(CLASS_CODES, probabilities)
    assert prediction.top_class == "mel" and prediction.malignant
    assert prediction.top_probability == pytest.approx(0.6)
    assert [entry.code for entry in prediction.ranked] == ["mel", "nv", "bcc", "bkl", "vasc", "df", "akiec"]
    assert prediction.ranked[1].name == "Melanocytic nevus"
    payload = prediction.to_dict(top_k=2)
    assert [entry["code"] for entry in payload["classes"]] == ["mel", "nv"]
    assert payload["probabilities"] == dict(zip(CLASS_CODES, probabilities.tolist(), strict=True))
    shifted = Prediction.from_probabilities(CLASS_CODES, np.roll(probabilities, 1))
    assert shifted.top_class == "nv" and not shifted.malignant


def test_pytorch_and_onnx_predictors_agree_on_real_images(tiny_run_dir: Path, tiny_onnx_file: Path,
                                                          shared_data_dir: Path) -> None:
    eager = load_predictor(tiny_run_dir)
    onnx = load_predictor(tiny_onnx_file)
    assert (eager.backend, onnx.backend) == ("pytorch", "onnx")
    assert eager.classes == onnx.classes == CLASS_CODES
    assert onnx.preprocessing == eager.preprocessing
    for image in real_images(shared_data_dir, 4):
        expected, actual = eager.predict_file(image), onnx.predict_file(image)
        assert sum(actual.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        difference = max(abs(expected.probabilities[c] - actual.probabilities[c]) for c in CLASS_CODES)
        assert difference < 1e-4
        assert actual.top_class == expected.top_class
        assert actual.malignant == expected.malignant


def test_unusable_inputs_are_named_errors(tmp_path: Path, tiny_run_dir: Path) -> None:
    with pytest.raises(CheckpointError, match=r"best\.safetensors"):
        load_predictor(tmp_path)
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"not an onnx model")
    with pytest.raises(CheckpointError, match=r"damaged\.onnx"):
        load_predictor(damaged)
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("hello")
    with pytest.raises(ImageDecodeError, match=r"notes\.jpg"):
        load_predictor(tiny_run_dir).predict_file(not_an_image)


def test_explain_needs_pytorch(tiny_onnx_file: Path, shared_data_dir: Path) -> None:
    image = Image.open(real_images(shared_data_dir, 1)[0])
    with pytest.raises(ExplainUnavailableError, match="run directory"):
        load_predictor(tiny_onnx_file).explain(image)


def test_grad_cam_explains_the_predicted_class(tiny_run_dir: Path, shared_data_dir: Path) -> None:
    predictor = load_predictor(tiny_run_dir)
    image = Image.open(real_images(shared_data_dir, 1)[0]).convert("RGB")
    explanation = predictor.explain(image)
    assert explanation.prediction == predictor.predict_image(image)
    assert explanation.heatmap.shape == (96, 96)
    assert explanation.heatmap.min() >= 0.0 and explanation.heatmap.max() <= 1.0 + 1e-6
    assert explanation.heatmap.max() > 0.5
    assert explanation.overlay.shape == (image.height + TITLE_HEIGHT, image.width + LEGEND_WIDTH, 3)
    assert explanation.overlay.dtype == np.uint8


def test_expanding_folders_and_globs(image_folder: Path) -> None:
    paths, failures = expand_image_paths([str(image_folder), str(image_folder / "ISIC_*.jpg"),
                                          str(image_folder / "nothing-*.png")])
    assert len(paths) == 4 + 3
    assert failures == [(image_folder / "nothing-*.png", "the pattern matches no files")]


def test_predict_command_text_reports_bad_files_and_keeps_going(
        tiny_run_dir: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(tiny_run_dir), str(image_folder)]) == SOME_INPUTS_BAD
    captured = capsys.readouterr()
    names = sorted(path.name for path in image_folder.glob("ISIC_*.jpg"))
    assert all(name in captured.out for name in names)
    assert "3 image(s) predicted, 1 failed" in captured.out
    assert f"{image_folder / 'broken.jpg'}: cannot decode image" in captured.err


def test_predict_command_json_from_onnx(tiny_onnx_file: Path, image_folder: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    images = sorted(image_folder.glob("ISIC_*.jpg"))
    assert main(["predict", str(tiny_onnx_file), *map(str, images), "--json", "--top", "2"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["backend"] == "onnx" and document["failures"] == []
    assert document["temperature"] is None and "uncalibrated" in document["calibration"]
    assert [item["image"] for item in document["predictions"]] == [str(image) for image in images]
    for item in document["predictions"]:
        assert set(item["probabilities"]) == set(CLASS_CODES)
        assert len(item["classes"]) == 2
        assert item["top_class"] == item["classes"][0]["code"]
        assert item["malignant"] == (item["malignant_probability"] >= item["malignant_threshold"])


def test_predict_command_json_lists_failures(tiny_run_dir: Path, image_folder: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(tiny_run_dir), str(image_folder), "--json"]) == SOME_INPUTS_BAD
    document = json.loads(capsys.readouterr().out)
    assert len(document["predictions"]) == 3
    assert [failure["image"] for failure in document["failures"]] == [str(image_folder / "broken.jpg")]


def test_predict_explain_writes_overlay_pngs(tiny_run_dir: Path, image_folder: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "overlays"
    images = sorted(image_folder.glob("ISIC_*.jpg"))[:2]
    arguments = ["predict", str(tiny_run_dir), *map(str, images), "--explain", "--out", str(out), "--json"]
    assert main(arguments) == 0
    document = json.loads(capsys.readouterr().out)
    for image, item in zip(images, document["predictions"], strict=True):
        overlay = Path(item["overlay"])
        assert overlay == out / f"{image.stem}-gradcam.png"
        with Image.open(overlay) as png:
            width, height = Image.open(image).size
            assert png.format == "PNG" and png.size == (width + LEGEND_WIDTH, height + TITLE_HEIGHT)


def test_predict_explain_from_onnx_is_a_clear_error(tiny_onnx_file: Path, image_folder: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(tiny_onnx_file), str(image_folder), "--explain"]) == 2
    assert "Grad-CAM needs the PyTorch model" in capsys.readouterr().err


TORCH_FREE_SCRIPT = """
import json, sys
sys.modules["torch"] = None  # any `import torch` from here on raises ImportError
from fastapi.testclient import TestClient
from lesionlab.cli import main
from lesionlab.inference import load_predictor
from lesionlab.serve.app import create_app

model, image = sys.argv[1], sys.argv[2]
predictor = load_predictor(model)
prediction = predictor.predict_file(image)
assert main(["predict", model, image]) == 0
client = TestClient(create_app(predictor))
response = client.post("/predict", files={"file": ("a.jpg", open(image, "rb").read())})
assert response.status_code == 200, response.text
loaded = sorted(name for name, module in sys.modules.items()
                if module is not None and name.split(".")[0] == "torch")
served = response.json()["top_class"]
print(json.dumps({"top_class": prediction.top_class, "served": served, "torch": loaded}))
"""


def test_onnx_path_works_without_torch(tiny_onnx_file: Path, shared_data_dir: Path) -> None:
    """Predictor, `predict` command and web app from an .onnx file, in a Python that cannot import torch."""
    image = real_images(shared_data_dir, 1)[0]
    result = subprocess.run([sys.executable, "-c", TORCH_FREE_SCRIPT, str(tiny_onnx_file), str(image)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["torch"] == []
    expected = load_predictor(tiny_onnx_file).predict_file(image).top_class
    assert summary["top_class"] == summary["served"] == expected
