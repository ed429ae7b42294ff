"""Export a run's model to ONNX, prove the file still agrees with PyTorch, and (with `int8`) quantize it for
OpenVINO where that keeps accuracy (`lesionlab.quantize`).

Export uses `torch.onnx.export(dynamo=True)` (the exporter PyTorch maintains; the TorchScript one is
deprecated) with a dynamic batch dimension. The graph takes resized RGB pixels 0..255 and holds the rest: the
model's normalisation (`models.pixel_input.PixelInput`), the temperature and the softmax, so every consumer
gets calibrated probabilities from the one resize. The file's `metadata_props` carry the classes, the input
convention and the resize rule (see `inference.onnx_metadata`).

The fp32 file is checked against PyTorch on real validation images of the run's own split, on both engines
that run it (ONNX Runtime and OpenVINO): it must agree to float rounding; a metadata model's file takes the
encoded patient fields as a second input and is checked both with every field missing and with each image's
own fields. The int8 model is judged by what
matters, balanced accuracy next to fp32's on the same images, and by speed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from torch import nn

from lesionlab.class_offsets import PROBABILITY_FLOOR, load_class_offsets
from lesionlab.data.metadata import encoded_values
from lesionlab.data.readers.samples import Sample
from lesionlab.errors import ConfigError
from lesionlab.export_checks import ExportedFile, balanced_accuracy, check_file
from lesionlab.inference.backends import EXPORT_DIR, FP32_NAME, ONNX_SUFFIX, OPENVINO_SUFFIX
from lesionlab.inference.base import Predictor
from lesionlab.inference.model_file import ResolvedModel
from lesionlab.inference.onnx_backend import OnnxPredictor
from lesionlab.inference.onnx_metadata import (
    INPUT_NAME,
    METADATA_INPUT_NAME,
    OUTPUT_NAME,
    metadata_for,
    scoring_metadata,
)
from lesionlab.inference.openvino_backend import OpenVinoPredictor
from lesionlab.inference.run_samples import ImageBatch, load_batch, split_samples
from lesionlab.inference.torch_backend import TorchPredictor
from lesionlab.io_utils import atomic_write_bytes
from lesionlab.malignancy import FALLBACK_RULE, MalignancyRule
from lesionlab.models.checkpoint import ModelCard
from lesionlab.models.pixel_input import PixelInput
from lesionlab.views import IDENTITY, apply_view

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


class ScoredGraph(nn.Module):
    """`lesionlab.scoring` as one graph, its output the model's probabilities: each member (a network behind
    its own input normalisation, `PixelInput`) runs every view of the batch, its logits divided by its
    temperature, softmax per view, the mean over the views, then the mean over the members, then the class
    offsets, softmax(log p + offsets). One member with the identity view alone is a run's exported model:
    `softmax(network(pixels) / temperature)`. The encoded patient fields, when the graph takes them, go to the
    members that read metadata only."""

    def __init__(self, members: Sequence[tuple[nn.Module, ModelCard, float | None]],
                 views: Sequence[str] = (IDENTITY,), class_offsets: Sequence[float] | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList([PixelInput.for_card(network, card) for network, card, _ in members])
        self.reads_metadata = [card.metadata is not None for _, card, _ in members]
        self.temperatures = [1.0 if temperature is None else float(temperature)
                             for _, _, temperature in members]
        self.views = tuple(views)
        self.offsets: torch.Tensor | None
        if class_offsets is None:
            self.offsets = None
        else:
            self.register_buffer("offsets", torch.tensor(list(class_offsets), dtype=torch.float32))

    def forward(self, image: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:
        viewed = torch.cat([apply_view(name, image) for name in self.views]) if len(self.views) > 1 else image
        extra = () if metadata is None else (metadata.repeat(len(self.views), 1),)
        total = None
        scored = zip(self.members, self.temperatures, self.reads_metadata, strict=True)
        for member, temperature, reads in scored:
            logits = member(viewed, *(extra if reads else ())) / temperature
            per_view = torch.softmax(logits, dim=1).reshape(len(self.views), -1, logits.shape[1])
            total = per_view.mean(dim=0) if total is None else total + per_view.mean(dim=0)
        mean = total / len(self.members)
        if self.offsets is None:
            return mean
        return torch.softmax(torch.log(torch.clamp(mean, min=PROBABILITY_FLOOR)) + self.offsets, dim=1)


def onnx_model(graph: nn.Module, card: ModelCard) -> onnx.ModelProto:
    """Trace `graph` (pixels `[batch, 3, size, size]`, and a metadata model's encoded fields) into an ONNX
    graph whose batch dimension is dynamic; a metadata model's graph takes the encoded patient fields as a
    second input, `metadata` (its layout is in the file's metadata_props)."""
    examples = [torch.zeros(2, 3, card.input_size, card.input_size)]
    names = [INPUT_NAME]
    if card.metadata is not None:
        examples.append(torch.from_numpy(np.asarray([encoded_values(None, card.metadata["fields"])] * 2,
                                                    dtype=np.float32)))
        names.append(METADATA_INPUT_NAME)
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        graph.eval(), tuple(examples), dynamo=True, opset_version=OPSET, verbose=False,
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
    """Write the fp32 ONNX file (single file, weights inside) of the network `model` with its metadata,
    atomically; the graph applies `temperature` (None: uncalibrated), and `malignancy` is the run's
    malignant-flag rule."""
    run = card.run_name or "unnamed"
    return write_onnx(ScoredGraph([(model, card, temperature)]), card, path,
                      metadata_for(card, FP32_QUANTIZATION, temperature, malignancy),
                      f"lesionlab {card.arch} for {len(card.classes)} classes (run {run})")


def write_onnx(graph: nn.Module, card: ModelCard, path: str | os.PathLike[str], metadata: dict[str, str],
               description: str) -> Path:
    """Trace `graph`, attach `metadata`, check the proto and write it atomically (one file, weights
    inside)."""
    proto = onnx_model(graph, card)
    set_metadata(proto, metadata)
    proto.doc_string = description
    onnx.checker.check_model(proto)
    return atomic_write_bytes(path, proto.SerializeToString())


def export_run(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, int8: bool = False,
               data: str | os.PathLike[str] | None = None, max_images: int | None = None,
               calibration_images: int = 300, seed: int = 0, max_drop: float | None = None,
               threads: int | None = None, keep_slower: bool = False) -> ExportReport:
    """Export a run's best model to ONNX, check it on the run's validation images (all of them unless
    `max_images`), and with `int8` quantize it for OpenVINO, calibrated on training images and kept only if
    it loses at most `max_drop` balanced accuracy (default one point) and is faster (`lesionlab.quantize`;
    `keep_slower` waives the speed check)."""
    fp32_path, int8_path = default_paths(run_dir, out)
    reference = TorchPredictor.from_path(run_dir)
    if int8 and reference.card.metadata is not None:
        raise ConfigError(f"{run_dir}: --int8 calibrates on images alone, and this model also reads patient "
                          f"metadata; export it without --int8 (the fp32 file takes both inputs)")
    samples = split_samples(run_dir, "val", data, max_images, seed)
    validation = load_batch(samples, reference.preprocessing, "validation images")
    reference_probabilities = reference.predict_many(validation.images)
    export_onnx(reference.model, reference.card, fp32_path, reference.temperature, reference.malignancy)
    engines = (("onnxruntime fp32", OnnxPredictor(fp32_path, threads=threads)),
               ("openvino fp32", OpenVinoPredictor(fp32_path, threads=threads)))
    files = engine_checks(engines, reference, reference_probabilities, samples, validation)
    report = None
    if int8:
        from lesionlab.quantize import DEFAULT_MAX_DROP, export_int8

        calibration = load_batch(split_samples(run_dir, "train", data, calibration_images, seed),
                                 reference.preprocessing, "calibration images")
        report = export_int8(fp32_path, int8_path, calibration.images, validation, reference_probabilities,
                             files[-1].balanced_accuracy, DEFAULT_MAX_DROP if max_drop is None else max_drop,
                             threads, keep_slower)
    accuracy = balanced_accuracy(reference.classes, reference_probabilities, validation.labels)
    return ExportReport(torch_balanced_accuracy=accuracy, files=files, int8=report)


def engine_checks(engines: Sequence[tuple[str, Predictor]], reference: Predictor,
                  reference_probabilities: np.ndarray, samples: Sequence[Sample],
                  validation: ImageBatch) -> tuple[ExportedFile, ...]:
    """Each engine's file against the PyTorch `reference` on the validation images; where the model reads
    patient metadata, once with every field missing and once with each image's own fields."""
    reader = reference.metadata_reader
    missing = "" if reader is None else ", fields missing"
    files = tuple(check_file(f"{label}{missing}", predictor, reference_probabilities, validation)
                  for label, predictor in engines)
    if reader is None:
        return files
    encoded = np.concatenate([reference.encode_metadata(sample.metadata, 1) for sample in samples])
    with_fields = reference.predict_many(validation.images, metadata=encoded)
    return files + tuple(check_file(f"{label}, with fields", predictor, with_fields, validation, encoded)
                         for label, predictor in engines)


def model_file_graph(model: ResolvedModel) -> tuple[Predictor, ScoredGraph]:
    """The predictor a `model.json` loads and the one graph that scores as it does: its PyTorch members,
    each with the temperature the file recorded, its views and its class offsets (and, where members read
    patient metadata, the fields as a second input, which only they receive). Members that are exported
    files or take different input sizes cannot share one graph of pixels and are refused, naming the model
    file."""
    from lesionlab.inference import load_model_file

    predictor = load_model_file(model)
    for member in predictor.members:
        if not isinstance(member, TorchPredictor):
            raise ConfigError(f"{model.source}: {member.source} is an exported file; one graph is built from "
                              f"the PyTorch members, so write the model file from the run directories.")
    sizes = {member.card.input_size for member in predictor.members}
    if len(sizes) > 1:
        raise ConfigError(f"{model.source}: its members take different input sizes "
                          f"({', '.join(map(str, sorted(sizes)))}), and one graph takes one size of pixels; "
                          f"export the member runs one by one instead.")
    offsets = None if model.class_offsets is None else load_class_offsets(model.class_offsets).offsets
    graph = ScoredGraph([(member.model, member.card, member.temperature) for member in predictor.members],
                        model.views, offsets)
    return predictor, graph


def export_model_file(model: ResolvedModel, out: str | os.PathLike[str] | None = None,
                      data: str | os.PathLike[str] | None = None, max_images: int | None = None,
                      seed: int = 0, threads: int | None = None) -> ExportReport:
    """Export a whole `model.json` as one ONNX file (`out`, else `<model file stem>.onnx` beside it): every
    member with its temperature, the views and the class offsets inside the graph, the model file's
    malignancy rule in its metadata. It is checked on both engines against the model file run by PyTorch on
    the first member's validation images."""
    path = Path(out) if out is not None else model.source.with_suffix(ONNX_SUFFIX)
    if path.suffix.lower() != ONNX_SUFFIX:
        raise ConfigError(f"{path}: the output file must end in {ONNX_SUFFIX}")
    reference, graph = model_file_graph(model)
    first = reference.members[0]
    reader = reference.metadata_reader
    card = replace(first.card, run_name=" + ".join(member.card.run_name or str(member.source)
                                                   for member in reference.members),
                   metadata=None if reader is None else reader.card.metadata)
    metadata = {**metadata_for(card, FP32_QUANTIZATION, None, reference.malignancy),
                **scoring_metadata([(member.card.run_name, member.temperature)
                                    for member in reference.members], model.views, graph.offsets is not None)}
    write_onnx(graph, card, path, metadata,
               f"lesionlab model file {model.source.name}: {len(reference.members)} member(s), "
               f"{len(model.views)} view(s){', class offsets' if model.class_offsets else ''}")
    run_dir = first.source if first.source.is_dir() else first.source.parent
    samples = split_samples(run_dir, "val", data, max_images, seed)
    validation = load_batch(samples, first.preprocessing, "validation images")
    reference_probabilities = reference.predict_many(validation.images)
    engines = (("onnxruntime fp32", OnnxPredictor(path, threads=threads)),
               ("openvino fp32", OpenVinoPredictor(path, threads=threads)))
    files = engine_checks(engines, reference, reference_probabilities, samples, validation)
    accuracy = balanced_accuracy(reference.classes, reference_probabilities, validation.labels)
    return ExportReport(torch_balanced_accuracy=accuracy, files=files)
