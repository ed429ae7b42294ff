"""Load test of `lesionlab serve`: latency and throughput under concurrent clients, against one client.

Starts the real server (`lesionlab serve RUN`, a separate process, on a free 127.0.0.1 port), waits for
`/health`, then posts real HAM10000 images to `/predict`: first from one client (the baseline), then from
`--clients` concurrent clients (threads, one httpx2 connection each). Each phase stops after `--requests`
requests or `--time-limit` seconds, whichever comes first. Errors (non-200 answers and failed connections)
are counted, not hidden. The ratio column compares throughput with the one-client baseline of the same run.

    .venv/bin/python benchmarks/load_serve.py runs/small --clients 4 --requests 200 --time-limit 20
"""

from __future__ import annotations

import argparse
import itertools
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import httpx2
import numpy as np

from lesionlab.data.readers import resolve_data_path
from lesionlab.evaluation.report import Table, format_table

STARTUP_SECONDS = 120.0
IMAGE_COUNT = 16


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
    return parser.parse_args()


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(run: str, port: int, threads: int | None) -> subprocess.Popen[bytes]:
    """Launch `lesionlab serve` and wait until `/health` answers."""
    command = [sys.executable, "-m", "lesionlab", "serve", run, "--host", "127.0.0.1", "--port", str(port)]
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


def main() -> int:
    args = parse_args()
    image_paths = sorted((resolve_data_path(args.data) / "images").glob("*.jpg"))[:IMAGE_COUNT]
    if not image_paths:
        raise SystemExit("no JPEG images found; pass --data with a folder holding images/")
    images = [(path.name, path.read_bytes()) for path in image_paths]
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
