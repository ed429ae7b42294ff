"""Using a trained model: one `Predictor` interface over PyTorch run directories and exported ONNX files.

`load_predictor` picks the backend from the path and `backend` (`inference.backends.resolve_model`),
importing only what that backend needs: an exported model on ONNX Runtime or OpenVINO never imports torch, so
a deployment can ship one engine alone. It also averages several models into an
ensemble and turns on test-time augmentation, so the recommended model of docs/results.md can be deployed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from lesionlab.errors import CheckpointError, ConfigError
from lesionlab.inference.backends import FP32, ONNXRUNTIME, OPENVINO, resolve_model
from lesionlab.inference.base import ExplainUnavailableError, Explanation, Predictor, Preprocessing
from lesionlab.inference.model_file import ResolvedModel, is_model_file, resolve_model_file
from lesionlab.inference.prediction import Prediction, RankedClass
from lesionlab.malignancy import MalignancyRule

__all__ = [
    "ExplainUnavailableError",
    "Explanation",
    "Prediction",
    "Predictor",
    "Preprocessing",
    "RankedClass",
    "load_model",
    "load_model_file",
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
    `backend` and `precision` apply to every member. A `model.json` (`inference.model_file`) names its
    members, views and offsets itself, checked against their recorded digests and temperatures."""
    if is_model_file(path):
        if views or ensemble or class_offsets is not None:
            raise ConfigError(f"{path}: a model file names its members, TTA views and class offsets itself; "
                              f"drop --ensemble, --tta and --class-offsets.")
        return load_model_file(resolve_model_file(path), threads, backend, precision)
    members = [load_model(member, threads, backend, precision) for member in (path, *ensemble)]
    if views:
        for member in members:
            if member.graph_scoring is not None:
                raise ConfigError(f"{member.source}: this file was exported from a model file and averages "
                                  f"its views inside the graph; drop --tta.")
            member.views = tuple(views)
    if len(members) == 1 and class_offsets is None:
        return members[0]
    from lesionlab.inference.scored import ScoredPredictor

    return ScoredPredictor(members, class_offsets)


def load_model_file(model: ResolvedModel, threads: int | None = None, backend: str | None = None,
                    precision: str = FP32) -> Predictor:
    """The predictor a checked `model.json` describes, flagging malignant at the threshold the file recorded
    for its scoring (without one: a single run's own fit, else the fallback); a member whose fitted
    temperature is not the one the file recorded is refused, since its probabilities would differ from the
    ones the file stood for."""
    views = model.views if len(model.views) > 1 else None
    predictor = load_predictor(model.members[0], threads, views, model.members[1:], model.class_offsets,
                               backend, precision)
    for member, path, recorded in zip(predictor.members, model.members, model.temperatures, strict=True):
        if member.temperature != recorded:
            raise CheckpointError(f"{model.source}: {path} now applies temperature {member.temperature}, not "
                                  f"the {recorded} the model file recorded; write the model file again.")
    if model.malignancy is not None:
        predictor.malignancy = MalignancyRule(model.malignancy.threshold, model.malignancy)
    return predictor


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
