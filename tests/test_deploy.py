"""Deployment engines: `--backend`/`--precision` resolution, OpenVINO against ONNX Runtime on real images,
OpenVINO without torch, and the int8 export that refuses to claim success when it loses accuracy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

from lesionlab.classes import CLASS_CODES
from lesionlab.cli import main
from lesionlab.errors import CheckpointError, ConfigError
from lesionlab.inference import load_predictor
from lesionlab.inference.backends import OPENVINO, PYTORCH, resolve_model
from lesionlab.inference.openvino_backend import OpenVinoPredictor, openvino_metadata, set_openvino_metadata
from lesionlab.inference.run_samples import ImageBatch, load_batch, split_samples
from lesionlab.inference.timing import Timing
from lesionlab.quantize import SpeedRow, speed_problems

VALIDATION_IMAGES = 24


def test_a_run_directory_runs_on_pytorch_unless_an_engine_is_named(tmp_path: Path) -> None:
    assert resolve_model(tmp_path).backend == PYTORCH
    with pytest.raises(CheckpointError, match=r"lesionlab export"):
        resolve_model(tmp_path, "openvino")
    exported = tmp_path / "export" / "model.onnx"
    exported.parent.mkdir()
    exported.write_bytes(b"")
    assert resolve_model(tmp_path, "onnxruntime").path == exported
    assert resolve_model(tmp_path, "openvino", "bf16").precision == "bf16"


def test_exported_files_pick_their_engine_and_refuse_what_cannot_run() -> None:
    assert resolve_model("m.onnx").backend == "onnxruntime"
    assert resolve_model("m.onnx", "openvino").backend == OPENVINO
    assert resolve_model("m-int8.xml").backend == OPENVINO
    with pytest.raises(ConfigError, match=r"--backend onnxruntime cannot run"):
        resolve_model("m-int8.xml", "onnxruntime")
    with pytest.raises(ConfigError, match=r"--backend pytorch cannot run"):
        resolve_model("m.onnx", "pytorch")
    with pytest.raises(ConfigError, match=r"bf16 needs"):
        resolve_model("m.onnx", precision="bf16")
    with pytest.raises(ConfigError, match=r"--precision fp16"):
        resolve_model("m.onnx", "openvino", "fp16")


def row(label: str, p50_ms: float, images_per_second: float) -> SpeedRow:
    return SpeedRow(label, Timing(p50_ms, p50_ms * 1.2, images_per_second))


def test_int8_must_beat_the_fastest_fp32_engine_at_both_batch_sizes() -> None:
    fp32 = [row("onnxruntime fp32", 4.0, 300.0), row("openvino fp32", 3.0, 400.0)]
    assert speed_problems((*fp32, row("openvino int8", 2.0, 800.0))) == []
    slow_single = speed_problems((*fp32, row("openvino int8", 3.5, 800.0)))
    assert len(slow_single) == 1 and "batch 1" in slow_single[0] and "openvino fp32" in slow_single[0]
    slow_batch = speed_problems((*fp32, row("openvino int8", 2.0, 350.0)))
    assert len(slow_batch) == 1 and "batch 32" in slow_batch[0]


@pytest.mark.integration
def test_openvino_matches_onnx_runtime_on_real_images(
        tiny_onnx_file: Path, tiny_run_dir: Path, validation_images: np.ndarray) -> None:
    expected = load_predictor(tiny_onnx_file).predict_many(validation_images)
    openvino = load_predictor(tiny_onnx_file, backend="openvino")
    assert (openvino.backend, openvino.precision) == ("openvino", "fp32")
    assert openvino.classes == CLASS_CODES and openvino.card == load_predictor(tiny_onnx_file).card
    assert np.abs(openvino.predict_many(validation_images) - expected).max() < 1e-4
    bf16_predictor = load_predictor(tiny_onnx_file, backend="openvino", precision="bf16")
    bf16 = bf16_predictor.predict_many(validation_images)
    assert np.abs(bf16 - expected).max() < 0.05
    assert np.allclose(bf16.sum(axis=1), 1.0, atol=1e-3)
    eager_bf16 = load_predictor(tiny_run_dir, precision="bf16").predict_many(validation_images)
    assert np.abs(eager_bf16 - expected).max() < 0.05


@pytest.mark.integration
def test_tta_and_ensembles_work_the_same_on_openvino(tiny_onnx_file: Path, calibrated_run_dir: Path,
                                                     tmp_path: Path, shared_data_dir: Path) -> None:
    from lesionlab.export import export_onnx
    from lesionlab.inference.torch_backend import TorchPredictor

    member = TorchPredictor.from_path(calibrated_run_dir)
    member_onnx = export_onnx(member.model, member.card, tmp_path / "calibrated.onnx",
                              member.temperature)
    image = sorted((shared_data_dir / "images").glob("ISIC_*.jpg"))[0]
    options = {"views": ("identity", "hflip", "rot90"), "ensemble": [member_onnx]}
    on_ort = load_predictor(tiny_onnx_file, **options).predict_file(image)
    on_openvino = load_predictor(tiny_onnx_file, backend="openvino", **options)
    assert on_openvino.backend == "ensemble" and on_openvino.members[1].temperature == 2.0
    prediction = on_openvino.predict_file(image)
    assert prediction.top_class == on_ort.top_class
    difference = max(abs(prediction.probabilities[code] - on_ort.probabilities[code]) for code in CLASS_CODES)
    assert difference < 1e-4


@pytest.mark.integration
def test_predict_command_takes_the_backend_flags(tiny_onnx_file: Path, shared_data_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    image = sorted((shared_data_dir / "images").glob("ISIC_*.jpg"))[0]
    assert main(["predict", str(tiny_onnx_file), str(image), "--json", "--backend", "openvino",
                 "--precision", "bf16"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["backend"] == "openvino" and len(document["predictions"]) == 1
    assert main(["predict", str(tiny_onnx_file), str(image), "--precision", "bf16"]) == 2
    assert "bf16 needs" in capsys.readouterr().err


@pytest.fixture(scope="module")
def openvino_ir(tmp_path_factory: pytest.TempPathFactory, tiny_onnx_file: Path) -> Path:
    """The tiny model as an OpenVINO IR (`.xml` + `.bin`), the format `export --int8` writes."""
    path = tmp_path_factory.mktemp("ir") / "model.xml"
    ov.save_model(ov.Core().read_model(tiny_onnx_file), path, compress_to_fp16=False)
    return path


@pytest.mark.integration
def test_an_ir_without_its_weights_is_a_clear_error(openvino_ir: Path, tmp_path: Path) -> None:
    alone = tmp_path / "model.xml"
    shutil.copy(openvino_ir, alone)
    with pytest.raises(CheckpointError, match=r"model\.bin is missing"):
        OpenVinoPredictor(alone)
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match=r"damaged\.onnx"):
        load_predictor(damaged, backend="openvino")


@pytest.mark.integration
def test_a_file_exported_before_the_graph_normalised_is_refused_on_openvino(tiny_onnx_file: Path,
                                                                             tmp_path: Path) -> None:
    model = ov.Core().read_model(tiny_onnx_file)
    set_openvino_metadata(model, {"lesionlab.input_pixels": "normalised"})
    old = tmp_path / "old.xml"
    ov.save_model(model, old)
    with pytest.raises(CheckpointError, match=r"old\.xml: lesionlab\.input_pixels is 'normalised'"):
        OpenVinoPredictor(old)


TORCH_FREE_SCRIPT = """
import json, sys
sys.modules["torch"] = None  # any `import torch` from here on raises ImportError
from fastapi.testclient import TestClient
from lesionlab.cli import main
from lesionlab.inference import load_predictor
from lesionlab.serve.app import create_app

onnx_file, ir_file, image = sys.argv[1:4]
predictor = load_predictor(onnx_file, backend="openvino", views=("identity", "hflip"))
prediction = predictor.predict_file(image)
assert load_predictor(ir_file).predict_file(image).top_class == prediction.top_class
assert main(["predict", onnx_file, image, "--backend", "openvino", "--precision", "bf16"]) == 0
client = TestClient(create_app(predictor))
response = client.post("/predict", files={"file": ("a.jpg", open(image, "rb").read())})
assert response.status_code == 200, response.text
loaded = sorted(name for name, module in sys.modules.items()
                if module is not None and name.split(".")[0] == "torch")
health = client.get("/health").json()
print(json.dumps({"top_class": prediction.top_class, "served": response.json()["top_class"],
                  "backend": health["backend"], "torch": loaded}))
"""


@pytest.mark.integration
def test_openvino_path_works_without_torch(tiny_onnx_file: Path, openvino_ir: Path,
                                           shared_data_dir: Path) -> None:
    """Predictor (with TTA), `predict` and the web app on OpenVINO, in a Python that cannot import torch."""
    image = sorted((shared_data_dir / "images").glob("ISIC_*.jpg"))[0]
    result = subprocess.run([sys.executable, "-c", TORCH_FREE_SCRIPT, str(tiny_onnx_file), str(openvino_ir),
                             str(image)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["torch"] == [] and summary["backend"] == "openvino"
    expected = load_predictor(tiny_onnx_file, views=("identity", "hflip")).predict_file(image).top_class
    assert summary["top_class"] == summary["served"] == expected


@pytest.fixture(scope="module")
def validation_batch(tiny_run_dir: Path, shared_data_dir: Path) -> ImageBatch:
    """The tiny run's validation images used by `export --max-images 24`, with their labels."""
    from lesionlab.inference.torch_backend import TorchPredictor

    preprocessing = TorchPredictor.from_path(tiny_run_dir).preprocessing
    samples = split_samples(tiny_run_dir, "val", shared_data_dir, VALIDATION_IMAGES)
    return load_batch(samples, preprocessing, "validation")


@pytest.fixture(scope="module")
def validation_images(validation_batch: ImageBatch) -> np.ndarray:
    """Pre-processed validation images of the tiny run's own split."""
    return validation_batch.images


def always_predicting(model: ov.Model, label: int) -> ov.Model:
    """A model answering `label` with certainty for every image, carrying `model`'s lesionlab metadata."""
    import openvino.opset13 as ops

    image = ops.parameter(ov.PartialShape([-1, 3, -1, -1]), ov.Type.f32, name="image")
    per_image = ops.reduce_mean(image, np.array([1, 2, 3]), keep_dims=False)
    zeros = ops.multiply(ops.unsqueeze(per_image, np.array([1])), np.float32(0.0))
    logits = ops.add(zeros, np.eye(len(CLASS_CODES), dtype=np.float32)[label][None] * 50.0)
    broken = ov.Model([ops.softmax(logits, 1)], [image], "always")
    set_openvino_metadata(broken, openvino_metadata(model))
    return broken


@pytest.mark.integration
def test_int8_that_loses_accuracy_is_refused_and_not_written(
        tmp_path: Path, tiny_run_dir: Path, shared_data_dir: Path, validation_batch: ImageBatch,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import lesionlab.quantize

    absent = next(label for label in range(len(CLASS_CODES)) if label not in set(validation_batch.labels))
    monkeypatch.setattr(lesionlab.quantize, "quantize_model",
                        lambda model, *_: always_predicting(model, absent))
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run_dir)
    stale = run_dir / "export" / "model-int8.xml"
    stale.parent.mkdir()
    stale.write_text("an older int8 model")
    code = main(["export", str(run_dir), "--int8", "--data", str(shared_data_dir), "--max-images",
                 str(VALIDATION_IMAGES), "--calibration-images", "8", "--max-accuracy-drop", "0"])
    printed = capsys.readouterr().out
    assert code == 3
    assert "int8 FAILED and was not written" in printed and "more than the limit 0.0000" in printed
    assert not stale.exists() and not stale.with_suffix(".bin").exists()
    report = json.loads((run_dir / "export" / "model-int8-report.json").read_text())
    assert report["status"] == "failed" and report["model"] is None
    assert report["int8_balanced_accuracy"] == 0.0
    assert report["balanced_accuracy_drop"] == report["fp32_balanced_accuracy"] > 0
    assert {entry["engine"] for entry in report["speed"]} == {"onnxruntime fp32", "openvino fp32",
                                                               "openvino int8"}


@pytest.mark.integration
def test_keep_slower_keeps_an_accurate_int8_model_that_is_not_faster(
        tmp_path: Path, tiny_run_dir: Path, shared_data_dir: Path, validation_batch: ImageBatch,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import lesionlab.quantize

    monkeypatch.setattr(lesionlab.quantize, "quantize_model", lambda model, *_: model)
    slower = (row("onnxruntime fp32", 1.0, 1000.0), row("openvino fp32", 1.5, 900.0),
              row("openvino int8", 2.0, 700.0))
    monkeypatch.setattr(lesionlab.quantize, "measure_speed", lambda predictors, images: slower)
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run_dir)
    arguments = ["export", str(run_dir), "--int8", "--data", str(shared_data_dir), "--max-images",
                 str(VALIDATION_IMAGES), "--calibration-images", "8"]
    int8_file = run_dir / "export" / "model-int8.xml"
    assert main(arguments) == 3 and not int8_file.exists()
    assert "int8 is not faster at batch 1" in capsys.readouterr().out
    assert main([*arguments, "--keep-slower"]) == 0
    printed = capsys.readouterr().out
    assert "int8 kept (--keep-slower)" in printed and "int8 is not faster at batch 32" in printed
    report = json.loads((run_dir / "export" / "model-int8-report.json").read_text())
    assert report["status"] == "passed" and report["problems"] == [] and len(report["notes"]) == 2
    assert int8_file.is_file() and OpenVinoPredictor(int8_file).classes == CLASS_CODES
    assert main(["export", str(run_dir), "--keep-slower"]) == 2
    assert "--keep-slower applies to --int8" in capsys.readouterr().err


@pytest.mark.integration
def test_nncf_quantizes_everything_but_the_output_layer(tiny_onnx_file: Path, validation_batch: ImageBatch,
                                                         tmp_path: Path) -> None:
    from lesionlab.quantize import quantize_model, save_ir

    model = ov.Core().read_model(tiny_onnx_file)
    quantized = quantize_model(model, validation_batch.images[:8], validation_batch, CLASS_CODES, 1.0)
    fake_quantized = {op.input_value(0).get_node().get_type_name() for op in quantized.get_ordered_ops()
                      if op.get_type_name() == "FakeQuantize"}
    assert fake_quantized, "NNCF should insert FakeQuantize operations"
    softmax = next(op for op in quantized.get_ordered_ops() if op.get_type_name().startswith("Softmax"))
    output_layer = softmax.input_value(0).get_node()
    while output_layer.get_type_name() != "MatMul":
        output_layer = output_layer.input_value(0).get_node()
    assert "FakeQuantize" not in {value.get_node().get_type_name() for value in output_layer.input_values()}
    predictor = OpenVinoPredictor(save_ir(quantized, tmp_path / "model-int8.xml"))
    assert predictor.card.run_name == "tiny-run" and predictor.classes == CLASS_CODES
    probabilities = predictor.predict_many(validation_batch.images)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    expected = OpenVinoPredictor(tiny_onnx_file).predict_many(validation_batch.images)
    assert np.abs(probabilities - expected).max() < 0.3


def test_forward_passes_run_on_openvino_as_eager_does() -> None:
    import torch

    from lesionlab.forward_backend import EngineForward
    from lesionlab.models.fold import fold_batchnorm
    from lesionlab.models.registry import build_model

    torch.manual_seed(0)
    model = fold_batchnorm(build_model("mobilenet_v3_small", pretrained="none").eval())
    images = torch.rand(5, 3, 32, 32)
    forward = EngineForward(model, OPENVINO, "test", logits=True)
    with torch.inference_mode():
        outputs, expected = [forward(images), forward(images[:2])], model(images)
    assert forward.check is not None and (forward.check.engine, forward.check.fallback) == (OPENVINO, None)
    assert torch.allclose(outputs[0], expected, atol=1e-4)
    assert torch.allclose(outputs[1], expected[:2], atol=1e-4)


def test_folded_constants_let_the_depthwise_convolutions_run_in_int8(tmp_path: Path) -> None:
    """OpenVINO's ONNX reader leaves a grouped convolution's weights behind a computed Reshape; quantized
    that way, the CPU plugin runs the depthwise convolution in float. `fold_constants` (run before NNCF by
    `quantize_model`) makes the weights Constants, and the quantized depthwise convolution runs in int8."""
    import nncf
    import torch

    from lesionlab.export import OPSET
    from lesionlab.quantize import fold_constants

    network = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 8, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    ).eval()
    example = torch.rand(2, 3, 32, 32)
    program = torch.onnx.export(network, (example,), dynamo=True, opset_version=OPSET, verbose=False,
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    program.save(str(tmp_path / "depthwise.onnx"))

    def weight_sources(model: ov.Model) -> set[str]:
        return {op.input_value(1).get_node().get_type_name() for op in model.get_ordered_ops()
                if op.get_type_name() == "GroupConvolution"}

    model = ov.Core().read_model(tmp_path / "depthwise.onnx")
    assert weight_sources(fold_constants(model)) == {"Constant"}
    images = np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32)
    quantized = nncf.quantize(model, nncf.Dataset(list(images[:, None])), subset_size=16)
    quantized.reshape({quantized.inputs[0]: [8, 3, 32, 32]})
    compiled = ov.Core().compile_model(quantized, "CPU", {"PERF_COUNT": "YES",
                                                          "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    request.infer([images[:8]])
    depthwise = {node.exec_type for node in request.profiling_info
                 if node.node_type == "GroupConvolution" and node.status == node.Status.EXECUTED}
    assert depthwise and all("i8" in kernel.lower() for kernel in depthwise), depthwise
