"""A model's predictions on one dataset part, and their `predictions.csv` form.

The CSV is the evaluation's ground truth artefact: every number in `metrics.json` can be recomputed from it
alone (true class, predicted class, one probability per class, and the lesion id that the bootstrap
resamples by).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesionlab.io_utils import atomic_write_text

PROBABILITY_PREFIX = "prob_"


@dataclass(frozen=True)
class Predictions:
    """Class probabilities for N images, with labels indexed into `class_codes` (the model's class order)."""

    image_ids: tuple[str, ...]
    lesion_ids: tuple[str | None, ...]
    labels: np.ndarray
    probabilities: np.ndarray
    class_codes: tuple[str, ...]

    def __post_init__(self) -> None:
        count = len(self.image_ids)
        if self.probabilities.shape != (count, len(self.class_codes)):
            raise ValueError(
                f"probabilities have shape {self.probabilities.shape}, "
                f"expected ({count}, {len(self.class_codes)})"
            )
        if self.labels.shape != (count,) or len(self.lesion_ids) != count:
            raise ValueError("image_ids, lesion_ids, labels and probabilities must describe the same images")

    @property
    def predicted(self) -> np.ndarray:
        """The predicted label of each image: the most probable class."""
        return self.probabilities.argmax(axis=1)


def predictions_to_csv(predictions: Predictions) -> str:
    """Render predictions as CSV text: image_id, lesion_id, true_class, predicted_class, prob_<code>..."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    codes = predictions.class_codes
    writer.writerow(
        ["image_id", "lesion_id", "true_class", "predicted_class", *(PROBABILITY_PREFIX + c for c in codes)]
    )
    for row in range(len(predictions.image_ids)):
        writer.writerow(
            [
                predictions.image_ids[row],
                predictions.lesion_ids[row] or "",
                codes[predictions.labels[row]],
                codes[predictions.predicted[row]],
                *(f"{p:.6f}" for p in predictions.probabilities[row]),
            ]
        )
    return buffer.getvalue()


def write_predictions(path: Path, predictions: Predictions) -> Path:
    """Write `predictions.csv` atomically."""
    return atomic_write_text(path, predictions_to_csv(predictions))
