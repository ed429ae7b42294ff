"""A `Predictor` over an exported `.onnx` file with ONNX Runtime; it never imports torch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lesionlab.errors import CheckpointError
from lesionlab.inference.base import Predictor
from lesionlab.inference.onnx_metadata import (
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


def session_options(threads: int | None) -> ort.SessionOptions:
    """All graph optimisations on; `threads` fixes the intra-op pool so benchmarks compare like with like."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class OnnxPredictor(Predictor):
    """Runs an exported model; its classes and pre-processing come from the file's own metadata."""

    backend = "onnx"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        model_path = Path(path)
        if not model_path.is_file():
            raise CheckpointError(f"{model_path}: no such ONNX file; create it with `lesionlab export RUN`.")
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=session_options(threads),
                                                providers=["CPUExecutionProvider"])
        except (ort.capi.onnxruntime_pybind11_state.Fail,
                ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
                ort.capi.onnxruntime_pybind11_state.InvalidGraph) as error:
            raise CheckpointError(f"{model_path}: ONNX Runtime cannot load this file ({error}); it is "
                                  f"truncated or not an ONNX model. Re-export it with `lesionlab export`."
                                  ) from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        card = card_from_metadata(metadata, model_path)
        check_input_pixels(metadata, model_path)
        self.quantization = metadata.get(QUANTIZATION_KEY, "unknown")
        self.graph_scoring = graph_scoring(metadata, model_path)
        self.temperature = temperature_from_metadata(metadata, model_path)
        self.malignancy = malignancy_from_metadata(metadata, model_path, self.temperature)
        self.input_name = self.session.get_inputs()[0].name
        self.metadata_input = metadata_input(metadata, card, [entry.name for entry in
                                                              self.session.get_inputs()], model_path)
        super().__init__(card, model_path, file_sha256(model_path))

    def batch_logits(self, batch: np.ndarray, metadata: np.ndarray | None = None) -> np.ndarray:
        """Logits recovered from the exported graph's probabilities (`graph_logits`) for resized pixels
        0..255; a metadata graph gets the encoded fields, every field missing when none are given."""
        inputs = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        if self.metadata_input is not None:
            inputs[self.metadata_input] = self.metadata_rows(metadata, len(batch))
        elif metadata is not None:
            raise self.metadata_unavailable_error()
        probabilities = self.session.run(None, inputs)[0]
        return graph_logits(probabilities, self.temperature)
