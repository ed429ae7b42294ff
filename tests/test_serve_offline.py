"""The service's surface works offline: /docs from packaged Swagger UI assets, a favicon, the version, and
the malignancy rule in /health; on a small generated model, so no data or network is needed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from lesionlab import __version__
from lesionlab.classes import CLASS_CODES
from lesionlab.inference.torch_backend import TorchPredictor
from lesionlab.models.checkpoint import ModelCard
from lesionlab.models.registry import IMAGENET_MEAN, IMAGENET_STD, build_model
from lesionlab.serve.app import create_app


@pytest.fixture(scope="module")
def client() -> TestClient:
    """The service over an untrained small CNN at 32 px."""
    torch.manual_seed(0)
    card = ModelCard(arch="small_cnn", num_classes=len(CLASS_CODES), classes=list(CLASS_CODES), input_size=32,
                     mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), grayscale=False, head_hidden=0,
                     dropout=0.2, stage=1, epoch=1, run_name="unit")
    predictor = TorchPredictor(build_model("small_cnn", pretrained="none"), card, Path("unit"), "0" * 64)
    return TestClient(create_app(predictor))


@pytest.mark.parametrize("route", ["/docs", "/redoc"])
def test_docs_reference_no_external_url_and_their_assets_load(client: TestClient, route: str) -> None:
    page = client.get(route)
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    urls += re.findall(r"url: ?'([^']+)'", page.text)
    assert urls, "the docs page loads its script and style"
    assert not [url for url in urls if re.match(r"(https?:)?//", url)], page.text
    assert "http://" not in page.text and "https://" not in page.text
    for url in urls:
        assert client.get(url).status_code == 200, url


def test_favicon_is_an_icon(client: TestClient) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 200 and response.headers["content-type"] == "image/x-icon"
    assert response.content[:4] == b"\x00\x00\x01\x00"


def test_openapi_carries_the_package_version(client: TestClient) -> None:
    assert client.get("/openapi.json").json()["info"]["version"] == __version__


def test_health_states_the_fallback_malignancy_rule(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["malignant_threshold_fitted"] is False and health["malignant_threshold"] == 0.5
    assert "fallback" in health["malignant_rule"] and "lesionlab evaluate" in health["malignant_rule"]
