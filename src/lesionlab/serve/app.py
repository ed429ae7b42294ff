"""The web service: a JSON API over one loaded `Predictor`, and a small page to try it in a browser.

`create_app` takes a predictor that is already loaded (the model loads once, at start-up, before the first
request) so tests can hand it any predictor and drive the app with FastAPI's TestClient. Decoding and
inference run in Starlette's threadpool: the event loop keeps accepting requests while a CPU-bound prediction
runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, HTTPException, UploadFile
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool

from lesionlab import __version__
from lesionlab.errors import LesionlabError
from lesionlab.inference.base import Predictor
from lesionlab.serve.limits import ContentLengthLimitMiddleware
from lesionlab.serve.schemas import ErrorOut, ExplanationOut, HealthOut, PredictionOut
from lesionlab.serve.uploads import UploadRejectedError, decode_upload

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1000 * 1000
MULTIPART_OVERHEAD_BYTES = 64 * 1024
UPLOAD_ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorOut} for status in (400, 413, 415, 422)
}
DESCRIPTION = (
    "Classifies a dermoscopic image into the 7 HAM10000 classes. A research tool, not a medical device: its "
    "output is not a diagnosis."
)


def create_app(predictor: Predictor, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> FastAPI:
    """Build the service around a loaded predictor; uploads above `max_upload_bytes` are refused with 413."""
    max_body_bytes = max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    limit_text = f"the upload limit is {max_upload_bytes / 1e6:g} MB; send a smaller image."
    app = FastAPI(title="lesionlab", version=__version__, description=DESCRIPTION)
    app.add_middleware(ContentLengthLimitMiddleware, max_body_bytes=max_body_bytes, limit_text=limit_text)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    async def read_image(file: UploadFile) -> Image.Image:
        """Decode an upload off the event loop; reading one byte past the limit is enough to detect excess."""
        data = await file.read(max_upload_bytes + 1)
        name = file.filename or "upload"
        try:
            return await run_in_threadpool(decode_upload, data, name, max_upload_bytes)
        except UploadRejectedError as error:
            raise HTTPException(status_code=error.status_code, detail=error.message) from None

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        """The page for people; its script and style come from /static."""
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/health")
    async def health() -> HealthOut:
        """What model is loaded and whether it can explain."""
        return HealthOut(status="ok", model_id=predictor.model_id, backend=predictor.backend,
                         arch=predictor.card.arch, classes=list(predictor.classes),
                         input_size=predictor.preprocessing.input_size, can_explain=predictor.can_explain,
                         max_upload_mb=max_upload_bytes / 1e6, calibrated=predictor.calibrated,
                         temperature=predictor.temperature, calibration=predictor.calibration)

    @app.post("/predict", max_body_size=max_body_bytes, responses=UPLOAD_ERRORS)
    async def predict(file: Annotated[UploadFile, File(description="a JPEG, PNG, BMP, TIFF or WebP image")]
                      ) -> PredictionOut:
        """Class probabilities, the top class and the malignant/benign reading for one image."""
        image = await read_image(file)
        prediction = await run_in_threadpool(predictor.predict_image, image)
        return PredictionOut.from_prediction(prediction, predictor.model_id)

    @app.post("/explain", max_body_size=max_body_bytes, responses={**UPLOAD_ERRORS, 501: {"model": ErrorOut}})
    async def explain(file: Annotated[UploadFile, File(description="a JPEG, PNG, BMP, TIFF or WebP image")]
                      ) -> ExplanationOut:
        """The prediction plus a Grad-CAM overlay for the top class (single PyTorch models only; 501
        otherwise)."""
        if not predictor.can_explain:
            raise HTTPException(status_code=501, detail=str(predictor.explain_unavailable_error()))
        image = await read_image(file)
        try:
            explanation = await run_in_threadpool(predictor.explain, image)
        except LesionlabError as error:
            raise HTTPException(status_code=501, detail=str(error)) from None
        return ExplanationOut.from_explanation(explanation, predictor.model_id)

    return app
