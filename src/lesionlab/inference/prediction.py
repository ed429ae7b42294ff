"""One image's prediction as data: class probabilities, their ranking, and the malignant/benign reading.

The malignant/benign reading is the summed probability of akiec, bcc and mel against the predictor's
`MalignancyRule` (a threshold fitted on validation data, or a stated fallback), not the top class.

Kept free of torch so the ONNX path, the CLI's JSON output and the web API all describe a prediction the same
way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lesionlab.classes import CLASSES, MALIGNANT_CODES
from lesionlab.malignancy import FALLBACK_RULE, MalignancyRule, malignant_probability

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
    """The model's reading of one image; `malignant` compares the summed malignant probability with
    `malignancy_rule`'s threshold."""

    probabilities: dict[str, float]
    ranked: tuple[RankedClass, ...]
    malignancy_rule: MalignancyRule = FALLBACK_RULE

    @classmethod
    def from_probabilities(cls, classes: Sequence[str], probabilities: np.ndarray,
                           malignancy_rule: MalignancyRule = FALLBACK_RULE) -> Prediction:
        """Build a prediction from one row of softmax probabilities in the model's class order, flagged
        malignant or benign by `malignancy_rule`."""
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
        return cls(probabilities=by_code, ranked=ranked, malignancy_rule=malignancy_rule)

    @property
    def top_class(self) -> str:
        """The most probable class code."""
        return self.ranked[0].code

    @property
    def top_probability(self) -> float:
        """The probability of the top class."""
        return self.ranked[0].probability

    @property
    def malignant_probability(self) -> float:
        """The summed probability of the malignant classes (akiec, bcc, mel)."""
        codes = list(self.probabilities)
        return float(malignant_probability(np.array(list(self.probabilities.values())), codes))

    @property
    def malignant(self) -> bool:
        """Whether the summed malignant probability reaches the rule's threshold."""
        return self.malignancy_rule.is_malignant(self.malignant_probability)

    def to_dict(self, top_k: int | None = None) -> dict[str, Any]:
        """A JSON-ready dict; `top_k` shortens the ranked list only, never the probability table."""
        ranked = self.ranked if top_k is None else self.ranked[:top_k]
        return {
            "probabilities": dict(self.probabilities),
            "top_class": self.top_class,
            "top_probability": self.top_probability,
            "malignant_probability": self.malignant_probability,
            "malignant": self.malignant,
            "malignant_threshold": self.malignancy_rule.threshold,
            "malignant_threshold_fitted": self.malignancy_rule.fitted,
            "malignant_rule": self.malignancy_rule.description,
            "classes": [entry.to_dict() for entry in ranked],
        }
