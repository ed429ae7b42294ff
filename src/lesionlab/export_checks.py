"""How an exported model is judged against the model it came from: on the same real validation images, the
largest probability difference, top-1 agreement, and balanced accuracy (lesionlab's headline metric).

Torch-free, so the int8 flow (`lesionlab.quantize`) and the fp32 export (`lesionlab.export`) share one rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import recall_score

from lesionlab.classes import CLASS_CODES
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
    """Balanced accuracy: mean recall over the classes present in `labels`, compared by class code.

    That is scikit-learn's `balanced_accuracy_score`; written as macro recall over the true classes so a small
    check sample that lacks a rare class (while the model predicts it) gives no warning.
    """
    truth = [CLASS_CODES[label] for label in labels]
    predicted = [classes[index] for index in probabilities.argmax(axis=1)]
    return float(recall_score(truth, predicted, labels=sorted(set(truth)), average="macro", zero_division=0))


def model_size(path: Path) -> int:
    """Bytes on disk of a model file, with its `.bin` weights for an OpenVINO IR."""
    weights = path.with_suffix(".bin")
    with_weights = path.suffix == ".xml" and weights.is_file()
    return path.stat().st_size + (weights.stat().st_size if with_weights else 0)


def check_file(label: str, predictor: Predictor, reference_probabilities: np.ndarray,
               validation: ImageBatch) -> ExportedFile:
    """Run an exported model on the validation images and compare it with PyTorch's probabilities."""
    probabilities = predictor.predict_many(validation.images)
    return ExportedFile(
        label=label, path=predictor.source, size_bytes=model_size(predictor.source),
        agreement=agreement(reference_probabilities, probabilities),
        balanced_accuracy=balanced_accuracy(predictor.classes, probabilities, validation.labels),
    )
