"""The service's limits: on the size of a request, on the bodies being received, and on the decoding and
inference it runs at once, in two lanes.

Size: an oversized request is refused from its Content-Length header, before a byte of the body is read.
Bodies that lie about their length or stream without one are cut off while being read by FastAPI's own
`max_body_size` on the upload routes; the middleware only adds the early, cheap refusal with a JSON answer
(FastAPI's header check answers in plain text, which the web page and API clients cannot parse).

Work: every upload costs a decode (memory in proportion to its pixels) and an inference (CPU). Without a
bound, N simultaneous uploads cost N decodes at once, and a burst of large images exhausts memory. A
`WorkPool` runs them on a fixed number of threads, admits a bounded queue behind them and answers the rest
503 with `Retry-After` at once, so the service slows down under load instead of dying, and the requests it
accepts still finish in a predictable time.

Lanes: with one pool for every upload, a burst of huge images takes every worker and every place in the
queue, and ordinary uploads are turned away until it is over. What a job costs follows the pixels it
decodes, not its bytes (a smooth 7000x7000 PNG is 160 KB and decodes to 147 MB), and the pixel count is in
the image's header, known before a pixel is decoded. So `Lanes` gives uploads over `heavy_pixels` a pool of
their own, the heavy lane (one worker and a short queue by default), and every other upload the ordinary
lane, which heavy uploads can never occupy: a burst of huge images waits or is refused within its own lane,
ordinary uploads never wait behind it, and memory holds at most one huge decode per heavy worker.

Receiving: the lane is known only once the body is in and its header read, so the refusal before the body
is read cannot depend on the lanes any more. What it still bounds is memory: `Reception` counts the bodies
being received and inspected by their declared Content-Length (the largest allowed body when they declare
none), at most `receiving_bytes` together, and the middleware answers 503 beyond that before reading the
body. It counts bytes rather than requests because bytes are what memory holds: a burst of huge images of
few bytes each (the hostile case) does not fill it and so turns no ordinary upload away, while a burst of
bodies near the size limit does.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from lesionlab.serve.defaults import (
    DEFAULT_HEAVY_PIXELS,
    DEFAULT_HEAVY_QUEUE,
    DEFAULT_HEAVY_WORKERS,
    DEFAULT_MAX_UPLOAD_MB,
    RECEIVING_UPLOADS,
)

T = TypeVar("T")
DEFAULT_MAX_UPLOAD_BYTES = int(DEFAULT_MAX_UPLOAD_MB * 1e6)
DEFAULT_TIMEOUT_S = 30.0
DECODE_SIZE_FACTOR = 4
RECEPTION_RETRY_AFTER_S = 1
RECEPTION_STATE = "lesionlab_reception"
EWMA_WEIGHT = 0.2
UNBOUNDED_THREADS = 40  # Starlette's own threadpool size: what "no bound" meant before these limits


class ContentLengthLimitMiddleware:
    """Answer 413 with a JSON `detail` when a request declares a body larger than `max_body_bytes`."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, limit_text: str) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.limit_text = limit_text

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = Headers(scope=scope).get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                detail = f"the request is {int(declared) / 1e6:.1f} MB; {self.limit_text}"
                await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


@dataclass(frozen=True)
class WorkLimits:
    """How much decoding and inference the service takes on at once, in each lane.

    `workers`: ordinary jobs (decode, predict) running at once; 0 removes the bound and the queue (jobs then
    run on up to 40 threads, Starlette's own threadpool size, as before these limits). `queue`: admitted
    ordinary requests waiting for a worker; beyond `workers + queue` a request is refused with 503 at once.
    `heavy_pixels`: uploads with more pixels than this (width x height, from the header) run in the heavy
    lane, bounded the same way by `heavy_workers` and `heavy_queue`. `receiving_bytes`: the bodies being
    received and inspected at once, counted by their declared size (0: no bound). `timeout_s`: the most a
    request may take, waiting included, before it is answered 503 (0: no timeout). `decode_min_size`:
    uploads are decoded reduced to at least this many pixels a side (None: full size).
    """

    workers: int
    queue: int
    timeout_s: float
    decode_min_size: int | None
    heavy_pixels: int = DEFAULT_HEAVY_PIXELS
    heavy_workers: int = DEFAULT_HEAVY_WORKERS
    heavy_queue: int = DEFAULT_HEAVY_QUEUE
    receiving_bytes: int = RECEIVING_UPLOADS * DEFAULT_MAX_UPLOAD_BYTES

    @classmethod
    def defaults(cls, input_size: int, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> WorkLimits:
        """The ordinary lane: one worker per usable core and a queue twice that. The heavy lane: uploads over
        4 megapixels, one worker and a queue of 4. Bodies received at once: eight at the upload limit. 30 s
        per request, decoding at four times the model's input.

        4 megapixels is fifteen times a 600x450 HAM10000 image, so dermoscopic photos stay ordinary, and an
        ordinary PNG decodes to at most 16 MB. One heavy worker holds one huge decode at a time (up to the
        50-megapixel limit); its queue holds only bodies, not decodes.
        """
        workers = usable_cores()
        return cls(workers=workers, queue=2 * workers, timeout_s=DEFAULT_TIMEOUT_S,
                   decode_min_size=DECODE_SIZE_FACTOR * input_size,
                   receiving_bytes=RECEIVING_UPLOADS * max_upload_bytes)


class ServerBusyError(Exception):
    """A request refused because the service is at capacity; answer 503 with `Retry-After`."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s

    def response(self) -> JSONResponse:
        """The 503 answer, with the JSON `detail` every error of the API has."""
        return JSONResponse({"detail": self.message}, status_code=503,
                            headers={"Retry-After": str(self.retry_after_s)})


class WorkPool:
    """Runs CPU-heavy jobs on a fixed number of threads, admits a bounded number, times them out.

    The bound counts a job until its thread is done with it, also after its request has timed out (a running
    thread cannot be stopped), so the memory and CPU in use never exceed `workers` jobs. A request that
    times out while still waiting is removed from the queue. `Retry-After` estimates when a slot frees
    up: the mean job time so far times the jobs ahead per worker, at least 1 s. `what` names the jobs in
    the 503 answer (`uploads`, or the heavy lane's `uploads over 4 megapixels`).
    """

    def __init__(self, workers: int, queue: int, timeout_s: float, what: str) -> None:
        self.workers = workers
        self.queue = queue
        self.timeout_s = timeout_s
        self.what = what
        self._executor = ThreadPoolExecutor(max_workers=workers or UNBOUNDED_THREADS,
                                            thread_name_prefix="lesionlab-work")
        self._lock = threading.Lock()
        self._admitted = 0
        self._mean_job_s = 1.0

    @property
    def admitted(self) -> int:
        """Jobs running or waiting now."""
        return self._admitted

    @property
    def capacity(self) -> int | None:
        """Jobs admitted at most (running + waiting), or None without a bound."""
        return self.workers + self.queue if self.workers else None

    def is_full(self) -> bool:
        """Whether a new request would be refused now."""
        return self.capacity is not None and self._admitted >= self.capacity

    def retry_after_s(self) -> int:
        """Seconds a refused client should wait before trying again."""
        return max(1, math.ceil(self._mean_job_s * max(self._admitted, 1) / (self.workers or 1)))

    def busy_error(self) -> ServerBusyError:
        """The refusal for a full pool."""
        return ServerBusyError(
            f"the server is busy ({self._admitted} {self.what} in progress or waiting, at most "
            f"{self.capacity}); retry after the time in the Retry-After header.", self.retry_after_s())

    async def run(self, job: Callable[[], T]) -> T:
        """Run `job` on a worker thread; raise `ServerBusyError` when full or past the timeout.

        Admission happens before the first `await`, so a caller that has just left the `Reception` is in
        this pool (or refused) without a moment between the two.
        """
        with self._lock:
            if self.is_full():
                raise self.busy_error()
            self._admitted += 1
        queued = time.perf_counter()
        future = self._executor.submit(self._timed, job)
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s or None)
        except TimeoutError:
            future.cancel()
            waited = time.perf_counter() - queued
            raise ServerBusyError(
                f"the request took longer than the {self.timeout_s:g} s limit ({waited:.1f} s, "
                f"waiting included); retry later, or send a smaller image.", self.retry_after_s()) from None

    def _timed(self, job: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return job()
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self._mean_job_s = EWMA_WEIGHT * elapsed + (1 - EWMA_WEIGHT) * self._mean_job_s

    def _release(self, _: Future[T]) -> None:
        with self._lock:
            self._admitted -= 1

    def shutdown(self) -> None:
        """Stop the threads once their jobs finish."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class Lanes:
    """The ordinary and the heavy `WorkPool`, and the choice between them by an upload's pixel count."""

    def __init__(self, limits: WorkLimits) -> None:
        self.heavy_pixels = limits.heavy_pixels
        self.ordinary = WorkPool(limits.workers, limits.queue, limits.timeout_s, "uploads")
        self.heavy = WorkPool(limits.heavy_workers, limits.heavy_queue, limits.timeout_s,
                              f"uploads over {limits.heavy_pixels / 1e6:g} megapixels")

    def for_pixels(self, pixels: int) -> WorkPool:
        """The lane of an upload with `pixels` pixels."""
        return self.heavy if pixels > self.heavy_pixels else self.ordinary

    def shutdown(self) -> None:
        """Stop both lanes' threads once their jobs finish."""
        self.ordinary.shutdown()
        self.heavy.shutdown()


class ReceptionTicket:
    """One body's share of the `Reception`; `leave` gives it back once, whoever calls it first (the route
    when the upload goes to its lane, else the middleware when the request ends)."""

    def __init__(self, reception: Reception, size: int) -> None:
        self._reception = reception
        self._size = size

    def leave(self) -> None:
        self._reception.release(self._size)
        self._size = 0


class Reception:
    """The bytes of the upload bodies being received and inspected, at most `budget_bytes` (0: no bound).

    A body counts from its arrival until its upload is in a lane (or refused), where the lane's own bound
    takes over. One body is always let in when none is being received, so a budget below the upload limit
    slows uploads down instead of refusing them all. Used only on the event loop, so it needs no lock.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.held_bytes = 0

    def enter(self, size: int) -> ReceptionTicket | None:
        """A ticket for a body of `size` bytes, or None when it would pass the budget."""
        if self.budget_bytes and self.held_bytes and self.held_bytes + size > self.budget_bytes:
            return None
        self.held_bytes += size
        return ReceptionTicket(self, size)

    def release(self, size: int) -> None:
        self.held_bytes -= size

    def busy_error(self) -> ServerBusyError:
        """The refusal before the body is read; bodies are received in well under a second."""
        return ServerBusyError(
            f"the server is busy receiving uploads ({self.held_bytes / 1e6:.1f} MB in progress, at most "
            f"{self.budget_bytes / 1e6:g} MB at once); retry after the time in the Retry-After header.",
            RECEPTION_RETRY_AFTER_S)


class ReceptionLimitMiddleware:
    """Answer 503 to an upload before its body is received when the bodies in reception would pass their
    budget; otherwise hand the request its `ReceptionTicket` (see `leave_reception`)."""

    def __init__(self, app: ASGIApp, reception: Reception, paths: frozenset[str],
                 max_body_bytes: int) -> None:
        self.app = app
        self.reception = reception
        self.paths = paths
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        size = min(int(declared), self.max_body_bytes) if declared.isdigit() else self.max_body_bytes
        ticket = self.reception.enter(size)
        if ticket is None:
            await self.reception.busy_error().response()(scope, receive, send)
            return
        scope.setdefault("state", {})[RECEPTION_STATE] = ticket
        try:
            await self.app(scope, receive, send)
        finally:
            ticket.leave()


def leave_reception(scope: Scope) -> None:
    """End the reception of the request's body: the route calls it once the upload has been read and
    inspected, right before handing it to its lane."""
    scope["state"][RECEPTION_STATE].leave()
