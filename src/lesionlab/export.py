"""Export a run's model to ONNX, prove the file still agrees with PyTorch, and (with `int8`) quantize it for
OpenVINO where that keeps accuracy (`lesionlab.quantize`).

Export uses `torch.onnx.export(dynamo=True)` (the exporter PyTorch maintains; the TorchScript one is
deprecated) with a dynamic batch dimension, and puts the softmax inside the graph so every consumer gets
probabilities. The file's `metadata_props` carry the classes and the exact pre-processing (see
`inference.onnx_metadata`).

The fp32 file is checked against PyTorch on real validation images of the run's own split, on both engines
that run it (ONNX Runtime and OpenVINO): it must agree to float rounding; a metadata model's file takes the
encoded patient fields as a second input and is checked both with every field missing and with each image's
own fields. The int8 model is judged by what
matters, balanced accuracy next to fp32's on the same images, and by speed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from torch import nn

from lesionlab.data.metadata import encoded_values
from lesionlab.errors import ConfigError
from lesionlab.export_checks import ExportedFile, balanced_accuracy, check_file
from lesionlab.inference.backends import EXPORT_DIR, FP32_NAME, ONNX_SUFFIX, OPENVINO_SUFFIX
from lesionlab.inference.onnx_backend import OnnxPredictor
from lesionlab.inference.onnx_metadata import INPUT_NAME, METADATA_INPUT_NAME, OUTPUT_NAME, metadata_for
from lesionlab.inference.openvino_backend import OpenVinoPredictor
from lesionlab.inference.run_samples import load_batch, split_samples
from lesionlab.inference.torch_backend import TorchPredictor
from lesionlab.io_utils import atomic_write_bytes
from lesionlab.malignancy import FALLBACK_RULE, MalignancyRule
from lesionlab.models.checkpoint import ModelCard

if TYPE_CHECKING:
    from lesionlab.quantize import Int8Report

OPSET = 18
INT8_SUFFIX = "-int8"
FP32_QUANTIZATION = "none (float32)"


@dataclass(frozen=True)
class ExportReport:
    """Everything `lesionlab export` made, for the summary table: PyTorch's own balanced accuracy, the fp32
    file on each engine, and the int8 verdict when int8 was asked for."""

    torch_balanced_accuracy: float
    files: tuple[ExportedFile, ...]
    int8: Int8Report | None = None


def default_paths(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None) -> tuple[Path, Path]:
    """The fp32 path (`--out`, else `RUN/export/model.onnx`) and its int8 OpenVINO sibling
    (`<stem>-int8.xml` with `<stem>-int8.bin`)."""
    fp32 = Path(out) if out is not None else Path(run_dir) / EXPORT_DIR / FP32_NAME
    if fp32.suffix.lower() != ONNX_SUFFIX:
        raise ConfigError(f"{fp32}: the output file must end in {ONNX_SUFFIX}")
    return fp32, fp32.with_name(f"{fp32.stem}{INT8_SUFFIX}{OPENVINO_SUFFIX}")


class WithSoftmax(nn.Module):
    """`softmax(model(image[, metadata]))`: the exported graph's output is probabilities, for an image model
    and for a metadata model alike."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.model(image) if metadata is None else self.model(image, metadata)
        return torch.softmax(logits, dim=1)


def onnx_model(model: nn.Module, card: ModelCard) -> onnx.ModelProto:
    """Trace `softmax(model(image))` into an ONNX graph whose batch dimension is dynamic; a metadata model's
    graph takes the encoded patient fields as a second input, `metadata` (its layout is in the file's
    metadata_props)."""
    examples = [torch.zeros(2, 3, card.input_size, card.input_size)]
    names = [INPUT_NAME]
    if card.metadata is not None:
        examples.append(torch.from_numpy(np.asarray([encoded_values(None, card.metadata["fields"])] * 2,
                                                    dtype=np.float32)))
        names.append(METADATA_INPUT_NAME)
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        WithSoftmax(model).eval(), tuple(examples), dynamo=True, opset_version=OPSET, verbose=False,
        input_names=names, output_names=[OUTPUT_NAME],
        dynamic_shapes=tuple({0: batch} for _ in examples),
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
                temperature: float | None = None, malignancy: MalignancyRule = FALLBACK_RULE) -> Path:
    """Write the fp32 ONNX file (single file, weights inside) with its metadata, atomically; `temperature`
    records the one already folded into `model`, `malignancy` the run's malignant-flag rule."""
    proto = onnx_model(model, card)
    set_metadata(proto, metadata_for(card, FP32_QUANTIZATION, temperature, malignancy))
    run = card.run_name or "unnamed"
    proto.doc_string = f"lesionlab {card.arch} for {len(card.classes)} classes (run {run})"
    onnx.checker.check_model(proto)
    return atomic_write_bytes(path, proto.SerializeToString())


def export_run(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, int8: bool = False,
               data: str | os.PathLike[str] | None = None, max_images: int | None = None,
               calibration_images: int = 300, seed: int = 0, max_drop: float | None = None,
               threads: int | None = None) -> ExportReport:
    """Export a run's best model to ONNX, check it on the run's validation images (all of them unless
    `max_images`), and with `int8` quantize it for OpenVINO, calibrated on training images and kept only if
    it loses at most `max_drop` balanced accuracy (default one point) and is faster (`lesionlab.quantize`)."""
    fp32_path, int8_path = default_paths(run_dir, out)
    reference = TorchPredictor.from_path(run_dir)
    if int8 and reference.card.metadata is not None:
        raise ConfigError(f"{run_dir}: --int8 calibrates on images alone, and this model also reads patient "
                          f"metadata; export it without --int8 (the fp32 file takes both inputs)")
    samples = split_samples(run_dir, "val", data, max_images, seed)
    validation = load_batch(samples, reference.preprocessing, "validation images")
    reference_probabilities = reference.predict_many(validation.images)
    export_onnx(reference.calibrated_model(), reference.card, fp32_path, reference.temperature,
                reference.malignancy)
    engines = (("onnxruntime fp32", OnnxPredictor(fp32_path, threads=threads)),
               ("openvino fp32", OpenVinoPredictor(fp32_path, threads=threads)))
    missing = "" if reference.card.metadata is None else ", fields missing"
    files = tuple(check_file(f"{label}{missing}", predictor, reference_probabilities, validation)
                  for label, predictor in engines)
    if reference.card.metadata is not None:
        fields = reference.card.metadata["fields"]
        encoded = np.asarray([encoded_values(sample.metadata, fields) for sample in samples],
                             dtype=np.float32)
        with_fields = reference.predict_many(validation.images, metadata=encoded)
        files += tuple(check_file(f"{label}, with fields", predictor, with_fields, validation, encoded)
                       for label, predictor in engines)
    report = None
    if int8:
        from lesionlab.quantize import DEFAULT_MAX_DROP, export_int8

        calibration = load_batch(split_samples(run_dir, "train", data, calibration_images, seed),
                                 reference.preprocessing, "calibration images")
        report = export_int8(fp32_path, int8_path, calibration.images, validation, reference_probabilities,
                             files[-1].balanced_accuracy, DEFAULT_MAX_DROP if max_drop is None else max_drop,
                             threads)
    accuracy = balanced_accuracy(reference.classes, reference_probabilities, validation.labels)
    return ExportReport(torch_balanced_accuracy=accuracy, files=files, int8=report)
