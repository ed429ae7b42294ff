"""Using a trained model: one `Predictor` interface over PyTorch run directories and exported ONNX files.

`load_predictor` picks the backend from the path, importing only what that backend needs: an `.onnx` file
never imports torch, so a deployment can ship ONNX Runtime alone. It also averages several models into an
ensemble and turns on test-time augmentation, so the recommended model of docs/results.md can be deployed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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
    "load_model",
    "load_predictor",
]


def load_predictor(path: str | os.PathLike[str], threads: int | None = None,
                   views: Sequence[str] | None = None,
                   ensemble: Sequence[str | os.PathLike[str]] = (),
                   class_offsets: str | os.PathLike[str] | None = None) -> Predictor:
    """The model at `path`, averaged with the models in `ensemble` when there are any; with `views` (from
    `lesionlab.views.parse_views`), each model averages those test-time augmentation views; with
    `class_offsets` (a `class-offsets.json` from a study), the final probabilities are shifted by them."""
    members = [load_model(member, threads) for member in (path, *ensemble)]
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


def load_model(path: str | os.PathLike[str], threads: int | None = None) -> Predictor:
    """ONNX Runtime for a `.onnx` file, else PyTorch for a run directory or checkpoint file."""
    if Path(path).suffix.lower() == ONNX_SUFFIX:
        from lesionlab.inference.onnx_backend import OnnxPredictor

        return OnnxPredictor(path, threads=threads)
    from lesionlab.inference.torch_backend import TorchPredictor

    return TorchPredictor.from_path(path, threads=threads)
