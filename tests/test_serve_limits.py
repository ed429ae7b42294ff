"""The service under load: bounded work in flight, 503 with Retry-After beyond the queue, a request timeout,
and large uploads decoded reduced, so memory follows the model's input and the worker count, not the load;
huge images in a lane of their own, so they never hold up or crowd out ordinary uploads; and a bound on the
bodies being received, in bytes."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx2
import numpy as np
from PIL import Image

from lesionlab.classes import CLASS_CODES
from lesionlab.inference.base import Preprocessing
from lesionlab.inference.prediction import Prediction
from lesionlab.serve.app import create_app
from lesionlab.serve.limits import Lanes, Reception, WorkLimits
from lesionlab.serve.uploads import inspect_upload

INPUT_SIZE = 64
DECODE_MIN = 2 * INPUT_SIZE
PREPROCESSING = Preprocessing(INPUT_SIZE)


@dataclass
class SpyPredictor:
    """Stands in for a model: records the images it gets and how many calls overlap; holds every call on an
    image of more than `hold_above` pixels until released (all of them by default)."""

    release: threading.Event = field(default_factory=threading.Event)
    hold_above: int = 0
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
        if image.width * image.height > self.hold_above:
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


def noisy(size: tuple[int, int], image_format: str) -> bytes:
    """An image of random pixels: as many bytes as its format can take for its size."""
    width, height = size
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
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
            await until(lambda: app.state.lanes.ordinary.admitted == 2)
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


def test_large_uploads_decode_reduced_and_never_more_than_the_heavy_workers_at_once() -> None:
    """Memory in flight is bounded by the heavy workers x a reduced image, whatever the uploads' pixels."""
    spy = SpyPredictor()
    spy.release.set()
    app = create_app(spy, limits=WorkLimits(workers=2, queue=8, timeout_s=30, decode_min_size=DECODE_MIN,
                                            heavy_workers=1, heavy_queue=8))
    bodies = [encoded((4000, 3000), "JPEG"), encoded((4000, 3000), "PNG")] * 3
    responses = asyncio.run(post_all(app, bodies))
    assert [response.status_code for response in responses] == [200] * len(bodies)
    assert spy.most_in_flight == 1
    for width, height in spy.sizes:
        assert DECODE_MIN <= min(width, height) < 2 * DECODE_MIN, (width, height)
        assert abs(width / height - 4 / 3) < 0.05, "the aspect ratio is kept"


def test_small_uploads_decode_exactly_as_without_limits() -> None:
    spy = SpyPredictor()
    spy.release.set()
    app = create_app(spy, limits=WorkLimits(workers=1, queue=1, timeout_s=30, decode_min_size=DECODE_MIN))
    asyncio.run(post_all(app, [encoded((250, 200), "JPEG")]))
    assert spy.sizes == [(250, 200)]


HEAVY_PIXELS = 200_000  # with it, 700x500 (0.35 MP) is heavy and 300x200 ordinary, and both encode quickly


def test_heavy_uploads_running_and_queued_neither_hold_up_nor_refuse_an_ordinary_one() -> None:
    """The heavy lane full (one running, one waiting): a third heavy upload gets 503 at once, and an ordinary
    upload is classified while the heavy ones are still held."""
    spy = SpyPredictor(hold_above=HEAVY_PIXELS)
    limits = WorkLimits(workers=1, queue=0, timeout_s=60, decode_min_size=None, heavy_pixels=HEAVY_PIXELS,
                        heavy_workers=1, heavy_queue=1)
    app = create_app(spy, limits=limits)
    heavy, ordinary = encoded((700, 500), "PNG"), encoded((300, 200), "PNG")

    async def scenario() -> tuple[httpx2.Response, httpx2.Response, bool, list[httpx2.Response]]:
        async with client_for(app) as client:
            running = asyncio.ensure_future(post(client, heavy))
            await until(lambda: spy.in_flight == 1)
            waiting = asyncio.ensure_future(post(client, heavy))
            await until(lambda: app.state.lanes.heavy.admitted == 2)
            refused = await post(client, heavy)
            served = await asyncio.wait_for(post(client, ordinary), timeout=20)
            heavy_still_held = not running.done() and not waiting.done()
            spy.release.set()
            return refused, served, heavy_still_held, [await running, await waiting]

    refused, served, heavy_still_held, heavy_answers = asyncio.run(scenario())
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
    assert "busy" in refused.json()["detail"] and "over 0.2 megapixels" in refused.json()["detail"]
    assert served.status_code == 200 and heavy_still_held
    assert [response.status_code for response in heavy_answers] == [200, 200]
    assert spy.sizes == [(700, 500), (300, 200), (700, 500)], "the ordinary upload went before the queued one"


def test_the_lane_follows_the_header_pixels_not_the_bytes() -> None:
    """A 5000x5000 PNG of a few KB is heavy by default; a noisy 600x450 JPEG, many times its bytes, is not."""
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buffer, format="PNG")
    huge = buffer.getvalue()
    photo = noisy((600, 450), "JPEG")
    assert len(huge) < len(photo) / 4
    lanes = Lanes(WorkLimits.defaults(INPUT_SIZE))
    huge_header = inspect_upload(huge, "huge.png", len(photo))
    photo_header = inspect_upload(photo, "photo.jpg", len(photo))
    assert (huge_header.image_format, huge_header.pixels) == ("PNG", 25_000_000)
    assert lanes.for_pixels(huge_header.pixels) is lanes.heavy
    assert lanes.for_pixels(photo_header.pixels) is lanes.ordinary


def test_an_image_over_the_pixel_limit_is_refused_from_its_header_before_any_lane() -> None:
    """Over the 50-megapixel limit, or even over Pillow's own bomb limit: 422 at once, with the heavy lane
    full, so a pixel bomb never takes a place there."""
    spy = SpyPredictor(hold_above=HEAVY_PIXELS)
    app = create_app(spy, limits=WorkLimits(workers=1, queue=0, timeout_s=60, decode_min_size=None,
                                            heavy_pixels=HEAVY_PIXELS, heavy_workers=1, heavy_queue=0))
    bombs = []
    for size in ((8000, 8000), (14000, 14000)):  # the second over Pillow's own limit too
        buffer = io.BytesIO()
        Image.new("1", size).save(buffer, format="PNG")
        bombs.append(buffer.getvalue())

    async def scenario() -> list[httpx2.Response]:
        async with client_for(app) as client:
            running = asyncio.ensure_future(post(client, encoded((700, 500), "PNG")))
            await until(lambda: spy.in_flight == 1)
            answers = [await post(client, bomb) for bomb in bombs]
            spy.release.set()
            await running
            return answers

    answers = asyncio.run(scenario())
    assert [response.status_code for response in answers] == [422, 422]
    assert "exceeds the limit of 50 megapixels" in answers[0].json()["detail"]
    assert "x.png" in answers[1].json()["detail"]


def test_reception_counts_bytes_and_always_lets_one_body_in() -> None:
    reception = Reception(budget_bytes=1000)
    first = reception.enter(600)
    assert first is not None and reception.enter(600) is None
    second = reception.enter(400)
    assert second is not None and reception.held_bytes == 1000
    first.leave()
    first.leave()
    assert reception.held_bytes == 400
    second.leave()
    alone = reception.enter(5000)
    assert alone is not None, "a body over the whole budget is let in when nothing else is being received"
    alone.leave()
    assert Reception(budget_bytes=0).enter(10**9) is not None


def test_bodies_being_received_are_bounded_by_their_declared_bytes() -> None:
    """A slow body holds its share of the reception budget; a second large one is refused 503 before it is
    read, while an ordinary upload that fits is served; every share comes back."""
    spy = SpyPredictor()
    spy.release.set()
    limits = WorkLimits(workers=1, queue=1, timeout_s=60, decode_min_size=DECODE_MIN,
                        receiving_bytes=1_000_000)
    app = create_app(spy, limits=limits)
    boundary = "cut"
    payload = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.png"\r\n\r\n'
               ).encode() + noisy((460, 440), "PNG") + f"\r\n--{boundary}--\r\n".encode()
    assert len(payload) < limits.receiving_bytes < 2 * len(payload)
    headers = {"content-type": f"multipart/form-data; boundary={boundary}",
               "content-length": str(len(payload))}
    arrive = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        await arrive.wait()
        yield payload

    async def scenario() -> tuple[httpx2.Response, httpx2.Response, httpx2.Response]:
        async with client_for(app) as client:
            slow = asyncio.ensure_future(client.post("/predict", content=slow_body(), headers=headers))
            await until(lambda: app.state.reception.held_bytes == len(payload))
            refused = await client.post("/predict", content=payload, headers=headers)
            served = await post(client, encoded((300, 200), "PNG"))
            arrive.set()
            return refused, served, await slow

    refused, served, slow = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert "receiving uploads" in refused.json()["detail"]
    assert served.status_code == 200 and slow.status_code == 200
    assert app.state.reception.held_bytes == 0
