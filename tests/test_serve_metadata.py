"""The API's optional patient fields: /health states which a model reads, /predict and /explain take them as
form fields or query parameters, validate them with 422s that say what is accepted, report which were used,
and score exactly as the predictor does; an image-only model ignores them and says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lesionlab.classes import CLASS_CODES
from lesionlab.data.imageio import load_rgb
from lesionlab.data.metadata import SITES, PatientMetadata
from lesionlab.inference import load_predictor
from lesionlab.serve.app import create_app
from lesionlab.serve.limits import WorkLimits

# No request timeout: Grad-CAM on a busy test machine can take longer than the service's default.
LIMITS = WorkLimits(workers=2, queue=4, timeout_s=0, decode_min_size=None)

pytestmark = pytest.mark.integration

FIELDS = {"age": "60", "sex": "female", "site": "back"}
READ_AS = PatientMetadata(60.0, "female", "posterior torso")


@pytest.fixture(scope="module")
def image_path(shared_data_dir: Path) -> Path:
    return shared_data_dir / "images" / "ISIC_0034321.jpg"


@pytest.fixture(scope="module")
def metadata_client(tiny_metadata_run_dir: Path) -> TestClient:
    return TestClient(create_app(load_predictor(tiny_metadata_run_dir), limits=LIMITS))


@pytest.fixture(scope="module")
def image_only_client(tiny_run_dir: Path) -> TestClient:
    return TestClient(create_app(load_predictor(tiny_run_dir), limits=LIMITS))


def post(client: TestClient, route: str, image: Path, data: dict[str, str] | None = None,
         params: dict[str, str] | None = None) -> tuple[int, dict]:
    response = client.post(route, files={"file": (image.name, image.read_bytes(), "image/jpeg")},
                           data=data or {}, params=params or {})
    return response.status_code, response.json()


def probabilities(body: dict) -> np.ndarray:
    return np.array([body["probabilities"][code] for code in CLASS_CODES])


def test_health_states_the_fields_each_model_reads(metadata_client: TestClient,
                                                   image_only_client: TestClient) -> None:
    health = metadata_client.get("/health").json()
    assert health["metadata_fields"] == ["age", "sex", "site"] and health["metadata_sites"] == list(SITES)
    assert image_only_client.get("/health").json()["metadata_fields"] == []


def test_fields_as_form_or_query_score_as_the_predictor(metadata_client: TestClient, image_path: Path,
                                                        tiny_metadata_run_dir: Path) -> None:
    predictor = load_predictor(tiny_metadata_run_dir)
    image = load_rgb(image_path)
    status, form = post(metadata_client, "/predict", image_path, data=FIELDS)
    assert status == 200
    assert form["metadata"] == {"reads": ["age", "sex", "site"],
                                "used": {"age": 60.0, "sex": "female", "site": "posterior torso"},
                                "missing": [], "ignored": [], "note": "used: age, sex, site"}
    assert np.abs(probabilities(form) - predictor.image_probabilities(image, READ_AS)).max() < 1e-6
    status, query = post(metadata_client, "/predict", image_path, params=FIELDS)
    assert status == 200 and query["probabilities"] == form["probabilities"]
    status, none = post(metadata_client, "/predict", image_path)
    assert status == 200 and none["metadata"]["used"] == {}
    assert none["metadata"]["missing"] == ["age", "sex", "site"]
    assert np.abs(probabilities(none) - predictor.image_probabilities(image)).max() < 1e-6
    assert np.abs(probabilities(none) - probabilities(form)).max() > 1e-3


def test_some_fields_and_empty_values_read_as_missing(metadata_client: TestClient, image_path: Path) -> None:
    status, body = post(metadata_client, "/predict", image_path, data={"site": "head/neck", "sex": ""})
    assert status == 200
    assert body["metadata"]["used"] == {"site": "head/neck"}
    assert body["metadata"]["missing"] == ["age", "sex"]
    assert "read as missing: age, sex" in body["metadata"]["note"]


@pytest.mark.parametrize(("fields", "message"), [
    ({"site": "elbow"}, "'elbow' is not known; use one of"),
    ({"age": "old"}, "age 'old' is not a number"),
    ({"age": "150"}, "outside 0..120"),
    ({"sex": "x"}, "sex 'x' is not one of female, male"),
])
def test_a_bad_field_is_a_422_that_says_what_is_accepted(metadata_client: TestClient, image_path: Path,
                                                         fields: dict[str, str], message: str) -> None:
    for route in ("/predict", "/explain"):
        status, body = post(metadata_client, route, image_path, data=fields)
        assert status == 422 and message in body["detail"], body
    if "site" in fields:
        assert all(name in body["detail"] for name in ("back", "posterior torso", "face", "head/neck"))


def test_a_field_given_twice_is_refused(metadata_client: TestClient, image_path: Path) -> None:
    status, body = post(metadata_client, "/predict", image_path, data={"age": "60"}, params={"age": "61"})
    assert status == 422 and "give it once" in body["detail"]


def test_an_image_only_model_ignores_fields_and_says_so(image_only_client: TestClient,
                                                        image_path: Path) -> None:
    _, plain = post(image_only_client, "/predict", image_path)
    status, body = post(image_only_client, "/predict", image_path, data={"age": "60", "site": "face"})
    assert status == 200 and body["probabilities"] == plain["probabilities"]
    assert body["metadata"]["reads"] == [] and body["metadata"]["ignored"] == ["age", "site"]
    assert body["metadata"]["note"] == ("this model reads the image only; ignored (this model does not read "
                                        "them): age, site")


def test_explain_uses_the_fields(metadata_client: TestClient, image_path: Path) -> None:
    status, explained = post(metadata_client, "/explain", image_path, data=FIELDS)
    assert status == 200 and explained["overlay_png_base64"]
    _, predicted = post(metadata_client, "/predict", image_path, data=FIELDS)
    assert explained["probabilities"] == predicted["probabilities"]
    assert explained["metadata"] == predicted["metadata"]
