"""Using a trained model: one `Predictor` interface over PyTorch run directories and exported ONNX files.

`load_predictor` picks the backend from the path, importing only what that backend needs: an `.onnx` file
never imports torch, so a deployment can ship ONNX Runtime alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from lesionlab.inference.base import ExplainUnavailableError, Explanation, Predictor, Preprocessing
from lesionlab.inference.prediction import Prediction, RankedClass

ONNX_SUFFIX = ".onnx"

__all__ = [
    "ExplainUnavailableError",
    "Explanation",
    "Prediction",
    "Predictor",
    "Preprocessing",
    "RankedClass",
    "load_predictor",
]


def load_predictor(path: str | os.PathLike[str], threads: int | None = None) -> Predictor:
    """ONNX Runtime for a `.onnx` file, else PyTorch for a run directory or checkpoint file."""
    if Path(path).suffix.lower() == ONNX_SUFFIX:
        from lesionlab.inference.onnx_backend import OnnxPredictor

        return OnnxPredictor(path, threads=threads)
    from lesionlab.inference.torch_backend import TorchPredictor

    return TorchPredictor.from_path(path, threads=threads)
