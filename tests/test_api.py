"""The Python API: `lesionlab.load(...).predict(...)` scores as `lesionlab predict` does, the README's example
runs, and `lesionlab.train` / `lesionlab.evaluate` give what the commands give."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lesionlab
from lesionlab.classes import CLASS_CODES
from lesionlab.errors import ConfigError, ImageDecodeError
from lesionlab.inference import ExplainUnavailableError, load_predictor

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLE_MARKER = "<!-- readme-python-example"
README_RUN = "runs/default"
README_IMAGE = "ISIC_0024306.jpg"


def readme_example() -> str:
    """The Python block that follows the example marker in README.md."""
    text = README.read_text(encoding="utf-8")
    match = re.search(re.escape(EXAMPLE_MARKER) + r".*?\n```python\n(.*?)```", text, flags=re.DOTALL)
    assert match, "README.md has no Python example after its marker"
    return match.group(1)


@pytest.fixture(scope="module")
def image_path(shared_data_dir: Path) -> Path:
    """The real HAM10000 image the README's example names."""
    path = shared_data_dir / "images" / README_IMAGE
    if not path.is_file():
        pytest.skip(f"{path} is absent from the shared data")
    return path


def test_readme_example_runs(tiny_run_dir: Path, image_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    code = readme_example()
    assert README_RUN in code and README_IMAGE in code
    code = code.replace(f'"{README_RUN}"', repr(str(tiny_run_dir))).replace(f'"{README_IMAGE}"',
                                                                            repr(str(image_path)))
    exec(compile(code, str(README), "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    expected = load_predictor(tiny_run_dir).predict_file(image_path)
    assert lines[0].startswith(f"{expected.top_class} {expected.top_probability:.3f}")
    assert [line.split()[0] for line in lines[1:8]] == [entry.code for entry in expected.ranked]
    assert lines[8] == f"{expected.malignant} {expected.malignant_probability}"
    assert lines[9] == "(96, 96)"


def test_predict_equals_the_predict_command_for_every_kind_of_input(calibrated_run_dir: Path,
                                                                     image_path: Path) -> None:
    model = lesionlab.load(calibrated_run_dir, tta=True)
    expected = load_predictor(calibrated_run_dir, views=model.predictor.views).predict_file(image_path)
    decoded = Image.open(image_path)
    for given in (image_path, str(image_path), decoded, np.asarray(decoded.convert("RGB"))):
        result = model.predict(given)
        assert result.probabilities == pytest.approx(expected.probabilities, abs=1e-6)
        assert result.malignant == expected.malignant and result.top_class == expected.top_class
    assert len(model.predictor.views) > 1 and model.predictor.temperature == pytest.approx(2.0)
    assert model.classes == tuple(CLASS_CODES)


def test_gradcam_map_comes_with_the_same_prediction(tiny_run_dir: Path, image_path: Path) -> None:
    model = lesionlab.load(tiny_run_dir)
    plain, explained = model.predict(image_path), model.predict(image_path, gradcam=True)
    assert plain.gradcam is None and explained.gradcam is not None
    assert explained.gradcam.min() >= 0.0 and explained.gradcam.max() <= 1.0
    assert explained.overlay is not None and explained.overlay.dtype == np.uint8
    assert explained.probabilities == pytest.approx(plain.probabilities, abs=1e-5)


def test_onnx_file_predicts_but_has_no_gradcam(tiny_onnx_file: Path, tiny_run_dir: Path,
                                              image_path: Path) -> None:
    model = lesionlab.load(tiny_onnx_file)
    expected = lesionlab.load(tiny_run_dir).predict(image_path)
    assert model.predict(image_path).probabilities == pytest.approx(expected.probabilities, abs=1e-4)
    with pytest.raises(ExplainUnavailableError, match="Grad-CAM needs the PyTorch model"):
        model.predict(image_path, gradcam=True)
    with pytest.raises(ConfigError, match="evaluate needs the run directory"):
        lesionlab.evaluate(model)


def test_bad_inputs_say_what_to_pass(tiny_run_dir: Path, tmp_path: Path) -> None:
    model = lesionlab.load(tiny_run_dir)
    with pytest.raises(ConfigError, match="uint8 of shape"):
        model.predict(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ConfigError, match="pass a file path, a PIL image or a uint8 array"):
        model.predict(42)  # type: ignore[arg-type]
    missing = tmp_path / "absent.jpg"
    with pytest.raises(ImageDecodeError, match=r"absent\.jpg"):
        model.predict(missing)


def test_train_then_evaluate_as_the_commands_do(tiny_ham_dataset: Callable[..., Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LESIONLAB_CACHE", str(tmp_path / "cache"))
    root = tiny_ham_dataset(images_per_class=10, images_per_lesion=1, size=(32, 32))
    overrides = ["arch=small_cnn", "pretrained=none", "image_size=32", "workers=0", "channels_last=false",
                 "device=cpu", "stages=[{trainable: all, epochs: 2, batch_size: 16, eval_batch_size: 32, "
                 "lr: 0.01}]"]
    model = lesionlab.train(None, data=root, out=tmp_path / "runs" / "api", overrides=overrides)
    assert model.path == tmp_path / "runs" / "api" and (model.path / "best.safetensors").is_file()

    result = lesionlab.evaluate(model, out=tmp_path / "eval")
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert result.out_dir == tmp_path / "eval"
    assert result.metrics["balanced_accuracy"] == written["balanced_accuracy"]
    assert result.metrics["evaluation"]["split"] == "test"
