"""The web service: a JSON API over one loaded `Predictor`, and a small page to try it in a browser.

`create_app` takes a predictor that is already loaded (the model loads once, at start-up, before the first
request) so tests can hand it any predictor and drive the app with FastAPI's TestClient. An upload is read
and its header inspected first (size, type, pixel count); its decoding and inference then run as one job in
one of the two lanes of `serve.limits`, picked by the pixel count: ordinary uploads in the ordinary lane (a
thread per core by default), huge images in the heavy lane of their own. Each lane has a bounded queue, 503
with Retry-After beyond it, and a per-request timeout: the event loop keeps accepting requests while
CPU-bound predictions run, a burst of uploads queues or is refused instead of decoding all at once, and a
burst of huge images cannot take the places of ordinary uploads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import Depends, FastAPI, File, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from starlette.concurrency import run_in_threadpool

from lesionlab import __version__
from lesionlab.data.metadata import SITES, PatientMetadata
from lesionlab.errors import ConfigError, LesionlabError
from lesionlab.inference.base import Predictor
from lesionlab.serve.limits import (
    DEFAULT_MAX_UPLOAD_BYTES,
    ContentLengthLimitMiddleware,
    Lanes,
    Reception,
    ReceptionLimitMiddleware,
    ServerBusyError,
    WorkLimits,
    leave_reception,
)
from lesionlab.serve.patient import INVALID_FIELD_STATUS, patient_fields, read_fields
from lesionlab.serve.schemas import ErrorOut, ExplanationOut, HealthOut, LimitsOut, PredictionOut
from lesionlab.serve.uploads import UploadRejectedError, decode_upload, inspect_upload

STATIC_DIR = Path(__file__).parent / "static"
FAVICON_ROUTE = "/favicon.ico"
MULTIPART_OVERHEAD_BYTES = 64 * 1024
UPLOAD_ROUTES = frozenset({"/predict", "/explain"})
UPLOAD_ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorOut} for status in (400, 413, 415, 422, 503)
}
T = TypeVar("T")
DESCRIPTION = (
    "Classifies a dermoscopic image into the 7 HAM10000 classes. A research tool, not a medical device: its "
    "output is not a diagnosis."
)


def create_app(predictor: Predictor, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               limits: WorkLimits | None = None) -> FastAPI:
    """Build the service around a loaded predictor; uploads above `max_upload_bytes` are refused with 413.

    `limits` bound the bodies being received and the decoding and inference in flight in each lane
    (default: `WorkLimits.defaults` for the model's input size and this upload limit); requests beyond them
    get 503 with a Retry-After header.
    """
    max_body_bytes = max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    limit_text = f"the upload limit is {max_upload_bytes / 1e6:g} MB; send a smaller image."
    limits = limits or WorkLimits.defaults(predictor.preprocessing.input_size, max_upload_bytes)
    lanes = Lanes(limits)
    reception = Reception(limits.receiving_bytes)
    app = FastAPIOffline(title="lesionlab", version=__version__, description=DESCRIPTION,
                         favicon_url=FAVICON_ROUTE)  # /docs from packaged assets: it works offline
    app.state.lanes = lanes
    app.state.reception = reception
    # The last added runs first: an oversized body is refused 413 before it takes a share of the reception.
    app.add_middleware(ReceptionLimitMiddleware, reception=reception, paths=UPLOAD_ROUTES,
                       max_body_bytes=max_body_bytes)
    app.add_middleware(ContentLengthLimitMiddleware, max_body_bytes=max_body_bytes, limit_text=limit_text)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(ServerBusyError)
    async def busy(_: Request, error: ServerBusyError) -> JSONResponse:
        return error.response()

    async def on_upload(request: Request, file: UploadFile, work: Callable[[Image.Image], T]) -> T:
        """Read the upload and inspect its header, then decode and process it as one job in the lane its
        pixel count picks; reading one byte past the limit is enough to detect excess.

        The header is inspected on a thread, as Pillow may read a fair part of a 10 MB body to find it.
        """
        name = file.filename or "upload"
        try:
            try:
                data = await file.read(max_upload_bytes + 1)
                header = await run_in_threadpool(inspect_upload, data, name, max_upload_bytes)
            finally:
                leave_reception(request.scope)
            lane = lanes.for_pixels(header.pixels)
            return await lane.run(lambda: work(decode_upload(data, name, header, limits.decode_min_size)))
        except UploadRejectedError as error:
            raise HTTPException(status_code=error.status_code, detail=error.message) from None

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        """The page for people; its script and style come from /static."""
        return FileResponse(STATIC_DIR / "index.html")

    @app.get(FAVICON_ROUTE, include_in_schema=False)
    async def favicon() -> FileResponse:
        """The tab icon, for the page and /docs alike."""
        return FileResponse(STATIC_DIR / "favicon.ico", media_type="image/x-icon")

    @app.get("/health")
    async def health() -> HealthOut:
        """What model is loaded, whether it can explain, and the limits the service works under."""
        return HealthOut(status="ok", model_id=predictor.model_id, backend=predictor.backend,
                         arch=predictor.card.arch, classes=list(predictor.classes),
                         input_size=predictor.preprocessing.input_size, can_explain=predictor.can_explain,
                         max_upload_mb=max_upload_bytes / 1e6, calibrated=predictor.calibrated,
                         temperature=predictor.temperature, calibration=predictor.calibration,
                         malignant_threshold=predictor.malignancy.threshold,
                         malignant_threshold_fitted=predictor.malignancy.fitted,
                         malignant_rule=predictor.malignancy.description,
                         limits=LimitsOut.from_limits(limits, max_upload_bytes),
                         metadata_fields=list(predictor.metadata_fields), metadata_sites=list(SITES))

    @app.post("/predict", max_body_size=max_body_bytes, responses=UPLOAD_ERRORS)
    async def predict(request: Request,
                      file: Annotated[UploadFile, File(description="a JPEG, PNG, BMP, TIFF or WebP image")],
                      patient: Annotated[PatientMetadata, Depends(patient_fields)]) -> PredictionOut:
        """Class probabilities, the top class and the malignant/benign reading for one image, with the
        patient's age, sex and site where the model reads them (`metadata` in the answer says which)."""
        fields, reading = read_fields(patient, predictor.metadata_fields)
        try:
            prediction = await on_upload(request, file, lambda image: predictor.predict_image(image, fields))
        except ConfigError as error:  # fields an ensemble's image-only member cannot take
            raise HTTPException(status_code=INVALID_FIELD_STATUS, detail=str(error)) from None
        return PredictionOut.from_prediction(prediction, predictor.model_id, reading)

    @app.post("/explain", max_body_size=max_body_bytes, responses={**UPLOAD_ERRORS, 501: {"model": ErrorOut}})
    async def explain(request: Request,
                      file: Annotated[UploadFile, File(description="a JPEG, PNG, BMP, TIFF or WebP image")],
                      patient: Annotated[PatientMetadata, Depends(patient_fields)]) -> ExplanationOut:
        """The prediction (with the patient's fields, as /predict) plus a Grad-CAM overlay for the top class
        (single PyTorch models only; 501 otherwise)."""
        if not predictor.can_explain:
            raise HTTPException(status_code=501, detail=str(predictor.explain_unavailable_error()))
        fields, reading = read_fields(patient, predictor.metadata_fields)
        try:
            explanation = await on_upload(request, file,
                                          lambda image: predictor.explain(image, metadata=fields))
        except LesionlabError as error:
            raise HTTPException(status_code=501, detail=str(error)) from None
        return ExplanationOut.from_explanation(explanation, predictor.model_id, reading)

    return app
