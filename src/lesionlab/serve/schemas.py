"""The JSON shapes of the web API, as pydantic models so `/docs` documents them and responses are checked."""

from __future__ import annotations

import base64

from pydantic import BaseModel, Field

from lesionlab.inference.base import Explanation
from lesionlab.inference.prediction import Prediction


class RankedClassOut(BaseModel):
    """One class in the ranked list."""

    code: str = Field(description="class code, e.g. `mel`")
    name: str = Field(description="readable class name")
    probability: float
    malignant: bool


class PredictionOut(BaseModel):
    """The model's reading of one image."""

    probabilities: dict[str, float] = Field(description="softmax probability per class code, in label order")
    top_class: str
    top_probability: float
    malignant: bool = Field(description="whether the top class is akiec, bcc or mel")
    classes: list[RankedClassOut] = Field(description="all classes, most probable first")
    model_id: str = Field(description="run name, backend and the first 12 hex digits of the weights' sha256")

    @classmethod
    def from_prediction(cls, prediction: Prediction, model_id: str) -> PredictionOut:
        """Wrap a `Prediction` for the API."""
        return cls(**prediction.to_dict(), model_id=model_id)


class ExplanationOut(PredictionOut):
    """A prediction with its Grad-CAM overlay."""

    overlay_png_base64: str = Field(description="Grad-CAM overlay for the top class, PNG, base64-encoded")

    @classmethod
    def from_explanation(cls, explanation: Explanation, model_id: str) -> ExplanationOut:
        """Wrap an `Explanation` for the API, its overlay as base64 PNG."""
        overlay = base64.b64encode(explanation.overlay_png()).decode("ascii")
        return cls(**explanation.prediction.to_dict(), model_id=model_id, overlay_png_base64=overlay)


class HealthOut(BaseModel):
    """What the service has loaded."""

    status: str
    model_id: str
    backend: str
    arch: str
    classes: list[str]
    input_size: int
    can_explain: bool
    max_upload_mb: float
    calibrated: bool = Field(description="whether the probabilities are scaled by temperatures fitted on "
                                         "validation data (for an ensemble: every member's)")
    temperature: float | None = Field(description="the temperature of a single model, applied to every "
                                                  "probability; null for uncalibrated models and ensembles")
    calibration: str = Field(description="how the probabilities are scaled, in words")


class ErrorOut(BaseModel):
    """Every 4xx/5xx answer of the upload routes."""

    detail: str
