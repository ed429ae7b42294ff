"""int8 on ONNX Runtime, for the speed comparison of `lesionlab bench`: ONNX Runtime's own static
post-training quantization of the exported fp32 file (QDQ format, per-channel int8 weights, uint8 activations,
min-max calibration on training images of the run's split), the output layer and the softmax kept float so
probabilities keep full resolution.

This is the other runtime's int8, measured beside OpenVINO's: `lesionlab export --int8` installs only the
OpenVINO model, whose accuracy NNCF controls (`lesionlab.quantize`). On CPUs with VNNI or AMX, ONNX Runtime
runs uint8 activations with int8 weights without the saturation older x86 CPUs suffer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from lesionlab.export import set_metadata
from lesionlab.inference.onnx_metadata import INPUT_NAME, QUANTIZATION_KEY
from lesionlab.io_utils import atomic_write_bytes

ORT_INT8_QUANTIZATION = (
    "int8 (ONNX Runtime static quantization, QDQ): per-channel int8 weights, uint8 activations, min-max "
    "calibration on training images; the output layer and the softmax stay float"
)
CALIBRATION_BATCH = 16


class _Batches(CalibrationDataReader):
    """Calibration images fed to ONNX Runtime's calibrator in batches, as the graph's `image` input."""

    def __init__(self, images: np.ndarray) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            {INPUT_NAME: np.ascontiguousarray(images[start:start + CALIBRATION_BATCH], dtype=np.float32)}
            for start in range(0, len(images), CALIBRATION_BATCH))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def output_layer_nodes(model: onnx.ModelProto) -> list[str]:
    """The softmax and the last Gemm (the output layer) by name: what stays float."""
    nodes = model.graph.node
    softmax = [node.name for node in nodes if node.op_type == "Softmax"]
    output_layer = [node.name for node in nodes if node.op_type == "Gemm"][-1:]
    return [*output_layer, *softmax]


def quantize_onnxruntime(fp32_path: Path, int8_path: Path, calibration_images: np.ndarray) -> Path:
    """Write the ONNX Runtime int8 model of `fp32_path` to `int8_path`, its lesionlab metadata kept (so
    `OnnxPredictor` reads it like the fp32 file) and its quantization named in `lesionlab.quantization`."""
    fp32 = onnx.load(str(fp32_path))
    quantize_static(str(fp32_path), str(int8_path), _Batches(calibration_images),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=output_layer_nodes(fp32))
    int8 = onnx.load(str(int8_path))
    set_metadata(int8, {**{entry.key: entry.value for entry in fp32.metadata_props},
                        QUANTIZATION_KEY: ORT_INT8_QUANTIZATION})
    return atomic_write_bytes(int8_path, int8.SerializeToString())
