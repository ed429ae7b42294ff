"""A `Predictor` on OpenVINO's CPU plugin, over an exported `.onnx` file or an OpenVINO IR (`.xml` + `.bin`,
the int8 model `lesionlab export --int8` writes); it never imports torch.

OpenVINO's ONNX reader keeps the file's `metadata_props` under the model's `framework` runtime info and its
IR writer keeps that section, so one reader serves both formats and an IR carries lesionlab's card exactly as
the ONNX file it came from. `precision` sets `INFERENCE_PRECISION_HINT`: on a CPU with AMX or AVX-512 bf16,
OpenVINO would otherwise run bf16 silently, so fp32 is asked for explicitly.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.properties as properties
import openvino.properties.hint as hints

from lesionlab.errors import CheckpointError
from lesionlab.inference.backends import BF16, FP32, OPENVINO_SUFFIX
from lesionlab.inference.base import Predictor
from lesionlab.inference.onnx_metadata import (
    INPUT_NAME,
    QUANTIZATION_KEY,
    card_from_metadata,
    check_input_pixels,
    graph_scoring,
    malignancy_from_metadata,
    metadata_input,
    temperature_from_metadata,
)
from lesionlab.io_utils import file_sha256
from lesionlab.scoring import graph_logits

METADATA_SECTION = "framework"
ELEMENT_TYPES = {FP32: ov.Type.f32, BF16: ov.Type.bf16}
DEVICE = "CPU"


def read_openvino_model(path: Path) -> ov.Model:
    """Read an `.onnx` or `.xml` file; a damaged or foreign file is a `CheckpointError` naming it."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file; create it with `lesionlab export RUN`.")
    if path.suffix.lower() == OPENVINO_SUFFIX and not path.with_suffix(".bin").is_file():
        raise CheckpointError(f"{path}: its weights file {path.with_suffix('.bin').name} is missing; keep "
                              f"the .xml and .bin together or re-export with `lesionlab export RUN --int8`.")
    try:
        return ov.Core().read_model(path)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: OpenVINO cannot read this file ({str(error).splitlines()[0]}); it is "
                              f"truncated or not a model. Re-export it with `lesionlab export`.") from error


def openvino_metadata(model: ov.Model) -> dict[str, str]:
    """The exported file's `metadata_props`, as OpenVINO keeps them (empty for a model without any)."""
    if not model.has_rt_info([METADATA_SECTION]):
        return {}
    section = model.get_rt_info()[METADATA_SECTION]
    return {key: value.astype(str) for key, value in section.items()}


def set_openvino_metadata(model: ov.Model, metadata: dict[str, str]) -> None:
    """Write metadata entries where `openvino_metadata` reads them, so a saved IR describes itself."""
    for key, value in metadata.items():
        model.set_rt_info(value, [METADATA_SECTION, key])


def compile_config(threads: int | None, precision: str) -> dict[str, object]:
    """Latency hint (one stream: each call uses every thread), the precision, and a fixed thread count for
    like-with-like benchmarks."""
    config: dict[str, object] = {
        hints.inference_precision: ELEMENT_TYPES[precision],
        hints.performance_mode: hints.PerformanceMode.LATENCY,
    }
    if threads is not None:
        config[properties.inference_num_threads] = threads
    return config


class OpenVinoPredictor(Predictor):
    """Runs an exported model on OpenVINO; classes and pre-processing come from the file's metadata.

    Each calling thread gets its own infer request (a request holds buffers and is not thread-safe), all on
    one compiled model.
    """

    backend = "openvino"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None,
                 precision: str = FP32) -> None:
        model_path = Path(path)
        model = read_openvino_model(model_path)
        metadata = openvino_metadata(model)
        card = card_from_metadata(metadata, model_path)
        check_input_pixels(metadata, model_path)
        self.precision = precision
        self.quantization = metadata.get(QUANTIZATION_KEY, "unknown")
        self.graph_scoring = graph_scoring(metadata, model_path)
        self.temperature = temperature_from_metadata(metadata, model_path)
        self.malignancy = malignancy_from_metadata(metadata, model_path, self.temperature)
        self.metadata_input = metadata_input(metadata, card, [name for entry in model.inputs
                                                              for name in entry.get_names()], model_path)
        self.compiled = ov.Core().compile_model(model, DEVICE, compile_config(threads, precision))
        self._local = threading.local()
        weights = [model_path.with_suffix(".bin")] if model_path.suffix.lower() == OPENVINO_SUFFIX else []
        super().__init__(card, model_path, file_sha256(model_path, *weights))

    def _request(self) -> ov.InferRequest:
        """This thread's infer request, created on first use."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def batch_logits(self, batch: np.ndarray, metadata: np.ndarray | None = None) -> np.ndarray:
        """Logits recovered from the exported graph's probabilities (`graph_logits`) for resized pixels
        0..255; a metadata graph gets the encoded fields, every field missing when none are given."""
        images = np.ascontiguousarray(batch, dtype=np.float32)
        if self.metadata_input is None and metadata is not None:
            raise self.metadata_unavailable_error()
        request = self._request()
        if self.metadata_input is None:
            request.infer([images])
        else:
            request.infer({INPUT_NAME: images, self.metadata_input: self.metadata_rows(metadata, len(batch))})
        return graph_logits(np.array(request.get_output_tensor(0).data, dtype=np.float32), self.temperature)
