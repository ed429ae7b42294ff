"""Using a trained model: one `Predictor` interface over PyTorch run directories and exported ONNX files.

`load_predictor` picks the backend from the path and `backend` (`inference.backends.resolve_model`),
importing only what that backend needs: an exported model on ONNX Runtime or OpenVINO never imports torch, so
a deployment can ship one engine alone. It also averages several models into an
ensemble and turns on test-time augmentation, so the recommended model of docs/results.md can be deployed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from lesionlab.inference.backends import FP32, ONNXRUNTIME, OPENVINO, resolve_model
from lesionlab.inference.base import ExplainUnavailableError, Explanation, Predictor, Preprocessing
from lesionlab.inference.prediction import Prediction, RankedClass

__all__ = [
    "ExplainUnavailableError",
    "Explanation",
    "Prediction",
    "Predictor",
    "Preprocessing",
    "RankedClass",
    "load_model",
    "load_predictor",
]


def load_predictor(path: str | os.PathLike[str], threads: int | None = None,
                   views: Sequence[str] | None = None,
                   ensemble: Sequence[str | os.PathLike[str]] = (),
                   class_offsets: str | os.PathLike[str] | None = None,
                   backend: str | None = None, precision: str = FP32) -> Predictor:
    """The model at `path`, averaged with the models in `ensemble` when there are any; with `views` (from
    `lesionlab.views.parse_views`), each model averages those test-time augmentation views; with
    `class_offsets` (a `class-offsets.json` from a study), the final probabilities are shifted by them.
    `backend` and `precision` apply to every member."""
    members = [load_model(member, threads, backend, precision) for member in (path, *ensemble)]
    if views:
        for member in members:
            member.views = tuple(views)
    predictor = members[0]
    if len(members) > 1:
        from lesionlab.inference.ensemble import EnsemblePredictor

        predictor = EnsemblePredictor(members)
    if class_offsets is None:
        return predictor
    from lesionlab.inference.offsets import OffsetPredictor

    return OffsetPredictor(predictor, class_offsets)


def load_model(path: str | os.PathLike[str], threads: int | None = None, backend: str | None = None,
               precision: str = FP32) -> Predictor:
    """One model on the engine `resolve_model` picks: PyTorch for a run directory or checkpoint, ONNX
    Runtime or OpenVINO for an exported file."""
    source = resolve_model(path, backend, precision)
    if source.backend == ONNXRUNTIME:
        from lesionlab.inference.onnx_backend import OnnxPredictor

        return OnnxPredictor(source.path, threads=threads)
    if source.backend == OPENVINO:
        from lesionlab.inference.openvino_backend import OpenVinoPredictor

        return OpenVinoPredictor(source.path, threads=threads, precision=source.precision)
    from lesionlab.inference.torch_backend import TorchPredictor

    return TorchPredictor.from_path(source.path, threads=threads, precision=source.precision)
