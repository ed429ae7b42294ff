"""End to end in a real browser: open the page, upload a real image, see bars, top class and Grad-CAM.

Needs `/usr/bin/chromium` and the `playwright` Python package (the README's set-up installs both); the test
skips with a message naming what is missing. Nothing is installed or downloaded at test time.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import uvicorn

from lesionlab.classes import CLASS_CODES
from lesionlab.inference import load_predictor
from lesionlab.serve.app import create_app

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
STARTUP_SECONDS = 30.0
RESULT_TIMEOUT_MS = 60_000


def require_browser() -> None:
    """Skip unless both the browser and the Python driver are here."""
    missing = []
    if not CHROMIUM.is_file():
        missing.append(f"{CHROMIUM} (Debian package `chromium`)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the `playwright` Python package (dev extra)")
    if missing:
        pytest.skip(f"browser test needs {' and '.join(missing)}; the README's set-up installs them")


def serve_on_loopback(run_dir: Path) -> Iterator[str]:
    """The app over a run directory's model, served by uvicorn on a free loopback port; yields its URL."""
    require_browser()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(load_predictor(run_dir)), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=STARTUP_SECONDS)
    listener.close()


@pytest.fixture(scope="module")
def server_url(tiny_run_dir: Path) -> Iterator[str]:
    """The app over the tiny run (so Grad-CAM works)."""
    yield from serve_on_loopback(tiny_run_dir)


@pytest.fixture(scope="module")
def metadata_server_url(tiny_metadata_run_dir: Path) -> Iterator[str]:
    """The app over the tiny metadata run, which reads age, sex and site."""
    yield from serve_on_loopback(tiny_metadata_run_dir)


@pytest.fixture(scope="module")
def browser_page(server_url: str) -> Iterator[Page]:
    """A fresh headless Chromium page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 1300})
        yield page
        browser.close()


def test_upload_shows_bars_top_class_and_overlay(browser_page: Page, server_url: str, shared_data_dir: Path,
                                                 tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = browser_page
    image = sorted((shared_data_dir / "images").glob("ISIC_*.jpg"))[0]
    page.goto(server_url)
    expect(page.locator("#model-id")).to_contain_text("tiny-run:pytorch:")
    expect(page.locator(".disclaimer")).to_contain_text("not a diagnosis")

    page.set_input_files("#file-input", str(image))
    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#status")).to_contain_text(f"Result for {image.name}")
    expect(page.locator("#bars li")).to_have_count(7)
    top_class = page.locator("#top-class").inner_text()
    assert any(f"({code})" in top_class for code in CLASS_CODES)
    expect(page.locator("#malignancy")).to_contain_text("malignant probability")
    expect(page.locator("#malignancy-rule")).to_contain_text("fallback")
    expect(page.locator("#rule")).to_contain_text("fallback")
    expect(page.locator("#overlay")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
    expect(page.locator("#overlay-caption")).to_contain_text("Grad-CAM for")
    expect(page.locator("#overlay-caption")).to_contain_text("colour bar")
    widths = page.locator("#bars .bar-fill").evaluate_all("bars => bars.map(bar => bar.style.width)")
    assert widths[0] != "0.0%" and all(width.endswith("%") for width in widths)
    page.screenshot(path=str(tmp_path / "result.png"), full_page=True)


def test_patient_fields_show_for_a_metadata_model_and_reach_the_answer(
        browser_page: Page, server_url: str, metadata_server_url: str, shared_data_dir: Path) -> None:
    from playwright.sync_api import expect

    page = browser_page
    page.goto(server_url)
    expect(page.locator("#model-id")).to_contain_text("tiny-run:pytorch:")
    expect(page.locator("#patient")).to_be_hidden()
    page.goto(metadata_server_url)
    expect(page.locator("#patient")).to_be_visible()
    expect(page.locator("#patient-fields")).to_have_text("age, sex, site")
    expect(page.locator("#site option")).to_have_count(10)  # unknown, then the shared vocabulary
    page.set_input_files("#file-input", str(shared_data_dir / "images" / "ISIC_0034321.jpg"))
    expect(page.locator("#metadata-note")).to_contain_text("used: none", timeout=RESULT_TIMEOUT_MS)
    page.fill("#age", "60")
    page.select_option("#sex", "female")
    page.select_option("#site", "posterior torso")
    expect(page.locator("#metadata-note")).to_contain_text("used: age, sex, site", timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#overlay-caption")).to_contain_text("Grad-CAM for")


def test_bad_file_shows_an_error(browser_page: Page, server_url: str) -> None:
    from playwright.sync_api import expect

    page = browser_page
    page.goto(server_url)
    expect(page.locator("#model-id")).to_contain_text("tiny-run")
    page.set_input_files("#file-input", {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"hello"})
    expect(page.locator("#status")).to_contain_text("Not analysed", timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#status")).to_contain_text("not a supported image")
    expect(page.locator("#result")).to_be_hidden()


@pytest.mark.parametrize("route", ["/docs", "/redoc"])
def test_api_docs_render_with_the_network_off(browser_page: Page, server_url: str, route: str) -> None:
    """Every request that leaves the server is refused, so a CDN asset would leave the page blank. The
    served HTML names no endpoint: seeing them means the packaged script rendered /openapi.json. ReDoc's
    bundle links its own "powered by" logo from its vendor's site; that image is the one thing refused."""
    from playwright.sync_api import Route, expect

    refused: list[str] = []

    def loopback_only(request_route: Route) -> None:
        url = request_route.request.url
        if url.startswith(server_url) or url.startswith("data:"):
            request_route.continue_()
        else:
            refused.append(f"{request_route.request.resource_type} {url}")
            request_route.abort("internetdisconnected")

    context = browser_page.context.browser.new_context()
    try:
        context.route("**/*", loopback_only)
        page = context.new_page()
        page.goto(server_url + route)
        for path in ("/predict", "/explain", "/health"):
            expect(page.locator("body")).to_contain_text(path, timeout=RESULT_TIMEOUT_MS)
    finally:
        context.close()
    assert [entry for entry in refused if not entry.startswith("image ")] == []
