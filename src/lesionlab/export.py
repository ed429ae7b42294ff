"""Export a run's model to ONNX (fp32, and int8 by static quantization) and prove each file still agrees.

Export uses `torch.onnx.export(dynamo=True)` (the exporter PyTorch maintains; the TorchScript one is
deprecated) with a dynamic batch dimension, and puts the softmax inside the graph so every consumer gets
probabilities. The file's `metadata_props` carry the classes and the exact pre-processing (see
`inference.onnx_metadata`).

Each file is checked against PyTorch on real validation images of the run's own split: the fp32 file must
agree to float rounding; the int8 file is judged by what matters, balanced accuracy next to fp32's on the same
images. Quantization is ONNX Runtime's `quantize_static` (QDQ, per-channel int8 weights, uint8 activations,
MinMax calibration) after `quant_pre_process`, calibrated on training images only.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from sklearn.metrics import recall_score
from torch import nn

from lesionlab.classes import CLASS_CODES
from lesionlab.errors import ConfigError
from lesionlab.inference.base import Predictor
from lesionlab.inference.onnx_backend import OnnxPredictor
from lesionlab.inference.onnx_metadata import INPUT_NAME, OUTPUT_NAME, QUANTIZATION_KEY, metadata_for
from lesionlab.inference.run_samples import ImageBatch, load_batch, split_samples
from lesionlab.inference.torch_backend import TorchPredictor
from lesionlab.io_utils import atomic_write_bytes
from lesionlab.models.checkpoint import ModelCard

OPSET = 18
EXPORT_DIR = "export"
FP32_NAME = "model.onnx"
INT8_SUFFIX = "-int8"
FP32_QUANTIZATION = "none (float32)"
INT8_QUANTIZATION = "int8 static QDQ: per-channel int8 weights, uint8 activations, MinMax calibration"
CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class Agreement:
    """How closely a candidate's probabilities follow a reference's on the same images."""

    images: int
    max_abs_difference: float
    top1_agreement: float


@dataclass(frozen=True)
class ExportedFile:
    """One written model file (`label`: onnx fp32 or onnx int8), its size, how it compares with PyTorch."""

    label: str
    path: Path
    size_bytes: int
    agreement: Agreement
    balanced_accuracy: float


@dataclass(frozen=True)
class ExportReport:
    """Everything `lesionlab export` made, PyTorch's own balanced accuracy first, for the summary table."""

    torch_balanced_accuracy: float
    files: tuple[ExportedFile, ...]


def default_paths(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None) -> tuple[Path, Path]:
    """The fp32 path (`--out`, else `RUN/export/model.onnx`) and its int8 sibling (`<stem>-int8.onnx`)."""
    fp32 = Path(out) if out is not None else Path(run_dir) / EXPORT_DIR / FP32_NAME
    if fp32.suffix.lower() != ".onnx":
        raise ConfigError(f"{fp32}: the output file must end in .onnx")
    return fp32, fp32.with_name(f"{fp32.stem}{INT8_SUFFIX}{fp32.suffix}")


def onnx_model(model: nn.Module, card: ModelCard) -> onnx.ModelProto:
    """Trace `softmax(model(image))` into an ONNX graph whose batch dimension is dynamic."""
    with_softmax = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    example = torch.zeros(2, 3, card.input_size, card.input_size)
    program = torch.onnx.export(
        with_softmax, (example,), dynamo=True, opset_version=OPSET, verbose=False,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    return program.model_proto


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace the model's metadata_props entries for these keys, keeping any others."""
    kept = [entry for entry in model.metadata_props if entry.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)


def export_onnx(model: nn.Module, card: ModelCard, path: str | os.PathLike[str],
                temperature: float | None = None) -> Path:
    """Write the fp32 ONNX file (single file, weights inside) with its metadata, atomically; `temperature`
    records the one already folded into `model`."""
    proto = onnx_model(model, card)
    set_metadata(proto, metadata_for(card, FP32_QUANTIZATION, temperature))
    run = card.run_name or "unnamed"
    proto.doc_string = f"lesionlab {card.arch} for {len(card.classes)} classes (run {run})"
    onnx.checker.check_model(proto)
    return atomic_write_bytes(path, proto.SerializeToString())


class BatchCalibrationReader(CalibrationDataReader):
    """Feeds pre-processed calibration images to `quantize_static` a few at a time."""

    def __init__(self, images: np.ndarray, batch_size: int = CALIBRATION_BATCH) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [images[start:start + batch_size] for start in range(0, len(images), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def float_output_nodes(model: onnx.ModelProto) -> list[str]:
    """The softmax producing the output and the layer feeding it, which stay float under quantization.

    Quantized, the softmax output would come in steps of 1/255 (probabilities that no longer sum to 1) and
    the logits in steps of their calibrated range / 255; the last layer is tiny, so float costs nothing.
    Unnamed nodes get names first, since exclusion works by name.
    """
    for index, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type}_{index}"
    producers = {output: node for node in model.graph.node for output in node.output}
    softmax = producers[OUTPUT_NAME]
    return [softmax.name, producers[softmax.input[0]].name]


def quantize_int8(fp32_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                  calibration_images: np.ndarray) -> Path:
    """Statically quantize an exported model calibrated on `calibration_images`; write it atomically."""
    target = Path(out_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quantize-") as work:
        prepared = Path(work) / "prepared.onnx"
        quantized = Path(work) / "quantized.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        model = onnx.load(str(prepared))
        quantize_static(
            model, str(quantized), BatchCalibrationReader(calibration_images),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=float_output_nodes(model),
        )
        model = onnx.load(str(quantized))
    set_metadata(model, {QUANTIZATION_KEY: INT8_QUANTIZATION})
    return atomic_write_bytes(target, model.SerializeToString())


def agreement(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """Largest absolute probability difference and the share of images with the same top class."""
    return Agreement(
        images=len(reference),
        max_abs_difference=float(np.abs(reference - candidate).max()),
        top1_agreement=float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1))),
    )


def balanced_accuracy(predictor: Predictor, probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Balanced accuracy: mean recall over the classes present in `labels`, compared by class code.

    That is scikit-learn's `balanced_accuracy_score`; written as macro recall over the true classes so a small
    check sample that lacks a rare class (while the model predicts it) gives no warning.
    """
    truth = [CLASS_CODES[label] for label in labels]
    predicted = [predictor.classes[index] for index in probabilities.argmax(axis=1)]
    return float(recall_score(truth, predicted, labels=sorted(set(truth)), average="macro", zero_division=0))


def check_file(label: str, path: Path, reference_probabilities: np.ndarray,
               validation: ImageBatch) -> ExportedFile:
    """Run an exported file on the validation images and compare it with PyTorch."""
    exported = OnnxPredictor(path)
    probabilities = exported.predict_many(validation.images)
    return ExportedFile(
        label=label, path=path, size_bytes=path.stat().st_size,
        agreement=agreement(reference_probabilities, probabilities),
        balanced_accuracy=balanced_accuracy(exported, probabilities, validation.labels),
    )


def export_run(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, int8: bool = False,
               data: str | os.PathLike[str] | None = None, max_images: int | None = 200,
               calibration_images: int = 128, seed: int = 0) -> ExportReport:
    """Export a run's best model to ONNX (and int8), checking each file on the run's validation images."""
    fp32_path, int8_path = default_paths(run_dir, out)
    reference = TorchPredictor.from_path(run_dir)
    validation = load_batch(split_samples(run_dir, "val", data, max_images, seed), reference.preprocessing,
                            "validation images")
    reference_probabilities = reference.predict_many(validation.images)
    export_onnx(reference.model, reference.card, fp32_path, reference.temperature)
    files = [check_file("onnx fp32", fp32_path, reference_probabilities, validation)]
    if int8:
        calibration = load_batch(split_samples(run_dir, "train", data, calibration_images, seed),
                                 reference.preprocessing, "calibration images")
        quantize_int8(fp32_path, int8_path, calibration.images)
        files.append(check_file("onnx int8", int8_path, reference_probabilities, validation))
    return ExportReport(
        torch_balanced_accuracy=balanced_accuracy(reference, reference_probabilities, validation.labels),
        files=tuple(files),
    )
