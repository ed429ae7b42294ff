"""The web API on real images: predictions, Grad-CAM, the page, and 4xx JSON for every kind of bad upload."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lesionlab.classes import CLASS_CODES
from lesionlab.explain import LEGEND_WIDTH, TITLE_HEIGHT
from lesionlab.inference import load_predictor
from lesionlab.serve.app import STATIC_DIR, create_app
from lesionlab.serve.limits import WorkLimits

pytestmark = pytest.mark.integration

UPLOAD_LIMIT = 300_000


@pytest.fixture(scope="module")
def torch_client(tiny_run_dir: Path) -> TestClient:
    """The service over the tiny run's PyTorch model, with a 300 kB upload limit (a BMP fits)."""
    return TestClient(create_app(load_predictor(tiny_run_dir), max_upload_bytes=UPLOAD_LIMIT))


@pytest.fixture(scope="module")
def onnx_client(tiny_onnx_file: Path) -> TestClient:
    """The service over the tiny run's exported ONNX model."""
    return TestClient(create_app(load_predictor(tiny_onnx_file), max_upload_bytes=UPLOAD_LIMIT))


def test_health_reports_the_service_limits(torch_client: TestClient, tiny_run_dir: Path) -> None:
    predictor = load_predictor(tiny_run_dir)
    defaults = WorkLimits.defaults(predictor.preprocessing.input_size, UPLOAD_LIMIT)
    assert torch_client.get("/health").json()["limits"] == {
        "max_concurrent": defaults.workers, "max_queue": defaults.queue, "heavy_megapixels": 4.0,
        "heavy_concurrent": 1, "heavy_queue": 4, "max_receiving_mb": defaults.receiving_bytes / 1e6,
        "request_timeout_s": 30.0, "max_upload_mb": UPLOAD_LIMIT / 1e6,
        "decode_min_size": defaults.decode_min_size}
    assert defaults.receiving_bytes == 8 * UPLOAD_LIMIT, "eight bodies at the upload limit"
    unbounded = TestClient(create_app(predictor, limits=WorkLimits(0, 0, 0.0, None, heavy_workers=0,
                                                                   receiving_bytes=0)))
    assert unbounded.get("/health").json()["limits"] == {
        "max_concurrent": None, "max_queue": None, "heavy_megapixels": 4.0, "heavy_concurrent": None,
        "heavy_queue": None, "max_receiving_mb": None, "request_timeout_s": None, "max_upload_mb": 10.0,
        "decode_min_size": None}


@pytest.fixture(scope="module")
def real_image(shared_data_dir: Path) -> Path:
    """One real HAM10000 JPEG."""
    return sorted((shared_data_dir / "images").glob("ISIC_*.jpg"))[0]


def encoded(image_path: Path, image_format: str) -> bytes:
    """The image re-encoded in another format."""
    buffer = io.BytesIO()
    Image.open(image_path).convert("RGB").save(buffer, format=image_format)
    return buffer.getvalue()


def upload(client: TestClient, route: str, data: bytes, name: str = "lesion.jpg",
           content_type: str = "image/jpeg", field: str = "file") -> tuple[int, dict[str, object]]:
    """POST one file as multipart form data; return the status and the JSON body."""
    response = client.post(route, files={field: (name, data, content_type)})
    assert response.headers["content-type"].startswith("application/json"), response.text
    return response.status_code, response.json()


def test_health_says_what_is_loaded(torch_client: TestClient, onnx_client: TestClient) -> None:
    torch_health = torch_client.get("/health").json()
    onnx_health = onnx_client.get("/health").json()
    assert torch_health["status"] == "ok" and torch_health["classes"] == list(CLASS_CODES)
    assert (torch_health["backend"], torch_health["can_explain"]) == ("pytorch", True)
    assert (onnx_health["backend"], onnx_health["can_explain"]) == ("onnx", False)
    assert torch_health["model_id"].startswith("tiny-run:pytorch:")
    assert torch_health["max_upload_mb"] == pytest.approx(0.3)
    assert torch_health["temperature"] is None and not torch_health["calibrated"]
    assert "uncalibrated" in torch_health["calibration"]
    assert torch_health["malignant_threshold"] == 0.5 and torch_health["malignant_threshold_fitted"] is False
    assert "fallback" in torch_health["malignant_rule"]


@pytest.mark.parametrize("client_name", ["torch_client", "onnx_client"])
def test_predict_real_image(client_name: str, request: pytest.FixtureRequest, real_image: Path,
                            tiny_run_dir: Path) -> None:
    client: TestClient = request.getfixturevalue(client_name)
    status, body = upload(client, "/predict", real_image.read_bytes())
    assert status == 200
    assert set(body["probabilities"]) == set(CLASS_CODES)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    ranked = [entry["code"] for entry in body["classes"]]
    assert sorted(ranked) == sorted(CLASS_CODES) and ranked[0] == body["top_class"]
    assert body["top_probability"] == pytest.approx(max(body["probabilities"].values()))
    assert body["malignant"] == (body["malignant_probability"] >= body["malignant_threshold"])
    assert body["model_id"] == client.get("/health").json()["model_id"]
    expected = load_predictor(tiny_run_dir).predict_file(real_image)
    assert body["top_class"] == expected.top_class
    assert body["top_probability"] == pytest.approx(expected.top_probability, abs=1e-4)


@pytest.mark.parametrize("image_format", ["PNG", "BMP", "TIFF", "WEBP"])
def test_every_accepted_format(torch_client: TestClient, real_image: Path, image_format: str) -> None:
    status, body = upload(torch_client, "/predict", encoded(real_image, image_format),
                          name=f"lesion.{image_format.lower()}", content_type="application/octet-stream")
    assert status == 200, body
    assert body["top_class"] in CLASS_CODES


def test_explain_returns_a_png_overlay(torch_client: TestClient, real_image: Path) -> None:
    status, body = upload(torch_client, "/explain", real_image.read_bytes())
    assert status == 200
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png_base64"])))
    width, height = Image.open(real_image).size
    assert overlay.format == "PNG" and overlay.size == (width + LEGEND_WIDTH, height + TITLE_HEIGHT)
    assert body["top_class"] == upload(torch_client, "/predict", real_image.read_bytes())[1]["top_class"]


def test_explain_from_onnx_is_not_implemented(onnx_client: TestClient, real_image: Path) -> None:
    status, body = upload(onnx_client, "/explain", real_image.read_bytes())
    assert status == 501
    assert "Grad-CAM needs the PyTorch model" in body["detail"]


def truncated_jpeg(real_image: Path) -> bytes:
    data = real_image.read_bytes()
    return data[: len(data) // 2]


BAD_UPLOADS = {
    "empty": (lambda image: b"", 400, "empty"),
    "text": (lambda image: b"just some text, not an image", 415, "not a supported image"),
    "gif": (lambda image: encoded(image, "GIF"), 415, "not a supported image"),
    "truncated": (truncated_jpeg, 422, "cannot be decoded"),
    "slightly too big": (lambda image: b"\xff\xd8" + bytes(UPLOAD_LIMIT), 413, "upload limit"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_uploads_get_a_clear_4xx(torch_client: TestClient, real_image: Path, case: str) -> None:
    make, expected_status, expected_text = BAD_UPLOADS[case]
    status, body = upload(torch_client, "/predict", make(real_image))
    assert status == expected_status
    assert expected_text in body["detail"] and "lesion.jpg" in body["detail"]
    assert upload(torch_client, "/predict", real_image.read_bytes())[0] == 200


def test_wrong_field_and_wrong_body_are_422(torch_client: TestClient, real_image: Path) -> None:
    status, body = upload(torch_client, "/predict", real_image.read_bytes(), field="image")
    assert status == 422 and body["detail"][0]["loc"] == ["body", "file"]
    response = torch_client.post("/predict", json={"file": "ISIC_0024306.jpg"})
    assert response.status_code == 422


def test_oversized_body_is_refused_by_its_content_length(torch_client: TestClient) -> None:
    status, body = upload(torch_client, "/predict", bytes(3 * UPLOAD_LIMIT))
    assert status == 413
    assert "upload limit is 0.3 MB" in body["detail"]


def test_oversized_stream_without_content_length_is_cut_off(torch_client: TestClient,
                                                           real_image: Path) -> None:
    def body() -> Iterator[bytes]:
        yield b'--cut\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n'
        for _ in range(50):
            yield bytes(10_000)
        yield b"\r\n--cut--\r\n"

    response = torch_client.post("/predict", content=body(),
                                 headers={"content-type": "multipart/form-data; boundary=cut"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413 and response.json()["detail"]
    assert upload(torch_client, "/predict", real_image.read_bytes())[0] == 200


def test_page_and_docs_are_served(torch_client: TestClient) -> None:
    page = torch_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "not a diagnosis" in page.text
    for asset in ("app.js", "style.css"):
        assert torch_client.get(f"/static/{asset}").status_code == 200
    for static_file in (path for path in STATIC_DIR.iterdir() if path.suffix in (".html", ".js", ".css")):
        text = static_file.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text, f"{static_file.name} loads external files"
    assert torch_client.get("/docs").status_code == 200
    paths = torch_client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/explain", "/health"} <= set(paths)
