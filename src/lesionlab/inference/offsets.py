"""A `Predictor` that applies class offsets for balanced decisions over another predictor (one model or an
ensemble), so the model a study recommends with offsets is the model `predict` and `serve` run.

The offsets act on the final probabilities, after test-time augmentation and ensemble averaging, exactly as
`lesionlab study` applied them when it scored them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from lesionlab.class_offsets import apply_class_offsets, class_offsets_file, load_class_offsets
from lesionlab.inference.base import ExplainUnavailableError, Explanation, Predictor
from lesionlab.inference.ensemble import EnsemblePredictor
from lesionlab.inference.prediction import Prediction
from lesionlab.io_utils import file_sha256
from lesionlab.malignancy import FALLBACK_THRESHOLD, MalignancyRule

if TYPE_CHECKING:
    from lesionlab.data.metadata import PatientMetadata


class OffsetPredictor(Predictor):
    """`inner`'s probabilities shifted by the offsets in a `class-offsets.json` file."""

    def __init__(self, inner: Predictor, offsets_path: str | os.PathLike[str]) -> None:
        self.offsets_file = class_offsets_file(offsets_path)
        self.offsets = load_class_offsets(self.offsets_file)
        self.offsets.check_classes(inner.classes, str(self.offsets_file))
        members = inner.members if isinstance(inner, EnsemblePredictor) else (inner,)
        self.offsets.check_members([member.card.run_name for member in members], str(self.offsets_file))
        self.inner = inner
        self.backend = inner.backend
        super().__init__(inner.card, inner.source, "")
        self.views = inner.views
        self.temperature = inner.temperature
        self.malignancy = MalignancyRule(FALLBACK_THRESHOLD, reason="class offsets shift the probabilities "
                                                                   "any threshold was fitted on")
        self.model_id = f"{inner.model_id} + class offsets {file_sha256(self.offsets_file)[:12]}"

    @property
    def calibrated(self) -> bool:
        """Offsets move probability towards the rarer classes on purpose, so they no longer match
        observed frequencies."""
        return False

    @property
    def calibration(self) -> str:
        """The inner model's scaling, then the offsets."""
        return (f"{self.inner.calibration}; then class offsets for balanced decisions ({self.offsets_file}, "
                f"fitted on {self.offsets.fitted_on}): read the probabilities as scores, they lean towards "
                f"the rarer classes")

    @property
    def can_explain(self) -> bool:
        """As the inner predictor: Grad-CAM needs one PyTorch network."""
        return self.inner.can_explain

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """The inner probabilities of a pre-processed batch, shifted."""
        return apply_class_offsets(self.inner.predict_batch(batch), self.offsets.as_array())

    def image_probabilities(self, image: Image.Image, metadata: PatientMetadata | None = None) -> np.ndarray:
        """The inner probabilities of one image (after its views and members are averaged), shifted."""
        return apply_class_offsets(self.inner.image_probabilities(image, metadata), self.offsets.as_array())

    def explain(self, image: Image.Image, prediction: Prediction | None = None) -> Explanation:
        """Grad-CAM of the inner network for the class these offsets decide."""
        return self.inner.explain(image, prediction or self.predict_image(image))

    def explain_unavailable_error(self) -> ExplainUnavailableError:
        """As the inner predictor's."""
        return self.inner.explain_unavailable_error()
