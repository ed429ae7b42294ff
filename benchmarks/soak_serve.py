"""Soak test of `lesionlab serve`: minutes of mixed good and bad uploads on loopback, watching for leaks.

Starts the real server (`lesionlab serve RUN`, a separate process on a free 127.0.0.1 port, default limits),
then `--clients` clients post uploads for `--seconds` seconds, each drawn at random (seeded) from a fixed
mix: real HAM10000 JPEGs, a large PNG that decodes reduced, and every kind of bad upload the service
refuses (empty, text named .jpg, a truncated JPEG, an upload over the size limit, a pixel bomb over the
50-megapixel limit, a request without a file). Every kind has the one status it must get; anything else is
counted as unexpected, by kind and status.

The server's resident memory is sampled once a second. Its start value is taken after a warm-up (the first
`--warmup` requests, which load lazily initialised code and buffers), its end value when the clients stop;
growth beyond `--rss-margin-mb` fails the test. The exit status is 0 when memory stayed within the margin
and every answer was the expected one, 1 otherwise.

    nice -n 19 .venv/bin/python benchmarks/soak_serve.py runs/default --seconds 180 --clients 4
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # load_serve.py beside this script: one server start
from lesionlab.data.readers.locate import resolve_data_path
from lesionlab.tables import Table, format_table
from load_serve import free_port, huge_png, start_server

IMAGE_COUNT = 16
RSS_SAMPLE_SECONDS = 1.0
UPLOAD_LIMIT_BYTES = 10 * 1000 * 1000  # `lesionlab serve`'s default --max-upload-mb


@dataclass(frozen=True)
class UploadKind:
    """One kind of upload in the mix: how to send it, how often, and the status it must get."""

    name: str
    expected: int
    weight: float
    files: Callable[[random.Random], dict[str, tuple[str, bytes, str]] | None]


@dataclass
class Tally:
    """Answers and latencies of one kind."""

    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory or exported .onnx file to serve")
    parser.add_argument("--seconds", type=float, default=180.0,
                        help="how long the clients post (default 180)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--warmup", type=int, default=20,
                        help="requests before the start RSS is taken (default 20)")
    parser.add_argument("--rss-margin-mb", type=float, default=100.0,
                        help="largest allowed RSS growth from start to end, in MB (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the upload mix (default 0)")
    parser.add_argument("--data", help="dataset folder with images/ (default: ../shared/data/ham10000)")
    parser.add_argument("--threads", type=int, default=None, help="inference threads of the server")
    return parser.parse_args(argv)


def upload_mix(jpegs: list[tuple[str, bytes]]) -> list[UploadKind]:
    """The uploads, each with the status `lesionlab serve` answers it with."""
    large = huge_png(3000)
    bomb = io.BytesIO()
    Image.new("1", (8000, 8000)).save(bomb, format="PNG")  # 64 MP, over the 50-megapixel limit; quick to make
    oversized = random.Random(1).randbytes(UPLOAD_LIMIT_BYTES + 500_000)
    truncated = [(name, data[: len(data) // 2]) for name, data in jpegs]

    def pick(images: list[tuple[str, bytes]], kind: str) -> Callable[[random.Random], dict[str, tuple]]:
        return lambda rng: {"file": (*rng.choice(images), kind)}

    def fixed(name: str, data: bytes, kind: str) -> Callable[[random.Random], dict[str, tuple]]:
        return lambda rng: {"file": (name, data, kind)}

    return [
        UploadKind("good JPEG", 200, 0.50, pick(jpegs, "image/jpeg")),
        UploadKind("large PNG 3000x3000", 200, 0.08, fixed("large.png", large, "image/png")),
        UploadKind("empty file", 400, 0.07, fixed("empty.jpg", b"", "image/jpeg")),
        UploadKind("text named .jpg", 415, 0.07, fixed("notes.jpg", b"not an image\n" * 40, "image/jpeg")),
        UploadKind("truncated JPEG", 422, 0.07, pick(truncated, "image/jpeg")),
        UploadKind("over 10 MB", 413, 0.07, fixed("big.jpg", oversized, "image/jpeg")),
        UploadKind("pixel bomb 8000x8000", 422, 0.07, fixed("bomb.png", bomb.getvalue(), "image/png")),
        UploadKind("no file field", 422, 0.07, lambda rng: None),
    ]


class RssSampler:
    """The server's resident memory once a second, with the time of each sample."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        return self.process.memory_info().rss

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(RSS_SAMPLE_SECONDS):
            try:
                self.samples.append((time.monotonic() - start, self.now()))
            except psutil.Error:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def post(session: httpx2.Client, url: str, kind: UploadKind, rng: random.Random) -> tuple[str, float]:
    """Send one upload of `kind`; return its status (or `no answer`) and the milliseconds it took."""
    files = kind.files(rng)
    start = time.perf_counter()
    try:
        if files is None:
            status = str(session.post(f"{url}/predict", data={"note": "no file"}).status_code)
        else:
            status = str(session.post(f"{url}/predict", files=files).status_code)
    except httpx2.HTTPError as error:
        status = f"no answer ({type(error).__name__})"
    return status, (time.perf_counter() - start) * 1000.0


def soak(url: str, mix: list[UploadKind], args: argparse.Namespace, sampler: RssSampler
         ) -> tuple[dict[str, Tally], int, int, float]:
    """Post the mix from `args.clients` threads for `args.seconds`; return the tallies, start and end RSS, and
    the seconds the clients ran."""
    tallies = {kind.name: Tally() for kind in mix}
    lock = threading.Lock()
    sent = [0]
    warm = threading.Event()
    start_rss = [0]
    deadline = time.monotonic() + args.seconds
    weights = [kind.weight for kind in mix]

    def client(index: int) -> None:
        rng = random.Random(args.seed * 1000 + index)
        with httpx2.Client(timeout=120.0) as session:
            while time.monotonic() < deadline:
                kind = rng.choices(mix, weights)[0]
                status, elapsed = post(session, url, kind, rng)
                with lock:
                    tallies[kind.name].statuses[status] += 1
                    if status == str(kind.expected):
                        tallies[kind.name].latencies_ms.append(elapsed)
                    sent[0] += 1
                    if sent[0] == args.warmup:
                        start_rss[0] = sampler.now()
                        warm.set()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(index,)) for index in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    end_rss = sampler.now()
    if not warm.is_set():
        raise SystemExit(f"only {sent[0]} requests in {seconds:.0f} s, fewer than --warmup {args.warmup}; "
                         "run longer")
    return tallies, start_rss[0], end_rss, seconds


def percentile(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):.0f}" if values else "-"


def report(mix: list[UploadKind], tallies: dict[str, Tally]) -> tuple[str, int]:
    """The table by kind, and the number of unexpected answers."""
    rows = []
    unexpected = 0
    every: list[float] = []
    for kind in mix:
        tally = tallies[kind.name]
        wrong = {status: count for status, count in tally.statuses.items() if status != str(kind.expected)}
        unexpected += sum(wrong.values())
        every += tally.latencies_ms
        rows.append((kind.name, str(sum(tally.statuses.values())), str(kind.expected),
                     str(tally.statuses[str(kind.expected)]),
                     ", ".join(f"{status}: {count}" for status, count in sorted(wrong.items())) or "0",
                     percentile(tally.latencies_ms, 50), percentile(tally.latencies_ms, 95),
                     percentile(tally.latencies_ms, 99)))
    total = sum(sum(tally.statuses.values()) for tally in tallies.values())
    rows.append(("all", str(total), "", str(total - unexpected), str(unexpected), percentile(every, 50),
                 percentile(every, 95), percentile(every, 99)))
    headers = ("upload", "sent", "expected", "as expected", "unexpected", "p50 ms", "p95 ms", "p99 ms")
    return format_table(Table(headers=headers, rows=tuple(rows))), unexpected


def rss_trend(samples: list[tuple[float, int]], parts: int = 4) -> str:
    """RSS at evenly spaced points of the run, so a slow climb shows even within the margin."""
    if not samples:
        return "-"
    picks = [samples[min(len(samples) - 1, round(i * (len(samples) - 1) / parts))] for i in range(parts + 1)]
    return ", ".join(f"{seconds:.0f} s: {rss / 1e6:.0f}" for seconds, rss in picks)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    image_paths = sorted((resolve_data_path(args.data) / "images").glob("*.jpg"))[:IMAGE_COUNT]
    if not image_paths:
        raise SystemExit("no JPEG images found; pass --data with a folder holding images/")
    mix = upload_mix([(path.name, path.read_bytes()) for path in image_paths])
    port = free_port()
    server = start_server(args.run, port, args.threads)
    sampler = RssSampler(server.pid)
    idle_rss = sampler.now()
    try:
        tallies, start_rss, end_rss, seconds = soak(f"http://127.0.0.1:{port}", mix, args, sampler)
        peak_rss = max([rss for _, rss in sampler.samples] + [end_rss])
    finally:
        sampler.stop()
        server.terminate()
        server.wait(timeout=30)
    table, unexpected = report(mix, tallies)
    growth_mb = (end_rss - start_rss) / 1e6
    print(table)
    print(f"\nserver RSS MB: idle {idle_rss / 1e6:.0f}, start (after {args.warmup} requests) "
          f"{start_rss / 1e6:.0f}, end {end_rss / 1e6:.0f}, peak {peak_rss / 1e6:.0f}; growth start to end "
          f"{growth_mb:+.0f} MB (margin {args.rss_margin_mb:g} MB)")
    print(f"RSS MB over the run: {rss_trend(sampler.samples)}")
    print(f"\nServer: lesionlab serve {args.run} (default limits) on 127.0.0.1; {args.clients} clients for "
          f"{seconds:.0f} s, upload mix seed {args.seed}.")
    verdict = []
    if growth_mb > args.rss_margin_mb:
        verdict.append(f"memory grew {growth_mb:.0f} MB, beyond the {args.rss_margin_mb:g} MB margin")
    if unexpected:
        verdict.append(f"{unexpected} unexpected answer(s)")
    print("FAILED: " + "; ".join(verdict) if verdict else "PASSED: memory within the margin, every answer "
          "as expected")
    return 1 if verdict else 0


if __name__ == "__main__":
    sys.exit(main())
