"""The service's limits: on the size of a request, and on how much decoding and inference it runs at once.

Size: an oversized request is refused from its Content-Length header, before a byte of the body is read.
Bodies that lie about their length or stream without one are cut off while being read by FastAPI's own
`max_body_size` on the upload routes; the middleware only adds the early, cheap refusal with a JSON answer
(FastAPI's header check answers in plain text, which the web page and API clients cannot parse).

Work: every upload costs a decode (memory in proportion to its pixels) and an inference (CPU). Without a
bound, N simultaneous uploads cost N decodes at once, and a burst of large images exhausts memory. The
`WorkPool` runs them on a fixed number of threads (one per core by default), admits a bounded queue behind
them and answers the rest 503 with `Retry-After` at once, so the service slows down under load instead of
dying, and the requests it accepts still finish in a predictable time.
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

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 30.0
DECODE_SIZE_FACTOR = 4
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
    """How much decoding and inference the service takes on at once.

    `workers`: jobs (read, decode, predict) running at once; 0 removes the bound and the queue (jobs then
    run on up to 40 threads, Starlette's own threadpool size, as before these limits). `queue`: admitted
    requests waiting for a worker; beyond `workers + queue` a request is refused with 503 at once.
    `timeout_s`: the most a request may take, waiting included, before it is answered 503 (0: no timeout).
    `decode_min_size`: uploads are decoded reduced to at least this many pixels a side (None: full size).
    """

    workers: int
    queue: int
    timeout_s: float
    decode_min_size: int | None

    @classmethod
    def defaults(cls, input_size: int) -> WorkLimits:
        """One worker per usable core, a queue twice that, 30 s, decoding at four times the model's input."""
        workers = usable_cores()
        return cls(workers=workers, queue=2 * workers, timeout_s=DEFAULT_TIMEOUT_S,
                   decode_min_size=DECODE_SIZE_FACTOR * input_size)

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
    up: the mean job time so far times the jobs ahead per worker, at least 1 s.
    """

    def __init__(self, limits: WorkLimits) -> None:
        self.limits = limits
        self._executor = ThreadPoolExecutor(max_workers=limits.workers or UNBOUNDED_THREADS,
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
        return self.limits.workers + self.limits.queue if self.limits.workers else None

    def is_full(self) -> bool:
        """Whether a new request would be refused now."""
        return self.capacity is not None and self._admitted >= self.capacity

    def retry_after_s(self) -> int:
        """Seconds a refused client should wait before trying again."""
        workers = self.limits.workers or 1
        return max(1, math.ceil(self._mean_job_s * max(self._admitted, 1) / workers))

    def busy_error(self) -> ServerBusyError:
        """The refusal for a full service."""
        return ServerBusyError(
            f"the server is busy ({self._admitted} requests in progress or waiting, at most "
            f"{self.capacity}); retry after the time in the Retry-After header.", self.retry_after_s())

    async def run(self, job: Callable[[], T]) -> T:
        """Run `job` on a worker thread; raise `ServerBusyError` when full or past the timeout."""
        with self._lock:
            if self.is_full():
                raise self.busy_error()
            self._admitted += 1
        queued = time.perf_counter()
        future = self._executor.submit(self._timed, job)
        future.add_done_callback(self._release)
        timeout = self.limits.timeout_s or None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            future.cancel()
            waited = time.perf_counter() - queued
            raise ServerBusyError(
                f"the request took longer than the {self.limits.timeout_s:g} s limit ({waited:.1f} s, "
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


class BusyRefusalMiddleware:
    """Answer 503 to an upload while the pool is full, before its body is received and parsed."""

    def __init__(self, app: ASGIApp, pool: WorkPool, paths: frozenset[str]) -> None:
        self.app = app
        self.pool = pool
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths and self.pool.is_full():
            await self.pool.busy_error().response()(scope, receive, send)
            return
        await self.app(scope, receive, send)
