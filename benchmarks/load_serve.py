"""Load tests of `lesionlab serve`, on loopback only (127.0.0.1), each bounded in requests and time.

Throughput (the default): starts the real server (`lesionlab serve RUN`, a separate process, on a free
127.0.0.1 port), waits for `/health`, then posts real HAM10000 images to `/predict`: first from one client
(the baseline), then from `--clients` concurrent clients (threads, one httpx2 connection each). Each phase
stops after `--requests` requests or `--time-limit` seconds, whichever comes first. Errors (non-200 answers
and failed connections) are counted, not hidden. The ratio column compares throughput with the one-client
baseline of the same run.

    .venv/bin/python benchmarks/load_serve.py runs/small --clients 4 --requests 200 --time-limit 20

Overload (`--overload`): a burst of `--large-uploads` simultaneous huge PNGs (7000x7000 by default, a smooth
image of ~160 KB, under the 50-megapixel limit) while `--clients` clients keep posting ordinary HAM10000
JPEGs, against two servers started in turn: one without limits (`--max-concurrent 0 --heavy-concurrent 0
--max-receiving-mb 0 --request-timeout 0 --full-decode`: every upload decodes at once, at full size) and
one with the default limits (the huge PNGs then go to the heavy lane, the JPEGs to the ordinary one). It
samples the server's resident memory every 20 ms and reports its peak, the ordinary requests' p50/p95/p99
latency, and the 200/503/failed counts of both kinds and of the web page (`GET /`, fetched every 100 ms
during the burst, as a person opening the page would), then the ratio of the two servers. A server whose
memory passes `--memory-cap-mb` is killed there and then (and reported so), so the test cannot exhaust the
machine. A phase ends when the burst is answered, or after `--time-limit` seconds.

    nice -n 19 .venv/bin/python benchmarks/load_serve.py runs/small --overload --clients 2 --time-limit 90
"""

from __future__ import annotations

import argparse
import io
import itertools
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx2
import numpy as np
import psutil
from PIL import Image

from lesionlab.data.readers.locate import resolve_data_path
from lesionlab.tables import Table, format_table

STARTUP_SECONDS = 600.0
IMAGE_COUNT = 16
RSS_SAMPLE_SECONDS = 0.02
NO_LIMITS = ("--max-concurrent", "0", "--heavy-concurrent", "0", "--max-receiving-mb", "0",
             "--request-timeout", "0", "--full-decode")


@dataclass(frozen=True)
class PhaseResult:
    """What one load phase measured."""

    clients: int
    latencies_ms: np.ndarray
    errors: int
    seconds: float

    @property
    def requests(self) -> int:
        return len(self.latencies_ms) + self.errors

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory or exported .onnx file to serve")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--requests", type=int, default=200, help="requests per phase at most (default 200)")
    parser.add_argument("--time-limit", type=float, default=20.0,
                        help="seconds per phase at most (default 20)")
    parser.add_argument("--data", help="dataset folder with images/ (default: ../shared/data/ham10000)")
    parser.add_argument("--threads", type=int, default=None, help="inference threads of the server")
    parser.add_argument("--overload", action="store_true",
                        help="the overload test: a burst of huge uploads plus ordinary traffic, with and "
                             "without the server's limits")
    parser.add_argument("--large-uploads", type=int, default=64,
                        help="huge uploads in the burst (default 64)")
    parser.add_argument("--large-size", type=int, default=7000,
                        help="width and height of each huge PNG (default 7000)")
    parser.add_argument("--memory-cap-mb", type=float, default=6000.0,
                        help="kill a server whose resident memory passes this (default 6000)")
    return parser.parse_args()


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(run: str, port: int, threads: int | None,
                 extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """Launch `lesionlab serve` (with `extra` flags) and wait until `/health` answers."""
    command = [sys.executable, "-m", "lesionlab", "serve", run, "--host", "127.0.0.1", "--port", str(port),
               *extra]
    if threads is not None:
        command += ["--threads", str(threads)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stderr.read().decode(errors='replace')}")
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                return server
        except httpx2.TransportError:
            time.sleep(0.2)
    server.terminate()
    raise SystemExit(f"server did not answer /health within {STARTUP_SECONDS:.0f} s")


def run_phase(url: str, images: list[tuple[str, bytes]], clients: int, max_requests: int,
              time_limit: float) -> PhaseResult:
    """`clients` threads post images until `max_requests` have been sent or `time_limit` has passed."""
    tickets = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    deadline = time.monotonic() + time_limit

    def client() -> None:
        with httpx2.Client(timeout=60.0) as session:
            while time.monotonic() < deadline:
                ticket = next(tickets)
                if ticket >= max_requests:
                    return
                name, data = images[ticket % len(images)]
                start = time.perf_counter()
                try:
                    response = session.post(f"{url}/predict", files={"file": (name, data, "image/jpeg")})
                    ok = response.status_code == 200
                except httpx2.HTTPError:
                    ok = False
                elapsed = (time.perf_counter() - start) * 1000.0
                with lock:
                    if ok:
                        latencies.append(elapsed)
                    else:
                        errors[0] += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return PhaseResult(clients, np.array(latencies), errors[0], time.perf_counter() - started)


def percentile_text(latencies_ms: np.ndarray, percentile: float) -> str:
    """A latency percentile for the table, or a dash when no request succeeded."""
    return f"{np.percentile(latencies_ms, percentile):.1f}" if len(latencies_ms) else "-"


def report(phases: list[PhaseResult]) -> str:
    """The table: per phase latency percentiles, throughput, errors and the ratio against one client."""
    baseline = phases[0].throughput
    rows = tuple(
        (f"{phase.clients} client(s)", str(phase.requests), str(phase.errors),
         percentile_text(phase.latencies_ms, 50), percentile_text(phase.latencies_ms, 99),
         f"{phase.throughput:.1f}", f"{phase.throughput / baseline:.2f}x" if baseline else "-")
        for phase in phases
    )
    headers = ("phase", "requests", "errors", "p50 ms", "p99 ms", "req/s", "vs 1 client")
    return format_table(Table(headers=headers, rows=rows))


class MemoryWatch:
    """Samples a process's resident memory in a thread; kills it past `cap_bytes`."""

    def __init__(self, process: subprocess.Popen[bytes], cap_bytes: float) -> None:
        self.process = psutil.Process(process.pid)
        self.cap_bytes = cap_bytes
        self.idle = self.process.memory_info().rss
        self.peak = self.idle
        self.killed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_SECONDS):
            try:
                rss = self.process.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            if rss > self.cap_bytes:
                self.killed = True
                self.process.kill()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class OverloadResult:
    """One server's answer to the overload: memory, ordinary latency, and status counts."""

    label: str
    idle_rss: int
    peak_rss: int
    killed: bool
    ordinary_ms: list[float]
    ordinary: dict[str, int]
    large: dict[str, int]
    page: dict[str, int]
    seconds: float


def huge_png(size: int) -> bytes:
    """A smooth size x size RGB PNG: few bytes to send, size*size pixels to decode."""
    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    pixels = np.empty((size, size, 3), dtype=np.uint8)
    pixels[..., 0] = ramp[None, :]
    pixels[..., 1] = ramp[:, None]
    pixels[..., 2] = 128
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def upload_outcome(session: httpx2.Client, url: str, name: str, data: bytes, kind: str) -> tuple[str, float]:
    """POST one upload; return '200', '503' or 'failed' (any other answer, or no answer) and the ms taken."""
    return timed_outcome(lambda: session.post(f"{url}/predict", files={"file": (name, data, kind)}))


def timed_outcome(request: Callable[[], httpx2.Response]) -> tuple[str, float]:
    """Send one request; return '200', '503' or 'failed' (any other answer, or no answer) and the ms taken."""
    start = time.perf_counter()
    try:
        status = request().status_code
        label = str(status) if status in (200, 503) else "failed"
    except httpx2.HTTPError:
        label = "failed"
    return label, (time.perf_counter() - start) * 1000.0


def overload_phase(label: str, url: str, server: subprocess.Popen[bytes], images: list[tuple[str, bytes]],
                   large: bytes, args: argparse.Namespace) -> OverloadResult:
    """Fire the burst and the ordinary traffic at one server, until the burst is answered or time is up."""
    watch = MemoryWatch(server, args.memory_cap_mb * 1e6)
    deadline = time.monotonic() + args.time_limit
    lock = threading.Lock()
    counts = {kind: {"200": 0, "503": 0, "failed": 0} for kind in ("large", "ordinary", "page")}
    ordinary_ms: list[float] = []
    burst_done = threading.Event()

    def record(kind: str, outcome: str, elapsed_ms: float) -> None:
        with lock:
            counts[kind][outcome] += 1
            if kind == "ordinary" and outcome == "200":
                ordinary_ms.append(elapsed_ms)

    def large_client() -> None:
        with httpx2.Client(timeout=args.time_limit) as session:
            start_line.wait()
            record("large", *upload_outcome(session, url, "huge.png", large, "image/png"))

    def ordinary_client(offset: int) -> None:
        with httpx2.Client(timeout=args.time_limit) as session:
            start_line.wait()
            for ticket in itertools.count(offset, args.clients):
                if burst_done.is_set() or time.monotonic() > deadline or ticket >= args.requests:
                    return
                name, data = images[ticket % len(images)]
                record("ordinary", *upload_outcome(session, url, name, data, "image/jpeg"))

    def page_client() -> None:
        """A person opening the web page during the burst: GET / every 100 ms."""
        with httpx2.Client(timeout=args.time_limit) as session:
            start_line.wait()
            while not burst_done.is_set() and time.monotonic() <= deadline:
                record("page", *timed_outcome(lambda: session.get(f"{url}/")))
                time.sleep(0.1)

    started = time.perf_counter()
    bursts = [threading.Thread(target=large_client, daemon=True) for _ in range(args.large_uploads)]
    ordinary = [threading.Thread(target=ordinary_client, args=(index,), daemon=True)
                for index in range(args.clients)]
    page = threading.Thread(target=page_client, daemon=True)
    until_burst_done = [*ordinary, page]
    start_line = threading.Barrier(len(bursts) + len(until_burst_done))
    for thread in [*bursts, *until_burst_done]:
        thread.start()
    for thread in bursts:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    burst_done.set()
    for thread in until_burst_done:
        thread.join(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
    seconds = time.perf_counter() - started
    watch.stop()
    with lock:
        answered = sum(counts["large"].values())
        counts["large"]["failed"] += args.large_uploads - answered  # still running at the deadline
        return OverloadResult(label, watch.idle, watch.peak, watch.killed, list(ordinary_ms),
                              dict(counts["ordinary"]), dict(counts["large"]), dict(counts["page"]), seconds)


def overload_report(results: list[OverloadResult], cap_mb: float) -> str:
    """The overload table, with the ratio of the limited server to the unlimited one."""
    def ms(values: list[float], percentile: float) -> str:
        return f"{np.percentile(values, percentile):.0f}" if values else "-"

    rows = tuple(
        (result.label, f"{result.idle_rss / 1e6:.0f}",
         f"{result.peak_rss / 1e6:.0f}" + (" (killed at cap)" if result.killed else ""),
         ms(result.ordinary_ms, 50), ms(result.ordinary_ms, 95), ms(result.ordinary_ms, 99),
         f"{result.ordinary['200']}/{result.ordinary['503']}/{result.ordinary['failed']}",
         f"{result.large['200']}/{result.large['503']}/{result.large['failed']}",
         f"{result.page['200']}/{result.page['503']}/{result.page['failed']}", f"{result.seconds:.0f}")
        for result in results
    )
    headers = ("server", "idle RSS MB", "peak RSS MB", "ordinary p50 ms", "ordinary p95 ms",
               "ordinary p99 ms", "ordinary 200/503/failed", "huge 200/503/failed", "web page 200/503/failed",
               "seconds")
    table = format_table(Table(headers=headers, rows=rows))
    unlimited, limited = results
    ratio = [f"peak RSS, limits / no limits: {limited.peak_rss / unlimited.peak_rss:.2f}x"]
    answered = {result.label: result.large["200"] + result.ordinary["200"] for result in results}
    ratio.append(f"requests answered 200, limits / no limits: {answered[limited.label]} / "
                 f"{answered[unlimited.label]}")
    if unlimited.killed:
        ratio.append(f"ordinary latency not compared: the server without limits was killed at the cap, after "
                     f"answering {len(unlimited.ordinary_ms)} ordinary request(s)")
    elif unlimited.ordinary_ms and limited.ordinary_ms:
        p95 = np.percentile(limited.ordinary_ms, 95) / np.percentile(unlimited.ordinary_ms, 95)
        ratio.append(f"ordinary p95, limits / no limits: {p95:.2f}x")
    note = (f"A server past {cap_mb:g} MB is killed by the test, so its peak is a lower bound and its "
            "remaining requests fail.")
    return "\n".join([table, "", *ratio, note])


def run_overload(args: argparse.Namespace, images: list[tuple[str, bytes]]) -> int:
    """Both servers, one after the other, under the same burst and ordinary traffic."""
    large = huge_png(args.large_size)
    print(f"huge upload: {args.large_size}x{args.large_size} PNG, {len(large) / 1e3:.0f} KB; "
          f"{args.large_uploads} at once, plus {args.clients} ordinary client(s)", flush=True)
    results = []
    for label, extra in (("no limits", NO_LIMITS), ("default limits", ())):
        port = free_port()
        server = start_server(args.run, port, args.threads, extra)
        try:
            results.append(overload_phase(label, f"http://127.0.0.1:{port}", server, images, large, args))
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    print(overload_report(results, args.memory_cap_mb))
    print(f"\nServers: lesionlab serve {args.run} on 127.0.0.1, one after the other; each phase ends when "
          f"the burst is answered or after {args.time_limit:g} s.")
    return 0


def main() -> int:
    args = parse_args()
    image_paths = sorted((resolve_data_path(args.data) / "images").glob("*.jpg"))[:IMAGE_COUNT]
    if not image_paths:
        raise SystemExit("no JPEG images found; pass --data with a folder holding images/")
    images = [(path.name, path.read_bytes()) for path in image_paths]
    if args.overload:
        return run_overload(args, images)
    port = free_port()
    server = start_server(args.run, port, args.threads)
    url = f"http://127.0.0.1:{port}"
    try:
        phases = [run_phase(url, images, clients, args.requests, args.time_limit)
                  for clients in (1, args.clients)]
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(report(phases))
    print(f"\nServer: lesionlab serve {args.run} on {url}; each phase stops after {args.requests} requests "
          f"or {args.time_limit:g} s. Ratio: throughput against the 1-client phase of this run.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
