"""The JSON shapes of the web API, as pydantic models so `/docs` documents them and responses are checked."""

from __future__ import annotations

import base64

from pydantic import BaseModel, Field

from lesionlab.inference.base import Explanation
from lesionlab.inference.prediction import Prediction
from lesionlab.serve.limits import WorkLimits


class RankedClassOut(BaseModel):
    """One class in the ranked list."""

    code: str = Field(description="class code, e.g. `mel`")
    name: str = Field(description="readable class name")
    probability: float
    malignant: bool


class MetadataOut(BaseModel):
    """Which patient fields a prediction used: the answer always says, so nobody believes fields counted
    when the model never read them."""

    reads: list[str] = Field(description="the fields the model reads (age, sex, site); empty for an "
                                         "image-only model")
    used: dict[str, float | str] = Field(description="the fields given and read, sites in the shared "
                                                     "vocabulary (e.g. back -> posterior torso)")
    missing: list[str] = Field(description="fields the model reads that were not given: encoded as "
                                           "missing, which the model was trained for")
    ignored: list[str] = Field(description="fields given that this model does not read")
    note: str = Field(description="the above in words")


class PredictionOut(BaseModel):
    """The model's reading of one image."""

    probabilities: dict[str, float] = Field(description="softmax probability per class code, in label order")
    top_class: str
    top_probability: float
    malignant_probability: float = Field(description="summed probability of akiec, bcc and mel")
    malignant: bool = Field(description="whether malignant_probability reaches malignant_threshold")
    malignant_threshold: float = Field(description="the threshold on malignant_probability")
    malignant_threshold_fitted: bool = Field(description="whether the threshold was chosen on validation "
                                                         "data for a stated sensitivity (else a fallback)")
    malignant_rule: str = Field(description="the malignant/benign rule in words, with its origin")
    classes: list[RankedClassOut] = Field(description="all classes, most probable first")
    model_id: str = Field(description="run name, backend and the first 12 hex digits of the weights' sha256")
    metadata: MetadataOut = Field(description="which patient fields were used")

    @classmethod
    def from_prediction(cls, prediction: Prediction, model_id: str, metadata: MetadataOut) -> PredictionOut:
        """Wrap a `Prediction` for the API, with the fields it used."""
        return cls(**prediction.to_dict(), model_id=model_id, metadata=metadata)


class ExplanationOut(PredictionOut):
    """A prediction with its Grad-CAM overlay."""

    overlay_png_base64: str = Field(description="Grad-CAM overlay for the top class, PNG, base64-encoded, "
                                                "with a colour bar and a title naming the class explained")
    explained_class: str = Field(description="the class the Grad-CAM map explains (the top class)")
    explained_probability: float = Field(description="that class's probability")

    @classmethod
    def from_explanation(cls, explanation: Explanation, model_id: str,
                         metadata: MetadataOut) -> ExplanationOut:
        """Wrap an `Explanation` for the API, its overlay as base64 PNG."""
        overlay = base64.b64encode(explanation.overlay_png()).decode("ascii")
        prediction = explanation.prediction
        return cls(**prediction.to_dict(), model_id=model_id, metadata=metadata, overlay_png_base64=overlay,
                   explained_class=prediction.top_class, explained_probability=prediction.top_probability)


class LimitsOut(BaseModel):
    """The bounds the service works under, so a client can pace its uploads and read a 503 or 413 aright."""

    max_concurrent: int | None = Field(description="ordinary uploads decoded and classified at once; "
                                                   "null: no bound")
    max_queue: int | None = Field(description="ordinary uploads waiting for a worker; beyond them the answer "
                                              "is 503 with Retry-After; null: no bound")
    heavy_megapixels: float = Field(description="uploads with more megapixels than this (width x height, "
                                                "read from the header) run in the heavy lane, apart from "
                                                "ordinary ones")
    heavy_concurrent: int | None = Field(description="heavy uploads decoded and classified at once; null: no "
                                                     "bound")
    heavy_queue: int | None = Field(description="heavy uploads waiting for a worker; beyond them the answer "
                                                "is 503 with Retry-After; null: no bound")
    max_receiving_mb: float | None = Field(description="MB of upload bodies received at once, each counted "
                                                       "by its Content-Length; beyond it the answer is 503 "
                                                       "before the body is read; null: no bound")
    request_timeout_s: float | None = Field(description="seconds a request may take, waiting included, "
                                                        "before it is answered 503; null: no timeout")
    max_upload_mb: float = Field(description="the largest upload in MB; 413 beyond it")
    decode_min_size: int | None = Field(description="larger images decode reduced, both sides kept at least "
                                                    "this many pixels; null: decoded at full size")

    @classmethod
    def from_limits(cls, limits: WorkLimits, max_upload_bytes: int) -> LimitsOut:
        """The limits as `serve.limits` applies them (0 there means no bound)."""
        return cls(max_concurrent=limits.workers or None, max_queue=limits.queue if limits.workers else None,
                   heavy_megapixels=limits.heavy_pixels / 1e6, heavy_concurrent=limits.heavy_workers or None,
                   heavy_queue=limits.heavy_queue if limits.heavy_workers else None,
                   max_receiving_mb=limits.receiving_bytes / 1e6 or None,
                   request_timeout_s=limits.timeout_s or None, max_upload_mb=max_upload_bytes / 1e6,
                   decode_min_size=limits.decode_min_size)


class HealthOut(BaseModel):
    """What the service has loaded, and the limits it serves under."""

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
    malignant_threshold: float = Field(description="the threshold on the summed malignant probability")
    malignant_threshold_fitted: bool = Field(description="whether it was fitted on validation data")
    malignant_rule: str = Field(description="the malignant/benign rule in words, or why it falls back")
    limits: LimitsOut = Field(description="each lane's concurrency and queue, the bodies received at "
                                          "once, timeout, upload size and reduced decoding")
    metadata_fields: list[str] = Field(description="the patient fields the model reads (age, sex, site), "
                                                   "each optional on /predict and /explain; empty: the "
                                                   "model reads the image only and ignores any fields")
    metadata_sites: list[str] = Field(description="the shared site vocabulary the answers use; HAM10000 and "
                                                  "ISIC names (back, face, posterior torso, ...) are "
                                                  "accepted too")


class ErrorOut(BaseModel):
    """Every 4xx/5xx answer of the upload routes."""

    detail: str
