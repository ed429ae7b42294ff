"""Malignant or benign, as a clinician asks it: the summed probability of akiec, bcc and mel against a
threshold chosen on validation data for a stated sensitivity.

The arg-max class is the wrong question for triage: a lesion at 30% melanoma, 25% bcc and 45% nevus has a
benign top class yet is 55% likely malignant. So every surface (predict, the API, the page) shows the summed
malignant probability, and flags a lesion malignant when it reaches a threshold fitted on the run's
validation part so that at least `DEFAULT_TARGET_SENSITIVITY` of its malignant lesions are flagged. The fit
is saved beside the checkpoint (`best.malignancy.json`), with the weights' sha256 and the temperature it
was fitted under, so it is never applied to other weights or other probabilities. Without a fit the flag
falls back to `FALLBACK_THRESHOLD` and says so.

This module is numpy-only: the ONNX path uses it without PyTorch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lesionlab.classes import MALIGNANT_CODES
from lesionlab.errors import CheckpointError
from lesionlab.io_utils import atomic_write_json

DEFAULT_TARGET_SENSITIVITY = 0.90
FALLBACK_THRESHOLD = 0.5
THRESHOLD_SUFFIX = ".malignancy.json"
TEMPERATURE_TOLERANCE = 1e-9


def malignant_columns(class_codes: Sequence[str]) -> list[int]:
    """Indices of the malignant classes (akiec, bcc, mel) in a model's class order."""
    return [index for index, code in enumerate(class_codes) if code in MALIGNANT_CODES]


def malignant_probability(probabilities: np.ndarray, class_codes: Sequence[str]) -> np.ndarray:
    """The summed probability of the malignant classes, per row of `(..., classes)` probabilities."""
    return np.asarray(probabilities)[..., malignant_columns(class_codes)].sum(axis=-1)


@dataclass(frozen=True)
class ThresholdFit:
    """A malignancy threshold and what it was fitted on, as saved in `<stem>.malignancy.json`."""

    threshold: float
    target_sensitivity: float
    fitted_on: str
    samples: int
    malignant_samples: int
    sensitivity: float
    specificity: float
    temperature: float | None
    checkpoint_sha256: str


@dataclass(frozen=True)
class MalignancyRule:
    """How a prediction is flagged malignant: summed malignant probability >= `threshold`.

    `fit` is the validation fit behind the threshold; None means the fallback threshold, and `reason` says
    why no fit applies.
    """

    threshold: float
    fit: ThresholdFit | None = None
    reason: str = "no threshold fitted on validation data"

    @property
    def fitted(self) -> bool:
        """Whether the threshold was chosen on validation data for a stated sensitivity."""
        return self.fit is not None

    def is_malignant(self, probability: float) -> bool:
        """The flag for one summed malignant probability."""
        return probability >= self.threshold

    @property
    def description(self) -> str:
        """The rule in words, for people and for the JSON answers."""
        if self.fit is None:
            return (f"malignant probability >= {self.threshold:.3f}: fallback, {self.reason} "
                    f"(`lesionlab evaluate RUN` fits one)")
        return (f"malignant probability >= {self.threshold:.3f}, chosen on the {self.fit.fitted_on} part "
                f"({self.fit.samples} images, {self.fit.malignant_samples} malignant) for sensitivity >= "
                f"{self.fit.target_sensitivity:.2f} (there: sensitivity {self.fit.sensitivity:.3f}, "
                f"specificity {self.fit.specificity:.3f})")


FALLBACK_RULE = MalignancyRule(FALLBACK_THRESHOLD)


def threshold_path(checkpoint_stem: Path) -> Path:
    """Where a checkpoint's malignancy threshold is kept: `<stem>.malignancy.json` beside it."""
    return checkpoint_stem.with_name(checkpoint_stem.name + THRESHOLD_SUFFIX)


def save_threshold(path: Path, fit: ThresholdFit) -> Path:
    """Write the fit atomically."""
    return atomic_write_json(path, asdict(fit))


def read_threshold(path: Path) -> ThresholdFit | None:
    """The saved fit, or None where there is none; a malformed file is an error naming it."""
    if not Path(path).is_file():
        return None
    try:
        return ThresholdFit(**json.loads(Path(path).read_text(encoding="utf-8")))
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: unreadable malignancy threshold ({error}); delete it and run "
                              f"`lesionlab evaluate RUN` to refit") from error


def rule_for(path: Path, weights_sha256: str, temperature: float | None) -> MalignancyRule:
    """The rule for these weights under this temperature: the saved fit where it matches both, otherwise
    the fallback with the reason."""
    fit = read_threshold(path)
    if fit is None:
        return FALLBACK_RULE
    if fit.checkpoint_sha256 != weights_sha256:
        return MalignancyRule(FALLBACK_THRESHOLD, reason=f"{path.name} was fitted for other weights")
    if not same_temperature(fit.temperature, temperature):
        return MalignancyRule(FALLBACK_THRESHOLD,
                              reason=f"{path.name} was fitted under temperature {fit.temperature}, "
                                     f"these probabilities use {temperature}")
    return MalignancyRule(fit.threshold, fit)


def same_temperature(first: float | None, second: float | None) -> bool:
    """Whether two temperatures (None: uncalibrated) scale probabilities alike."""
    if first is None or second is None:
        return first is second
    return abs(first - second) <= TEMPERATURE_TOLERANCE
