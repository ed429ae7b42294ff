"""ONNX export: fp32 agrees with PyTorch on both engines, dynamic batch, complete metadata; the benchmark."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lesionlab.classes import CLASS_CODES
from lesionlab.cli import main
from lesionlab.errors import CheckpointError, ConfigError, DataError
from lesionlab.export import export_run
from lesionlab.inference.onnx_backend import OnnxPredictor
from lesionlab.inference.run_samples import load_batch, split_samples
from lesionlab.inference.torch_backend import TorchPredictor
from lesionlab.models.checkpoint import read_card

pytestmark = pytest.mark.integration

VALIDATION_IMAGES = 24


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory: pytest.TempPathFactory, tiny_run_dir: Path,
                 shared_data_dir: Path) -> tuple[Path, str]:
    """A copy of the tiny run after `lesionlab export RUN`, and what the command printed."""
    run_dir = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(tiny_run_dir, run_dir)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["export", str(run_dir), "--format", "onnx", "--data", str(shared_data_dir),
                     "--max-images", str(VALIDATION_IMAGES)])
    assert code == 0
    return run_dir, printed.getvalue()


@pytest.fixture(scope="module")
def validation_images(tiny_run_dir: Path, shared_data_dir: Path) -> np.ndarray:
    """Pre-processed validation images of the tiny run's own split."""
    preprocessing = TorchPredictor.from_path(tiny_run_dir).preprocessing
    samples = split_samples(tiny_run_dir, "val", shared_data_dir, VALIDATION_IMAGES)
    return load_batch(samples, preprocessing, "validation").images


def test_fp32_matches_pytorch_on_validation_images(tiny_run_dir: Path, tiny_onnx_file: Path,
                                                   validation_images: np.ndarray) -> None:
    expected = TorchPredictor.from_path(tiny_run_dir).predict_many(validation_images)
    actual = OnnxPredictor(tiny_onnx_file).predict_many(validation_images)
    assert np.abs(expected - actual).max() < 1e-4
    assert np.array_equal(expected.argmax(axis=1), actual.argmax(axis=1))
    assert np.allclose(actual.sum(axis=1), 1.0, atol=1e-5)


def test_batch_size_is_dynamic(tiny_onnx_file: Path, validation_images: np.ndarray) -> None:
    session = ort.InferenceSession(str(tiny_onnx_file), providers=["CPUExecutionProvider"])
    batch_dimension = session.get_inputs()[0].shape[0]
    assert isinstance(batch_dimension, str)
    one = session.run(None, {"image": validation_images[:1]})[0]
    three = session.run(None, {"image": validation_images[:3]})[0]
    assert one.shape == (1, 7) and three.shape == (3, 7)
    assert np.abs(three[:1] - one).max() < 1e-5


def test_metadata_describes_the_preprocessing(tiny_run_dir: Path, tiny_onnx_file: Path) -> None:
    model = onnx.load(str(tiny_onnx_file))
    assert max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")) >= 17
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    card = read_card(tiny_run_dir / "best.json")
    assert json.loads(metadata["lesionlab.classes"]) == list(CLASS_CODES)
    assert metadata["lesionlab.input_size"] == "96"
    assert json.loads(metadata["lesionlab.mean"]) == card.mean
    assert json.loads(metadata["lesionlab.std"]) == card.std
    assert json.loads(metadata["lesionlab.grayscale"]) is False
    assert "squash" in metadata["lesionlab.resize"]
    assert metadata["lesionlab.input_pixels"] == "rgb-0-255" and "0..255" in metadata["lesionlab.input"]
    assert metadata["lesionlab.run_name"] == "tiny-run"
    assert json.loads(metadata["lesionlab.model_card"]) == card.to_dict()
    assert OnnxPredictor(tiny_onnx_file).card == card


def test_the_graph_takes_resized_pixels_and_a_file_exported_before_is_refused(
        tmp_path: Path, tiny_onnx_file: Path, validation_images: np.ndarray) -> None:
    session = ort.InferenceSession(str(tiny_onnx_file), providers=["CPUExecutionProvider"])
    assert validation_images.max() > 1 and validation_images.dtype == np.float32
    predictor = OnnxPredictor(tiny_onnx_file)
    assert np.allclose(session.run(None, {"image": validation_images[:2]})[0],
                       predictor.predict_batch(validation_images[:2]), atol=1e-6)
    assert np.allclose(predictor.predict_batch(validation_images[:2].astype(np.uint8)),
                       predictor.predict_batch(validation_images[:2]), atol=1e-7)
    old = onnx.load(str(tiny_onnx_file))
    kept = [entry for entry in old.metadata_props if entry.key != "lesionlab.input_pixels"]
    del old.metadata_props[:]
    old.metadata_props.extend(kept)
    old_path = tmp_path / "old.onnx"
    onnx.save(old, str(old_path))
    with pytest.raises(CheckpointError, match=r"old\.onnx: this file was exported by an older lesionlab.*"
                                              r"Re-export it"):
        OnnxPredictor(old_path)


def test_fitted_temperature_reaches_predictions_and_the_onnx_file(
        tmp_path: Path, tiny_run_dir: Path, calibrated_run_dir: Path, shared_data_dir: Path,
        validation_images: np.ndarray) -> None:
    plain = TorchPredictor.from_path(tiny_run_dir).predict_many(validation_images)
    calibrated = TorchPredictor.from_path(calibrated_run_dir)
    assert calibrated.temperature == 2.0 and "2.000" in calibrated.calibration
    expected = np.exp(np.log(plain) / 2.0)
    expected /= expected.sum(axis=1, keepdims=True)
    probabilities = calibrated.predict_many(validation_images)
    assert np.abs(probabilities - expected).max() < 1e-5
    assert np.array_equal(probabilities.argmax(axis=1), plain.argmax(axis=1))
    assert TorchPredictor.from_path(calibrated_run_dir, calibrated=False).temperature is None

    run_dir = tmp_path / "run"
    shutil.copytree(calibrated_run_dir, run_dir)
    export_run(run_dir, data=shared_data_dir, max_images=8)
    exported = OnnxPredictor(run_dir / "export" / "model.onnx")
    assert exported.temperature == 2.0
    assert np.abs(exported.predict_many(validation_images) - probabilities).max() < 1e-4


def test_a_temperature_fitted_for_other_weights_is_ignored(tmp_path: Path, calibrated_run_dir: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(calibrated_run_dir, run_dir)
    record = json.loads((run_dir / "best.temperature.json").read_text())
    (run_dir / "best.temperature.json").write_text(json.dumps({**record, "checkpoint_sha256": "0" * 64}))
    assert TorchPredictor.from_path(run_dir).temperature is None


def test_export_command_writes_the_file_and_checks_it_on_both_engines(exported_run: tuple[Path, str]) -> None:
    run_dir, printed = exported_run
    assert sorted(path.name for path in (run_dir / "export").iterdir()) == ["model.onnx"]
    rows = {" ".join(line.split()[:2]): line for line in printed.splitlines()
            if line.startswith(("onnxruntime ", "openvino "))}
    assert set(rows) == {"onnxruntime fp32", "openvino fp32"}
    torch_accuracy = next(line for line in printed.splitlines() if line.startswith("pytorch")).split()[-1]
    for line in rows.values():
        assert "100.0%" in line and line.split()[-1] == torch_accuracy
    assert f"Checked on {VALIDATION_IMAGES} validation image(s)" in printed


def test_export_needs_a_split_and_an_onnx_name(tmp_path: Path, tiny_run_dir: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("best.safetensors", "best.json"):
        shutil.copy(tiny_run_dir / name, run_dir / name)
    with pytest.raises(DataError, match=r"split\.csv"):
        export_run(run_dir)
    with pytest.raises(ConfigError, match=r"\.onnx"):
        export_run(tiny_run_dir, out=tmp_path / "model.bin")


def test_onnxruntime_int8_quantizes_all_but_the_output_layer(
        tiny_onnx_file: Path, validation_images: np.ndarray, tmp_path: Path) -> None:
    from lesionlab.inference.onnx_metadata import QUANTIZATION_KEY
    from lesionlab.quantize_onnxruntime import ORT_INT8_QUANTIZATION, output_layer_nodes, quantize_onnxruntime

    int8 = quantize_onnxruntime(tiny_onnx_file, tmp_path / "int8.onnx", validation_images[:8])
    model = onnx.load(str(int8))
    kept_float = set(output_layer_nodes(onnx.load(str(tiny_onnx_file))))
    quantized_inputs = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    assert quantized_inputs and any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    for node in model.graph.node:
        if node.name in kept_float:
            assert not quantized_inputs & set(node.input), node.name
    predictor = OnnxPredictor(int8)
    assert predictor.quantization == ORT_INT8_QUANTIZATION
    assert {entry.key for entry in model.metadata_props} >= {QUANTIZATION_KEY}
    probabilities = predictor.predict_many(validation_images)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(probabilities - OnnxPredictor(tiny_onnx_file).predict_many(validation_images)).max() < 0.3


def test_bench_times_every_backend(exported_run: tuple[Path, str], shared_data_dir: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    import openvino as ov

    run_dir = exported_run[0]
    int8 = run_dir / "export" / "model-int8.xml"  # any IR stands in for the int8 model here
    ov.save_model(ov.Core().read_model(run_dir / "export" / "model.onnx"), int8, compress_to_fp16=False)
    assert main(["bench", str(run_dir), "--threads", "1", "--iters", "3", "--batch-size", "4",
                 "--batch-iters", "1", "--data", str(shared_data_dir)]) == 0
    printed = capsys.readouterr().out
    lines = {line.split("  ")[0]: line for line in printed.splitlines()}
    assert {"pytorch fp32", "pytorch bf16 autocast", "onnxruntime fp32", "onnxruntime int8", "openvino fp32",
            "openvino bf16", "openvino int8"} <= set(lines)
    assert lines["onnxruntime fp32"].count("1.00x") == 2
    assert float(lines["openvino fp32"].split()[-1]) < 1e-4
    assert str(int8) in printed and str(run_dir / "export" / "model.onnx") in printed
