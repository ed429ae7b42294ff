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
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from PIL import Image

from lesionlab.data.imageio import load_rgb
from lesionlab.data.preprocess_np import preprocess_array
from lesionlab.errors import ConfigError, LesionlabError
from lesionlab.inference.prediction import Prediction
from lesionlab.malignancy import FALLBACK_RULE, MalignancyRule
from lesionlab.models.checkpoint import ModelCard
from lesionlab.scoring import Scoring
from lesionlab.views import IDENTITY, view_batch

if TYPE_CHECKING:  # the metadata encoder needs torch; ONNX and OpenVINO predictors must run without it
    from lesionlab.data.metadata import PatientMetadata
    from lesionlab.inference.onnx_metadata import GraphScoring

_Fields = TypeVar("_Fields", np.ndarray, "PatientMetadata")


class ExplainUnavailableError(LesionlabError):
    """Grad-CAM was asked of a predictor that cannot compute gradients (an ONNX file)."""


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the pixels every engine takes: lesionlab's one resize to the model's input size.
    The grayscale mode and the normalisation are the model's own, inside the exported graph and the PyTorch
    predictor (`models.pixel_input`), so this side is the same for every backend."""

    input_size: int

    @classmethod
    def from_card(cls, card: ModelCard) -> Preprocessing:
        """Read the input size a model was trained with."""
        return cls(int(card.input_size))

    def to_batch(self, image: Image.Image) -> np.ndarray:
        """One RGB image as float32 pixels 0..255, `(1, 3, size, size)`."""
        return preprocess_array(np.asarray(image.convert("RGB"), dtype=np.uint8), self.input_size)


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
    graph_scoring: GraphScoring | None = None
    """What a graph exported from a `model.json` scores inside itself (members, views, offsets); None
    elsewhere."""

    def __init__(self, card: ModelCard, source: Path, weights_sha256: str) -> None:
        self.views: tuple[str, ...] = (IDENTITY,)
        self.card = card
        self.source = source
        self.classes: tuple[str, ...] = tuple(card.classes)
        self.preprocessing = Preprocessing.from_card(card)
        name = card.run_name or source.stem
        self.model_id = f"{name}:{self.backend}:{weights_sha256[:12]}"

    @abstractmethod
    def batch_logits(self, batch: np.ndarray, metadata: np.ndarray | None = None) -> np.ndarray:
        """The network's logits `(N, classes)` for a batch of resized RGB pixels 0..255 `(N, 3, size, size)`
        (float32 or uint8; `Preprocessing.to_batch`), on the scale `temperature` divides (`metadata`: each
        image's encoded patient fields, for a metadata model). Backends produce logits only;
        `lesionlab.scoring` makes every probability from them."""

    @property
    def members(self) -> tuple[Predictor, ...]:
        """The single models whose view logits this predictor scores: itself."""
        return (self,)

    @property
    def scoring(self) -> Scoring:
        """How the members' view logits become probabilities: here this model's own temperature."""
        return Scoring((self.temperature,))

    def predict_batch(self, batch: np.ndarray, metadata: np.ndarray | None = None) -> np.ndarray:
        """Probabilities `(N, classes)` of a batch of resized pixels under this model's scoring: each
        member's views of the batch, as `image_probabilities` scores one image (what export checks and
        benchmarks compare); `metadata`: a metadata model's encoded fields per image."""
        self.check_metadata_given(metadata)
        logits = [member.batch_view_logits(batch, member.fields_it_reads(metadata))
                  for member in self.members]
        return self.scoring.probabilities(logits)

    def predict_many(self, images: np.ndarray, batch_size: int = 32,
                     metadata: np.ndarray | None = None) -> np.ndarray:
        """Probabilities for many pre-processed images (with their encoded fields, if given), in batches so
        memory stays bounded."""
        starts = range(0, len(images), batch_size)
        chunks = [self.predict_batch(images[start:start + batch_size],
                                     None if metadata is None else metadata[start:start + batch_size])
                  for start in starts]
        return np.concatenate(chunks, axis=0)

    @property
    def can_explain(self) -> bool:
        """Whether `explain` works here (it needs gradients, so PyTorch only)."""
        return False

    @property
    def calibrated(self) -> bool:
        """Whether the probabilities are scaled by a temperature fitted on validation data."""
        if self.graph_scoring is not None:
            return self.graph_scoring.calibrated
        return self.temperature is not None

    @property
    def calibration(self) -> str:
        """How the probabilities are scaled, for people: the fitted temperature, or plain softmax."""
        if self.graph_scoring is not None:
            return self.graph_scoring.description()
        if self.temperature is None:
            return "uncalibrated softmax (no temperature fitted; `lesionlab evaluate RUN` fits one on val)"
        return f"temperature {self.temperature:.3f}, fitted on the validation part"

    def batch_view_logits(self, batch: np.ndarray, metadata: np.ndarray | None = None) -> np.ndarray:
        """This model's logits `(N, views, classes)` of a batch of resized pixels under each of `views`, all
        run as one batch (`metadata`: each image's encoded fields)."""
        viewed = view_batch(batch, self.views)
        encoded = None if metadata is None else np.tile(metadata, (len(self.views), 1))
        logits = self.batch_logits(viewed, encoded)
        return logits.reshape(len(self.views), len(batch), -1).transpose(1, 0, 2)

    def view_logits(self, image: Image.Image, metadata: PatientMetadata | None = None) -> np.ndarray:
        """This model's logits `(1, views, classes)` of one decoded image under each of `views`; `metadata`
        gives a metadata model the patient's fields (without it, every field is missing)."""
        encoded = None if metadata is None else self.encode_metadata(metadata, 1)
        return self.batch_view_logits(self.preprocessing.to_batch(image), encoded)

    def image_probabilities(self, image: Image.Image, metadata: PatientMetadata | None = None) -> np.ndarray:
        """Class probabilities of one decoded image: the members' view logits through `scoring` (test-time
        augmentation, temperatures, ensemble mean and class offsets, all in `lesionlab.scoring`)."""
        self.check_metadata_given(metadata)
        logits = [member.view_logits(image, member.fields_it_reads(metadata)) for member in self.members]
        return self.scoring.probabilities(logits)[0]

    @property
    def reads_metadata(self) -> bool:
        """Whether this single model's network takes patient fields (its card has a metadata branch)."""
        return self.card.metadata is not None

    @property
    def metadata_reader(self) -> Predictor | None:
        """The member whose patient fields this model reads and encodes (in an ensemble every member that
        reads metadata reads the same fields, which `ScoredPredictor` checks); None for image-only models."""
        return next((member for member in self.members if member.reads_metadata), None)

    def check_metadata_given(self, metadata: object | None) -> None:
        """Refuse patient fields (`metadata` given) for a model none of whose members reads any, so no one
        believes fields were used when they were not."""
        if metadata is not None and self.metadata_reader is None:
            raise self._no_metadata_error()

    def _no_metadata_error(self) -> ConfigError:
        return ConfigError(f"{self.source}: this model reads no patient metadata; leave out --age, --sex and "
                           f"--site (or train one with --config metadata)")

    def fields_it_reads(self, metadata: _Fields | None) -> _Fields | None:
        """What this member of a model is given of the patient fields: all of them where it reads metadata,
        none where it reads the image only (an image-only member of an ensemble with a metadata model)."""
        return metadata if self.reads_metadata else None

    def encode_metadata(self, metadata: PatientMetadata | None, rows: int) -> np.ndarray:
        """The patient fields encoded for this model (the fields of `metadata_reader`; None: all missing),
        one row per image of a batch; a model that reads no metadata refuses them."""
        reader = self.metadata_reader
        if reader is None:
            raise self._no_metadata_error()
        from lesionlab.data.metadata import encoded_values

        encoded = np.asarray(encoded_values(metadata, reader.card.metadata["fields"]), dtype=np.float32)
        return np.repeat(encoded[None], rows, axis=0)

    def metadata_rows(self, metadata: np.ndarray | None, rows: int) -> np.ndarray:
        """A batch's encoded fields for a graph that takes them as an input: as given, else every field
        missing (what the PyTorch model fills in itself)."""
        if metadata is not None:
            return np.ascontiguousarray(metadata, dtype=np.float32)
        from lesionlab.data.metadata import PatientMetadata

        return self.encode_metadata(PatientMetadata(), rows)

    @property
    def metadata_fields(self) -> tuple[str, ...]:
        """The patient fields this model's members read, in `FIELDS` order; empty for image-only models (what
        `serve` states and the model card reports)."""
        from lesionlab.data.metadata import FIELDS

        read = {name for member in self.members if member.reads_metadata
                for name in member.card.metadata["fields"]}
        return tuple(name for name in FIELDS if name in read)

    def metadata_unavailable_error(self) -> ConfigError:
        """The error of an exported file without a metadata input (exported before graphs took the fields)
        when fields are passed to it."""
        return ConfigError(f"{self.source}: this exported file has no input for patient metadata; export the "
                           f"run again (`lesionlab export RUN`) or predict with the run directory")

    def predict_image(self, image: Image.Image, metadata: PatientMetadata | None = None) -> Prediction:
        """Classify one decoded image, with the patient's fields for a metadata model."""
        return Prediction.from_probabilities(self.classes, self.image_probabilities(image, metadata),
                                             self.malignancy)

    def predict_file(self, path: str | os.PathLike[str]) -> Prediction:
        """Decode an image file (raising `ImageDecodeError` naming it) and classify it."""
        return self.predict_image(load_rgb(path))

    def explain(self, image: Image.Image, prediction: Prediction | None = None,
                metadata: PatientMetadata | None = None) -> Explanation:
        """Grad-CAM for the top class of `prediction` (by default this predictor's own prediction, with the
        patient's `metadata` for a metadata model); only predictors backed by PyTorch can do this."""
        raise self.explain_unavailable_error()

    def explain_unavailable_error(self) -> ExplainUnavailableError:
        """The error to raise (or show) when Grad-CAM is asked of this predictor but it cannot explain."""
        return ExplainUnavailableError(
            f"{self.source}: Grad-CAM needs the PyTorch model, and this is a {self.backend} predictor; "
            f"pass the run directory the model was exported from instead."
        )
