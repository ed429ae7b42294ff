"""The `Predictor` interface: image in, `Prediction` out, whatever runs the network underneath.

The CLI, the web service and the benchmark talk only to this interface, so a run directory (PyTorch) and an
exported model file (ONNX Runtime or OpenVINO) are interchangeable. This module imports no torch: the
exported-model paths must work on a machine without PyTorch.
"""

from __future__ import annotations

import io
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from lesionlab.data.imageio import load_rgb
from lesionlab.data.preprocess_np import preprocess_array
from lesionlab.errors import ConfigError, LesionlabError
from lesionlab.inference.prediction import Prediction
from lesionlab.malignancy import FALLBACK_RULE, MalignancyRule
from lesionlab.models.checkpoint import ModelCard
from lesionlab.views import IDENTITY, view_batch

if TYPE_CHECKING:  # the metadata encoder needs torch; ONNX and OpenVINO predictors must run without it
    from lesionlab.data.metadata import PatientMetadata


class ExplainUnavailableError(LesionlabError):
    """Grad-CAM was asked of a predictor that cannot compute gradients (an ONNX file)."""


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input; taken from the model card so training and inference agree."""

    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    grayscale: bool

    @classmethod
    def from_card(cls, card: ModelCard) -> Preprocessing:
        """Read the input size, normalisation and colour mode a model was trained with."""
        return cls(int(card.input_size), tuple(card.mean), tuple(card.std), bool(card.grayscale))

    def to_batch(self, image: Image.Image) -> np.ndarray:
        """One RGB image as a float32 `(1, 3, size, size)` batch."""
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return preprocess_array(rgb, self.input_size, self.grayscale, self.mean, self.std)


@dataclass(frozen=True)
class Explanation:
    """A prediction, its Grad-CAM heat map (input size, 0..1) and the overlay shown to people.

    The overlay is uint8 RGB at the image's own aspect ratio, not the squashed network input, so it lines up
    with the photo a person looks at.
    """

    prediction: Prediction
    heatmap: np.ndarray
    overlay: np.ndarray

    def overlay_png(self) -> bytes:
        """The overlay encoded as PNG, for files and for the web API."""
        buffer = io.BytesIO()
        Image.fromarray(self.overlay).save(buffer, format="PNG")
        return buffer.getvalue()


class Predictor(ABC):
    """Turns images into class probabilities with one loaded model; safe to call from several threads."""

    backend: str = ""
    precision: str = "fp32"
    temperature: float | None = None
    malignancy: MalignancyRule = FALLBACK_RULE

    def __init__(self, card: ModelCard, source: Path, weights_sha256: str) -> None:
        self.views: tuple[str, ...] = (IDENTITY,)
        self.card = card
        self.source = source
        self.classes: tuple[str, ...] = tuple(card.classes)
        self.preprocessing = Preprocessing.from_card(card)
        name = card.run_name or source.stem
        self.model_id = f"{name}:{self.backend}:{weights_sha256[:12]}"

    @abstractmethod
    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities `(N, classes)` for a pre-processed float32 batch `(N, 3, size, size)`."""

    def predict_many(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Probabilities for many pre-processed images, in batches so memory stays bounded."""
        starts = range(0, len(images), batch_size)
        chunks = [self.predict_batch(images[start:start + batch_size]) for start in starts]
        return np.concatenate(chunks, axis=0)

    @property
    def can_explain(self) -> bool:
        """Whether `explain` works here (it needs gradients, so PyTorch only)."""
        return False

    @property
    def calibrated(self) -> bool:
        """Whether the probabilities are scaled by a temperature fitted on validation data."""
        return self.temperature is not None

    @property
    def calibration(self) -> str:
        """How the probabilities are scaled, for people: the fitted temperature, or plain softmax."""
        if self.temperature is None:
            return "uncalibrated softmax (no temperature fitted; `lesionlab evaluate RUN` fits one on val)"
        return f"temperature {self.temperature:.3f}, fitted on the validation part"

    def image_probabilities(self, image: Image.Image, metadata: PatientMetadata | None = None) -> np.ndarray:
        """Class probabilities of one decoded image: the mean over `views` (test-time augmentation), all run
        as one batch; with the identity view alone, the plain prediction. `metadata` gives a metadata model
        the patient's fields (without it, every field is missing)."""
        batch = view_batch(self.preprocessing.to_batch(image), self.views)
        if metadata is None:
            return self.predict_batch(batch).mean(axis=0)
        encoded = self.encode_metadata(metadata, len(batch))
        return self.predict_batch_with_metadata(batch, encoded).mean(axis=0)

    def encode_metadata(self, metadata: PatientMetadata, rows: int) -> np.ndarray:
        """The patient fields encoded for this model, one row per image of a batch; a model that reads no
        metadata refuses them, so no one believes fields were used when they were not."""
        if self.card.metadata is None:
            raise ConfigError(f"{self.source}: this model reads no patient metadata; leave out --age, --sex "
                              f"and --site (or train one with --config metadata)")
        from lesionlab.data.metadata import encode

        encoded = encode(metadata, self.card.metadata["fields"]).numpy()
        return np.repeat(encoded[None], rows, axis=0)

    def predict_batch_with_metadata(self, batch: np.ndarray, metadata: np.ndarray) -> np.ndarray:
        """Probabilities of a batch with each image's encoded patient fields; backends that can read them
        override this."""
        raise ConfigError(f"{self.source}: the {self.backend} backend cannot read patient metadata yet; "
                          f"predict with the run directory (PyTorch) to use the fields")

    def predict_image(self, image: Image.Image, metadata: PatientMetadata | None = None) -> Prediction:
        """Classify one decoded image, with the patient's fields for a metadata model."""
        return Prediction.from_probabilities(self.classes, self.image_probabilities(image, metadata),
                                             self.malignancy)

    def predict_file(self, path: str | os.PathLike[str]) -> Prediction:
        """Decode an image file (raising `ImageDecodeError` naming it) and classify it."""
        return self.predict_image(load_rgb(path))

    def explain(self, image: Image.Image, prediction: Prediction | None = None) -> Explanation:
        """Grad-CAM for the top class of `prediction` (by default this predictor's own prediction); only
        predictors backed by PyTorch can do this."""
        raise self.explain_unavailable_error()

    def explain_unavailable_error(self) -> ExplainUnavailableError:
        """The error to raise (or show) when Grad-CAM is asked of this predictor but it cannot explain."""
        return ExplainUnavailableError(
            f"{self.source}: Grad-CAM needs the PyTorch model, and this is a {self.backend} predictor; "
            f"pass the run directory the model was exported from instead."
        )
