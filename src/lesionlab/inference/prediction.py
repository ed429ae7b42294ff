"""One image's prediction as data: class probabilities, their ranking, and the malignant/benign reading.

Kept free of torch so the ONNX path, the CLI's JSON output and the web API all describe a prediction the same
way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lesionlab.classes import CLASSES, MALIGNANT_CODES

_NAME_BY_CODE = {lesion_class.code: lesion_class.name for lesion_class in CLASSES}


@dataclass(frozen=True)
class RankedClass:
    """One class with its probability, as shown in a ranked list."""

    code: str
    name: str
    probability: float
    malignant: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"code": self.code, "name": self.name, "probability": self.probability,
                "malignant": self.malignant}


@dataclass(frozen=True)
class Prediction:
    """The model's reading of one image; `malignant` follows the top class (akiec, bcc or mel)."""

    probabilities: dict[str, float]
    ranked: tuple[RankedClass, ...]

    @classmethod
    def from_probabilities(cls, classes: Sequence[str], probabilities: np.ndarray) -> Prediction:
        """Build a prediction from one row of softmax probabilities in the model's class order."""
        values = [float(p) for p in np.asarray(probabilities, dtype=np.float64).reshape(-1)]
        if len(values) != len(classes):
            raise ValueError(f"{len(values)} probabilities for {len(classes)} classes")
        by_code = dict(zip(classes, values, strict=True))
        order = sorted(range(len(classes)), key=lambda index: -values[index])
        ranked = tuple(
            RankedClass(code=classes[i], name=_NAME_BY_CODE.get(classes[i], classes[i]),
                        probability=values[i], malignant=classes[i] in MALIGNANT_CODES)
            for i in order
        )
        return cls(probabilities=by_code, ranked=ranked)

    @property
    def top_class(self) -> str:
        """The most probable class code."""
        return self.ranked[0].code

    @property
    def top_probability(self) -> float:
        """The probability of the top class."""
        return self.ranked[0].probability

    @property
    def malignant(self) -> bool:
        """Whether the top class is one of the malignant classes."""
        return self.ranked[0].malignant

    def to_dict(self, top_k: int | None = None) -> dict[str, Any]:
        """A JSON-ready dict; `top_k` shortens the ranked list only, never the probability table."""
        ranked = self.ranked if top_k is None else self.ranked[:top_k]
        return {
            "probabilities": dict(self.probabilities),
            "top_class": self.top_class,
            "top_probability": self.top_probability,
            "malignant": self.malignant,
            "classes": [entry.to_dict() for entry in ranked],
        }
