"""The service under load: bounded work in flight, 503 with Retry-After beyond the queue, a request timeout,
and large uploads decoded reduced, so memory follows the model's input and the worker count, not the load."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx2
import numpy as np
from PIL import Image

from lesionlab.classes import CLASS_CODES
from lesionlab.inference.base import Preprocessing
from lesionlab.inference.prediction import Prediction
from lesionlab.serve.app import create_app
from lesionlab.serve.limits import WorkLimits

INPUT_SIZE = 64
DECODE_MIN = 2 * INPUT_SIZE
PREPROCESSING = Preprocessing(INPUT_SIZE)


@dataclass
class SpyPredictor:
    """Stands in for a model: records the images it gets and how many calls overlap; can hold every call."""

    release: threading.Event = field(default_factory=threading.Event)
    preprocessing: Preprocessing = PREPROCESSING
    model_id: str = "spy:pytorch:000000000000"
    classes: tuple[str, ...] = CLASS_CODES
    can_explain: bool = False
    metadata_fields: tuple[str, ...] = ()
    sizes: list[tuple[int, int]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def predict_image(self, image: Image.Image, metadata: object = None) -> Prediction:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.sizes.append(image.size)
        self.release.wait(timeout=30)
        with self.lock:
            self.in_flight -= 1
        return Prediction.from_probabilities(CLASS_CODES, np.full(len(CLASS_CODES), 1 / len(CLASS_CODES)))


def encoded(size: tuple[int, int], image_format: str) -> bytes:
    """A large, smooth image (a gradient compresses to little, as a real upload of that size could)."""
    width, height = size
    gradient = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    pixels = np.broadcast_to(gradient, (height, width, 3)).copy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


def client_for(app: object) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test")


async def post(client: httpx2.AsyncClient, body: bytes) -> httpx2.Response:
    return await client.post("/predict", files={"file": ("x.png", body, "image/png")})


async def post_all(app: object, bodies: list[bytes]) -> list[httpx2.Response]:
    """POST the uploads concurrently to the app, in this process."""
    async with client_for(app) as client:
        return await asyncio.gather(*(post(client, body) for body in bodies))


async def until(condition: Callable[[], bool]) -> None:
    """Wait (event loop free) until `condition` holds; no fixed sleeps, so a slow machine cannot flake."""
    while not condition():
        await asyncio.sleep(0.01)


def test_beyond_workers_and_queue_the_answer_is_503_with_retry_after() -> None:
    """One upload runs (held by the model), one waits, and the others are refused at once."""
    spy = SpyPredictor()
    app = create_app(spy, limits=WorkLimits(workers=1, queue=1, timeout_s=60, decode_min_size=DECODE_MIN))
    body = encoded((300, 200), "PNG")

    async def scenario() -> tuple[list[httpx2.Response], list[httpx2.Response]]:
        async with client_for(app) as client:
            running = asyncio.ensure_future(post(client, body))
            await until(lambda: spy.in_flight == 1)
            waiting = asyncio.ensure_future(post(client, body))
            await until(lambda: app.state.work_pool.admitted == 2)
            refused = await asyncio.gather(post(client, body), post(client, body))
            spy.release.set()
            return [await running, await waiting], refused

    accepted, refused = asyncio.run(scenario())
    assert [response.status_code for response in accepted] == [200, 200]
    assert [response.status_code for response in refused] == [503, 503]
    for response in refused:
        assert int(response.headers["Retry-After"]) >= 1
        assert "busy" in response.json()["detail"]
    assert spy.most_in_flight == 1


def test_a_request_past_the_timeout_is_answered_503_and_frees_its_slot() -> None:
    spy = SpyPredictor()
    app = create_app(spy, limits=WorkLimits(workers=1, queue=1, timeout_s=0.3, decode_min_size=DECODE_MIN))
    (response,) = asyncio.run(post_all(app, [encoded((300, 200), "PNG")]))
    assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
    assert "longer than the 0.3 s limit" in response.json()["detail"]
    spy.release.set()
    (response,) = asyncio.run(post_all(app, [encoded((300, 200), "PNG")]))
    assert response.status_code == 200


def test_large_uploads_decode_reduced_and_never_more_than_workers_at_once() -> None:
    """Memory in flight is bounded by workers x a reduced image, whatever the uploads' pixel counts."""
    spy = SpyPredictor()
    spy.release.set()
    app = create_app(spy, limits=WorkLimits(workers=2, queue=8, timeout_s=30, decode_min_size=DECODE_MIN))
    bodies = [encoded((4000, 3000), "JPEG"), encoded((4000, 3000), "PNG")] * 3
    responses = asyncio.run(post_all(app, bodies))
    assert [response.status_code for response in responses] == [200] * len(bodies)
    assert spy.most_in_flight <= 2
    for width, height in spy.sizes:
        assert DECODE_MIN <= min(width, height) < 2 * DECODE_MIN, (width, height)
        assert abs(width / height - 4 / 3) < 0.05, "the aspect ratio is kept"


def test_small_uploads_decode_exactly_as_without_limits() -> None:
    spy = SpyPredictor()
    spy.release.set()
    app = create_app(spy, limits=WorkLimits(workers=1, queue=1, timeout_s=30, decode_min_size=DECODE_MIN))
    asyncio.run(post_all(app, [encoded((250, 200), "JPEG")]))
    assert spy.sizes == [(250, 200)]
