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

from lesionlab.errors import DataError
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

    def with_probabilities(self, probabilities: np.ndarray) -> Predictions:
        """The same images and labels with other probabilities (e.g. an ensemble's mean)."""
        return Predictions(self.image_ids, self.lesion_ids, self.labels, probabilities, self.class_codes)


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


def read_predictions(path: Path) -> Predictions:
    """Read a `predictions.csv` written by `write_predictions`; class order from its prob_ columns."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = reader.fieldnames or []
    except OSError as error:
        raise DataError(
            f"{path}: cannot read predictions ({error}); run `lesionlab evaluate` to write it."
        ) from error
    codes = tuple(name[len(PROBABILITY_PREFIX) :] for name in header if name.startswith(PROBABILITY_PREFIX))
    if not rows or not codes:
        raise DataError(f"{path}: no predictions, or no {PROBABILITY_PREFIX}<class> columns; evaluate again.")
    index = {code: position for position, code in enumerate(codes)}
    return Predictions(
        image_ids=tuple(row["image_id"] for row in rows),
        lesion_ids=tuple(row["lesion_id"] or None for row in rows),
        labels=np.array([index[row["true_class"]] for row in rows], dtype=np.int64),
        probabilities=np.array([[float(row[PROBABILITY_PREFIX + code]) for code in codes] for row in rows]),
        class_codes=codes,
    )
