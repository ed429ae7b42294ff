"""A `Predictor` that averages the probabilities of several models: lesionlab's recommended model is such an
ensemble (docs/results.md), so prediction and the web service must be able to run it, not only studies.

Each member pre-processes the image itself (members may differ in input size or backend) and applies its own
temperature and test-time augmentation; the ensemble takes the mean of their probabilities, image by image,
exactly as `lesionlab study` averages its members' predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from lesionlab.errors import ConfigError
from lesionlab.inference.base import ExplainUnavailableError, Predictor
from lesionlab.malignancy import FALLBACK_THRESHOLD, MalignancyRule

if TYPE_CHECKING:
    from lesionlab.data.metadata import PatientMetadata


class EnsemblePredictor(Predictor):
    """The mean of its members' probabilities; every member must rank the same classes in the same order."""

    backend = "ensemble"

    def __init__(self, members: Sequence[Predictor]) -> None:
        if len(members) < 2:
            raise ConfigError("an ensemble needs at least two models")
        first = members[0]
        for member in members[1:]:
            if member.classes != first.classes:
                raise ConfigError(f"{member.source}: classes {', '.join(member.classes)} differ from "
                                  f"{first.source}'s ({', '.join(first.classes)}); ensemble models trained "
                                  f"on the same label set.")
        self.members = tuple(members)
        super().__init__(first.card, first.source, "")
        self.views = first.views
        self.malignancy = MalignancyRule(FALLBACK_THRESHOLD, reason="no threshold is fitted for an ensemble")
        self.model_id = " + ".join(member.model_id for member in self.members)

    @property
    def calibrated(self) -> bool:
        """Calibrated when every member is (the mean of calibrated probabilities stays well calibrated)."""
        return all(member.calibrated for member in self.members)

    @property
    def calibration(self) -> str:
        """Each member's calibration, in order."""
        return "mean of " + "; ".join(f"{member.source}: {member.calibration}" for member in self.members)

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Not available: members may expect different input sizes, so only whole images can be shared."""
        raise ConfigError("an ensemble takes images, not pre-processed batches (its members may differ in "
                          "input size); use predict_image or predict_file, or pass a single model.")

    def image_probabilities(self, image: Image.Image, metadata: PatientMetadata | None = None) -> np.ndarray:
        """The mean of the members' probabilities, each with its own pre-processing and views."""
        return np.mean([member.image_probabilities(image, metadata) for member in self.members], axis=0)

    def explain_unavailable_error(self) -> ExplainUnavailableError:
        """Grad-CAM explains one network's decision, and an ensemble has no single network to explain."""
        return ExplainUnavailableError(
            f"{self.model_id}: Grad-CAM explains one network; run --explain with a single member run "
            f"directory (e.g. {self.members[0].source})."
        )
