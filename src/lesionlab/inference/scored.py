"""A `Predictor` over several members and/or class offsets: the ensembles and decision rules a study
recommends, deployed as `predict`/`serve` run them.

Each member pre-processes the image itself (members may differ in input size or backend) and returns its
view logits; `lesionlab.scoring.Scoring` turns them into the model's probabilities (each member's
temperature, the mean over views and over members, then the class offsets), the function that scored the
same ensemble in `lesionlab evaluate --ensemble` and `lesionlab study`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from lesionlab.class_offsets import ClassOffsets, class_offsets_file, load_class_offsets
from lesionlab.data.metadata import PatientMetadata
from lesionlab.errors import ConfigError
from lesionlab.inference.base import ExplainUnavailableError, Explanation, Predictor
from lesionlab.inference.prediction import Prediction
from lesionlab.io_utils import file_sha256
from lesionlab.malignancy import FALLBACK_THRESHOLD, MalignancyRule
from lesionlab.scoring import Scoring

ENSEMBLE = "ensemble"


class ScoredPredictor(Predictor):
    """Members (single models sharing one class order and one set of views) scored together, with the
    offsets of a `class-offsets.json` when given; it explains only where it has one PyTorch member."""

    def __init__(self, members: Sequence[Predictor],
                 offsets_path: str | os.PathLike[str] | None = None) -> None:
        first = members[0]
        for member in members[1:]:
            if member.classes != first.classes:
                raise ConfigError(f"{member.source}: classes {', '.join(member.classes)} differ from "
                                  f"{first.source}'s ({', '.join(first.classes)}); ensemble models trained "
                                  f"on the same label set.")
        readers = [(member.source, list(member.card.metadata["fields"])) for member in members
                   if member.reads_metadata]
        for source, fields in readers[1:]:
            if fields != readers[0][1]:
                raise ConfigError(f"{source}: reads the patient fields {', '.join(fields)}, and "
                                  f"{readers[0][0]} reads {', '.join(readers[0][1])}; the metadata members "
                                  f"of one ensemble read the same fields, so one set of fields scores all.")
        self._members = tuple(members)
        self.offsets_file = None if offsets_path is None else class_offsets_file(offsets_path)
        self.offsets: ClassOffsets | None = None
        if self.offsets_file is not None:
            self.offsets = load_class_offsets(self.offsets_file)
            self.offsets.check_classes(first.classes, str(self.offsets_file))
            self.offsets.check_members([member.card.run_name for member in members], str(self.offsets_file))
        self.backend = ENSEMBLE if len(members) > 1 else first.backend
        super().__init__(first.card, first.source, "")
        self.views = first.views
        self.precision = first.precision
        self.temperature = first.temperature if len(members) == 1 else None
        self.malignancy = MalignancyRule(FALLBACK_THRESHOLD, reason=(
            "no threshold is fitted for this ensemble or these class offsets; a model file records one "
            "(`lesionlab evaluate MODEL.json` or a study)"))
        ids = " + ".join(member.model_id for member in members)
        self.model_id = (ids if self.offsets_file is None else
                         f"{ids} + class offsets {file_sha256(self.offsets_file)[:12]}")

    @property
    def members(self) -> tuple[Predictor, ...]:
        """The single models whose view logits this predictor scores."""
        return self._members

    @property
    def scoring(self) -> Scoring:
        """Each member's temperature, then the class offsets."""
        return Scoring(tuple(member.temperature for member in self.members),
                       None if self.offsets is None else self.offsets.offsets)

    def batch_logits(self, batch: np.ndarray, metadata: np.ndarray | None = None) -> np.ndarray:
        """The single member's logits; an ensemble has no logits of its own (its members are scored by
        `predict_batch` and `image_probabilities`)."""
        if len(self.members) == 1:
            return self.members[0].batch_logits(batch, metadata)
        raise ConfigError("an ensemble has no logits of its own; score it with predict_batch, predict_image "
                          "or predict_file.")

    def predict_batch(self, batch: np.ndarray, metadata: np.ndarray | None = None) -> np.ndarray:
        """The members' scoring of one batch of resized pixels, where they share an input size (otherwise
        only whole images can be shared)."""
        sizes = {member.preprocessing.input_size for member in self.members}
        if len(sizes) > 1:
            raise ConfigError(f"the members take different input sizes ({', '.join(map(str, sorted(sizes)))}"
                              f"), so one batch of pixels fits only some; use predict_image or predict_file.")
        return super().predict_batch(batch, metadata)

    @property
    def calibrated(self) -> bool:
        """Calibrated when every member is and no offsets apply: the mean of calibrated probabilities stays
        calibrated, while offsets move probability towards the rarer classes on purpose."""
        return self.offsets is None and all(member.calibrated for member in self.members)

    @property
    def calibration(self) -> str:
        """Each member's calibration, then the offsets, in words."""
        text = (self.members[0].calibration if len(self.members) == 1 else
                "mean of " + "; ".join(f"{member.source}: {member.calibration}" for member in self.members))
        if self.offsets is None:
            return text
        return (f"{text}; then class offsets for balanced decisions ({self.offsets_file}, fitted on "
                f"{self.offsets.fitted_on}): read the probabilities as scores, they lean towards the rarer "
                f"classes")

    @property
    def can_explain(self) -> bool:
        """Grad-CAM explains one network: only a single PyTorch member can."""
        return len(self.members) == 1 and self.members[0].can_explain

    def explain(self, image: Image.Image, prediction: Prediction | None = None,
                metadata: PatientMetadata | None = None) -> Explanation:
        """Grad-CAM of the single member for the class this predictor decides (with the patient's fields)."""
        if not self.can_explain:
            raise self.explain_unavailable_error()
        return self.members[0].explain(image, prediction or self.predict_image(image, metadata), metadata)

    def explain_unavailable_error(self) -> ExplainUnavailableError:
        """An ensemble has no single network to explain; a single member says why it cannot."""
        if len(self.members) == 1:
            return self.members[0].explain_unavailable_error()
        return ExplainUnavailableError(
            f"{self.model_id}: Grad-CAM explains one network; run --explain with a single member run "
            f"directory (e.g. {self.members[0].source})."
        )
