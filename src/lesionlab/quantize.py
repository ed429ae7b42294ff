"""int8 that keeps accuracy: NNCF post-training quantization of the exported model on OpenVINO, with
accuracy control, judged on the run's validation part and kept only where it is both accurate and faster.

`nncf.quantize_with_accuracy_control` quantizes (mixed preset: symmetric per-channel int8 weights, asymmetric
per-tensor activations, which suit hard-swish outputs that go below zero), measures balanced accuracy on the
validation images, and while the drop exceeds the limit puts back into float the operations whose
quantization costs most (on MobileNetV3 these are early depthwise convolutions and squeeze-excitation
blocks). Calibration uses training images only. The output layer and the softmax stay float from the start,
so probabilities keep full resolution.

The verdict is measured afresh on the written file, not taken from NNCF: balanced accuracy of OpenVINO fp32
and int8 on the same validation images, and speed (batch-1 latency, batch throughput) against the faster
fp32 engine. A model that fails either check is not installed; `<stem>-report.json` says why, with figures.
`keep_slower` installs a model that keeps accuracy but is not faster here (it is smaller, 2.5 MB against
6.5 MB for MobileNetV3-Small, and another CPU may run int8 faster); its report then lists the speed
shortfalls as notes.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov
from openvino import passes

os.environ.setdefault("NNCF_CI", "1")  # NNCF's only switch for its usage telemetry: lesionlab stays offline
import nncf

from lesionlab.classes import CLASS_CODES
from lesionlab.export_checks import ExportedFile, balanced_accuracy, check_file
from lesionlab.inference.base import Predictor
from lesionlab.inference.onnx_backend import OnnxPredictor
from lesionlab.inference.onnx_metadata import QUANTIZATION_KEY
from lesionlab.inference.openvino_backend import OpenVinoPredictor, set_openvino_metadata
from lesionlab.inference.run_samples import ImageBatch
from lesionlab.inference.timing import Timing, time_predictor, timing_batches
from lesionlab.io_utils import atomic_write_bytes, atomic_write_json

INT8_QUANTIZATION = (
    "int8 (NNCF post-training quantization with accuracy control, OpenVINO): symmetric per-channel int8 "
    "weights, asymmetric per-tensor int8 activations, calibrated on training images; operations that cost "
    "accuracy, the output layer and the softmax stay float"
)
DEFAULT_MAX_DROP = 0.01
REPORT_SUFFIX = "-report.json"
PASSED = "passed"
FAILED = "failed"
SPEED_BATCH = 32
VALIDATION_BATCH = 32


@dataclass(frozen=True)
class SpeedRow:
    """One engine's timings in the int8 speed check."""

    label: str
    timing: Timing


@dataclass(frozen=True)
class Int8Report:
    """The int8 verdict: `status` is `passed` only when accuracy and speed both hold (speed is waived by
    `keep_slower`, its shortfalls kept as `notes`); `problems` says what failed, in figures. `model.path` is
    the installed file, or where it was measured when it was refused."""

    status: str
    model: ExportedFile
    fp32_balanced_accuracy: float
    max_drop: float
    speed: tuple[SpeedRow, ...]
    problems: tuple[str, ...]
    report_path: Path
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """Whether the int8 model was installed."""
        return self.status == PASSED

    @property
    def drop(self) -> float:
        """Balanced accuracy lost against fp32 on the validation images (negative: int8 did better)."""
        return self.fp32_balanced_accuracy - self.model.balanced_accuracy

    def to_json(self) -> dict[str, object]:
        """The report file's content."""
        return {
            "status": self.status,
            "problems": list(self.problems),
            "notes": list(self.notes),
            "model": str(self.model.path) if self.passed else None,
            "validation_images": self.model.agreement.images,
            "fp32_balanced_accuracy": self.fp32_balanced_accuracy,
            "int8_balanced_accuracy": self.model.balanced_accuracy,
            "balanced_accuracy_drop": self.drop,
            "max_drop": self.max_drop,
            "max_abs_difference_vs_pytorch": self.model.agreement.max_abs_difference,
            "top1_agreement_vs_pytorch": self.model.agreement.top1_agreement,
            "speed": [{"engine": row.label, **dataclasses.asdict(row.timing)} for row in self.speed],
            "speed_batch_size": SPEED_BATCH,
        }


def report_path(int8_path: Path) -> Path:
    """Where the verdict goes: `<stem>-report.json` beside the int8 model."""
    return int8_path.with_name(f"{int8_path.stem}{REPORT_SUFFIX}")


def output_layer_scope(model: ov.Model) -> nncf.IgnoredScope:
    """The softmax and the matrix multiply feeding it (through the bias add and scaling OpenVINO makes of an
    ONNX Gemm), kept float by name."""
    softmax = next(op for op in model.get_ordered_ops() if op.get_type_name().startswith("Softmax"))
    names = [softmax.get_friendly_name()]
    node = softmax.input_value(0).get_node()
    while node.get_type_name() in ("Add", "Multiply", "Convert"):
        node = node.input_value(0).get_node()
    if node.get_type_name() == "MatMul":
        names.append(node.get_friendly_name())
    return nncf.IgnoredScope(names=names, validate=False)


def fold_constants(model: ov.Model) -> ov.Model:
    """Fold the model's constant subgraphs in place before quantizing it.

    OpenVINO's ONNX reader turns each grouped (depthwise) convolution's weights into a Reshape whose target
    shape is computed by a small subgraph (Concat, Divide, VariadicSplit). NNCF puts its weight quantizer
    after that Reshape, so the weights reach the quantizer through an operation that is not a Constant, and
    the CPU plugin's low-precision transformations then leave every depthwise convolution in float, with
    conversions around it (`brgconv_avx512_dw_f32` and 19-21% of the batch in `Reorder`). Folded first,
    the weights are Constants, the depthwise convolutions run in int8 (`brgconv_avx512_dw_i8`), and int8
    becomes faster than fp32 instead of slower (docs/results.md, "int8").
    """
    manager = passes.Manager()
    manager.register_pass(passes.ConstantFolding())
    manager.run_passes(model)
    return model


def quantize_model(model: ov.Model, calibration_images: np.ndarray, validation: ImageBatch,
                   classes: tuple[str, ...], max_drop: float) -> ov.Model:
    """NNCF accuracy-controlled int8 of `model`, with balanced accuracy on `validation` as the metric.

    NNCF validates many candidate models (one per group of quantizers it ranks), so the validation function
    runs the images it is handed in batches, and returns per-image correctness for NNCF's ranking.
    """
    items = list(zip(validation.images, validation.labels.tolist(), strict=True))

    def validate(compiled: ov.CompiledModel,
                 data: Iterable[tuple[np.ndarray, int]]) -> tuple[float, list[float]]:
        chosen = list(data)
        images = np.stack([image for image, _ in chosen])
        labels = np.array([label for _, label in chosen])
        probabilities = np.concatenate([compiled(images[start:start + VALIDATION_BATCH])[0]
                                        for start in range(0, len(images), VALIDATION_BATCH)])
        predicted = [CLASS_CODES.index(classes[index]) for index in probabilities.argmax(axis=1)]
        correct = (np.array(predicted) == labels).astype(float).tolist()
        return balanced_accuracy(classes, probabilities, labels), correct

    return nncf.quantize_with_accuracy_control(
        fold_constants(model),
        calibration_dataset=nncf.Dataset(list(calibration_images[:, None])),
        validation_dataset=nncf.Dataset(items, lambda item: item[0][None]),
        validation_fn=validate,
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(calibration_images),
        ignored_scope=output_layer_scope(model),
    )


def save_ir(model: ov.Model, path: Path) -> Path:
    """Write an OpenVINO IR (`.xml` + `.bin`, weights uncompressed), each file atomically, weights first."""
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".openvino-") as work:
        staged = Path(work) / path.name
        ov.save_model(model, staged, compress_to_fp16=False)
        atomic_write_bytes(path.with_suffix(".bin"), staged.with_suffix(".bin").read_bytes())
        return atomic_write_bytes(path, staged.read_bytes())


def remove_ir(path: Path) -> None:
    """Delete an IR and its weights, so a refused model never lingers beside a report that refuses it."""
    for stale in (path, path.with_suffix(".bin")):
        stale.unlink(missing_ok=True)


def speed_problems(rows: tuple[SpeedRow, ...]) -> list[str]:
    """Why int8 (the last row) is not faster than the fastest fp32 row, at batch 1 and at batch 32."""
    *fp32, int8 = rows
    fastest_latency = min(fp32, key=lambda row: row.timing.p50_ms)
    fastest_throughput = max(fp32, key=lambda row: row.timing.images_per_second)
    problems = []
    if int8.timing.p50_ms >= fastest_latency.timing.p50_ms:
        problems.append(f"int8 is not faster at batch 1: p50 {int8.timing.p50_ms:.2f} ms against "
                        f"{fastest_latency.timing.p50_ms:.2f} ms for {fastest_latency.label}")
    if int8.timing.images_per_second <= fastest_throughput.timing.images_per_second:
        problems.append(f"int8 is not faster at batch {SPEED_BATCH}: {int8.timing.images_per_second:.1f} "
                        f"img/s against {fastest_throughput.timing.images_per_second:.1f} for "
                        f"{fastest_throughput.label}")
    return problems


def measure_speed(predictors: list[tuple[str, Predictor]], images: np.ndarray) -> tuple[SpeedRow, ...]:
    """Each predictor's timings on the same real images, in order."""
    single, batch = timing_batches(images, SPEED_BATCH)
    return tuple(SpeedRow(label, time_predictor(predictor, single, batch, iterations=50, batch_iterations=10))
                 for label, predictor in predictors)


def export_int8(fp32_path: Path, int8_path: Path, calibration_images: np.ndarray, validation: ImageBatch,
                reference_probabilities: np.ndarray, fp32_accuracy: float,
                max_drop: float = DEFAULT_MAX_DROP, threads: int | None = None,
                keep_slower: bool = False) -> Int8Report:
    """Quantize the fp32 file, judge the result on `validation` against `fp32_accuracy` (OpenVINO fp32's
    balanced accuracy on the same images), install it at `int8_path` only if it passes (with `keep_slower`,
    whenever it keeps accuracy), and write the verdict beside it either way."""
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    fp32 = OpenVinoPredictor(fp32_path, threads=threads)
    quantized = quantize_model(ov.Core().read_model(fp32_path), calibration_images, validation, fp32.classes,
                               max_drop)
    set_openvino_metadata(quantized, {QUANTIZATION_KEY: INT8_QUANTIZATION})
    with tempfile.TemporaryDirectory(dir=int8_path.parent, prefix=".int8-") as work:
        int8 = OpenVinoPredictor(save_ir(quantized, Path(work) / int8_path.name), threads=threads)
        measured = check_file("openvino int8", int8, reference_probabilities, validation)
        speed = measure_speed([("onnxruntime fp32", OnnxPredictor(fp32_path, threads=threads)),
                               ("openvino fp32", fp32), ("openvino int8", int8)], validation.images)
        slower = speed_problems(speed)
        problems = [] if keep_slower else list(slower)
        drop = fp32_accuracy - measured.balanced_accuracy
        if drop > max_drop:
            problems.insert(0, f"int8 loses {drop:.4f} balanced accuracy on {measured.agreement.images} "
                               f"validation images ({fp32_accuracy:.4f} -> "
                               f"{measured.balanced_accuracy:.4f}), more than the limit {max_drop:.4f}")
        if problems:
            remove_ir(int8_path)
        else:
            save_ir(quantized, int8_path)
            measured = dataclasses.replace(measured, path=int8_path)
    report = Int8Report(status=FAILED if problems else PASSED, model=measured,
                        fp32_balanced_accuracy=fp32_accuracy, max_drop=max_drop, speed=speed,
                        problems=tuple(problems), report_path=report_path(int8_path),
                        notes=tuple(slower) if keep_slower else ())
    atomic_write_json(report.report_path, report.to_json())
    return report
