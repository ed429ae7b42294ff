"""How an exported model is judged against the model it came from: on the same real validation images, the
largest probability difference, top-1 agreement, and balanced accuracy (lesionlab's headline metric).

Torch-free, so the int8 flow (`lesionlab.quantize`) and the fp32 export (`lesionlab.export`) share one rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesionlab.classes import CLASS_CODES
from lesionlab.evaluation import metrics
from lesionlab.inference.base import Predictor
from lesionlab.inference.run_samples import ImageBatch


@dataclass(frozen=True)
class Agreement:
    """How closely a candidate's probabilities follow a reference's on the same images."""

    images: int
    max_abs_difference: float
    top1_agreement: float


@dataclass(frozen=True)
class ExportedFile:
    """One exported model on one engine (`label`, e.g. `openvino int8`): its file, size, agreement with
    PyTorch and balanced accuracy on the validation images."""

    label: str
    path: Path
    size_bytes: int
    agreement: Agreement
    balanced_accuracy: float


def agreement(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """Largest absolute probability difference and the share of images with the same top class."""
    return Agreement(
        images=len(reference),
        max_abs_difference=float(np.abs(reference - candidate).max()),
        top1_agreement=float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1))),
    )


def balanced_accuracy(classes: Sequence[str], probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Balanced accuracy of a file's top classes, compared by class code (`classes` is the file's own order).

    A class the file names but lesionlab does not know counts as a wrong answer.
    """
    index = {code: position for position, code in enumerate(CLASS_CODES)}
    predicted = np.array([index.get(classes[top], -1) for top in probabilities.argmax(axis=1)])
    return metrics.balanced_accuracy(np.asarray(labels), predicted)


def model_size(path: Path) -> int:
    """Bytes on disk of a model file, with its `.bin` weights for an OpenVINO IR."""
    weights = path.with_suffix(".bin")
    with_weights = path.suffix == ".xml" and weights.is_file()
    return path.stat().st_size + (weights.stat().st_size if with_weights else 0)


def check_file(label: str, predictor: Predictor, reference_probabilities: np.ndarray,
               validation: ImageBatch, metadata: np.ndarray | None = None) -> ExportedFile:
    """Run an exported model on the validation images (with a metadata model's encoded fields per image,
    when given) and compare it with PyTorch's probabilities on the same inputs."""
    probabilities = predictor.predict_many(validation.images, metadata=metadata)
    return ExportedFile(
        label=label, path=predictor.source, size_bytes=model_size(predictor.source),
        agreement=agreement(reference_probabilities, probabilities),
        balanced_accuracy=balanced_accuracy(predictor.classes, probabilities, validation.labels),
    )
