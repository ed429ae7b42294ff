"""`logits.safetensors`: the per-view logits an evaluation scored, saved beside its `predictions.csv`.

`predictions.csv` holds probabilities rounded to six decimals, after the views and the temperature have
been applied. Ensembles and decision rules are scorings of the members' logits (`lesionlab.scoring`), the
same function a deployed model applies, so the evaluation keeps what it scored: the network's float32
logits `(images, views, classes)`, identity view first, with the image ids, class codes, view names, the
temperature its reported probabilities applied and the sha256 of the weights, in the file's JSON header.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from lesionlab.errors import DataError
from lesionlab.io_utils import atomic_write_bytes
from lesionlab.scoring import Scoring

LOGITS_FILE = "logits.safetensors"
TENSOR = "view_logits"


@dataclass(frozen=True)
class ViewLogits:
    """One evaluation's logits and what they belong to."""

    image_ids: tuple[str, ...]
    classes: tuple[str, ...]
    views: tuple[str, ...]
    logits: np.ndarray
    temperature: float | None
    checkpoint_sha256: str

    def __post_init__(self) -> None:
        expected = (len(self.image_ids), len(self.views), len(self.classes))
        if self.logits.shape != expected:
            raise ValueError(f"logits have shape {self.logits.shape}, expected {expected} (images, views, "
                             f"classes)")


def write_view_logits(path: Path, record: ViewLogits) -> Path:
    """Write the logits (float32: what the network produced, so nothing is lost) atomically."""
    header = {
        "image_ids": json.dumps(list(record.image_ids)),
        "classes": json.dumps(list(record.classes)),
        "views": json.dumps(list(record.views)),
        "temperature": json.dumps(record.temperature),
        "checkpoint_sha256": record.checkpoint_sha256,
    }
    payload = save({TENSOR: np.ascontiguousarray(record.logits, dtype=np.float32)}, metadata=header)
    return atomic_write_bytes(path, payload)


def read_view_logits(path: Path) -> ViewLogits:
    """Read a `logits.safetensors`; a missing or damaged one is a `DataError` saying to evaluate again."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no logits file; evaluate the run again with `lesionlab evaluate` (it "
                        f"writes {LOGITS_FILE} beside predictions.csv).")
    try:
        with safe_open(str(path), framework="np") as handle:
            header = handle.metadata()
            logits = handle.get_tensor(TENSOR)
        return ViewLogits(
            image_ids=tuple(json.loads(header["image_ids"])),
            classes=tuple(json.loads(header["classes"])),
            views=tuple(json.loads(header["views"])),
            logits=logits.astype(np.float64),
            temperature=json.loads(header["temperature"]),
            checkpoint_sha256=header["checkpoint_sha256"],
        )
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as error:
        raise DataError(f"{path}: not a lesionlab logits file ({error}); evaluate the run again.") from error


def ensemble_probabilities(members: Sequence[ViewLogits], names: Sequence[str],
                           class_offsets: Sequence[float] | None = None) -> np.ndarray:
    """The ensemble's probabilities over the members' evaluations: each member under its own views and
    temperature, averaged, then shifted by `class_offsets`: `Scoring.probabilities`, the rule a deployed
    ensemble applies. Members must have scored the same images in the same class order."""
    first = members[0]
    for name, member in zip(names, members, strict=True):
        if member.image_ids != first.image_ids or member.classes != first.classes:
            raise DataError(f"ensemble member {name} was evaluated on other images or classes than "
                            f"{names[0]}; evaluate every member on the same data and split.")
    scoring = Scoring(tuple(member.temperature for member in members),
                      None if class_offsets is None else tuple(class_offsets))
    return scoring.probabilities([member.logits for member in members])
