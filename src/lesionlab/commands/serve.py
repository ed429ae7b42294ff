"""`lesionlab serve RUN`: the web API and page over a run directory or an exported .onnx file."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from lesionlab.commands._common import add_model_arguments, load_model_from_arguments
from lesionlab.serve.defaults import (
    DEFAULT_HEAVY_PIXELS,
    DEFAULT_HEAVY_QUEUE,
    DEFAULT_HEAVY_WORKERS,
    DEFAULT_MAX_UPLOAD_MB,
    RECEIVING_UPLOADS,
)

if TYPE_CHECKING:
    from lesionlab.serve.limits import WorkLimits

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` verb."""
    parser = subparsers.add_parser(
        "serve", help="serve predictions over HTTP with a web page (FastAPI + uvicorn)",
        description="POST /predict and /explain, GET /health, a page at / and API docs at /docs. The model "
                    "loads once at start-up. A research tool, not a diagnosis.",
    )
    parser.add_argument("run", metavar="RUN",
                        help="run directory (PyTorch, can explain), exported .onnx file or model.json")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help="largest accepted upload in MB (default: %(default)g)")
    parser.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                        help="ordinary uploads decoded and classified at once (default: one per usable CPU "
                             "core; 0: no bound)")
    parser.add_argument("--max-queue", type=int, default=None, metavar="N",
                        help="ordinary uploads waiting for a free slot; beyond them the answer is 503 with "
                             "Retry-After (default: twice --max-concurrent)")
    parser.add_argument("--heavy-megapixels", type=float, default=DEFAULT_HEAVY_PIXELS / 1e6, metavar="MP",
                        help="uploads with more megapixels than this (read from the image header) run in "
                             "the heavy lane, which ordinary uploads never wait behind (default "
                             f"{DEFAULT_HEAVY_PIXELS / 1e6:g})")
    parser.add_argument("--heavy-concurrent", type=int, default=DEFAULT_HEAVY_WORKERS, metavar="N",
                        help="heavy uploads decoded and classified at once (default "
                             f"{DEFAULT_HEAVY_WORKERS}; 0: no bound)")
    parser.add_argument("--heavy-queue", type=int, default=DEFAULT_HEAVY_QUEUE, metavar="N",
                        help="heavy uploads waiting for a free slot; beyond them the answer is 503 with "
                             f"Retry-After (default {DEFAULT_HEAVY_QUEUE})")
    parser.add_argument("--max-receiving-mb", type=float, default=None, metavar="MB",
                        help="upload bodies received at once, in MB by their Content-Length; beyond it the "
                             "answer is 503 before the body is read (default: "
                             f"{RECEIVING_UPLOADS} times --max-upload-mb; 0: no bound)")
    parser.add_argument("--request-timeout", type=float, default=None, metavar="SECONDS",
                        help="answer 503 to an upload not done in this time, waiting included (default 30; "
                             "0: none)")
    parser.add_argument("--full-decode", action="store_true",
                        help="decode uploads at full resolution (default: larger images decode reduced to "
                             "four times the model's input size a side, bounding memory per request)")
    add_model_arguments(parser)
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Load the model, build the app and run uvicorn until interrupted."""
    import uvicorn

    from lesionlab.errors import ConfigError
    from lesionlab.serve.app import create_app

    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb {args.max_upload_mb}: must be positive")
    if args.heavy_megapixels <= 0:
        raise ConfigError(f"--heavy-megapixels {args.heavy_megapixels}: must be positive")
    for flag, value in (("--max-concurrent", args.max_concurrent), ("--max-queue", args.max_queue),
                        ("--heavy-concurrent", args.heavy_concurrent), ("--heavy-queue", args.heavy_queue),
                        ("--max-receiving-mb", args.max_receiving_mb),
                        ("--request-timeout", args.request_timeout)):
        if value is not None and value < 0:
            raise ConfigError(f"{flag} {value}: must be 0 or more")
    predictor = load_model_from_arguments(args)
    max_upload_bytes = int(args.max_upload_mb * 1e6)
    limits = work_limits(args, predictor.preprocessing.input_size, max_upload_bytes)
    app = create_app(predictor, max_upload_bytes=max_upload_bytes, limits=limits)
    print(f"lesionlab serve: {predictor.model_id} ({predictor.backend}) on http://{args.host}:{args.port}/ "
          f"(API docs at /docs)")
    if args.host not in LOOPBACK_HOSTS:
        print("lesionlab serve: listening beyond this machine; there is no authentication, so put it behind "
              "one if the network is not trusted.")
    print(f"lesionlab serve: {describe_limits(limits)}")
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


def work_limits(args: argparse.Namespace, input_size: int, max_upload_bytes: int) -> WorkLimits:
    """The service's limits from the flags, over `WorkLimits.defaults`."""
    from lesionlab.serve.limits import WorkLimits

    defaults = WorkLimits.defaults(input_size, max_upload_bytes)
    workers = defaults.workers if args.max_concurrent is None else args.max_concurrent
    queue = 2 * workers if args.max_queue is None else args.max_queue
    timeout = defaults.timeout_s if args.request_timeout is None else args.request_timeout
    receiving = (defaults.receiving_bytes if args.max_receiving_mb is None
                 else int(args.max_receiving_mb * 1e6))
    return WorkLimits(workers=workers, queue=queue, timeout_s=timeout,
                      decode_min_size=None if args.full_decode else defaults.decode_min_size,
                      heavy_pixels=int(args.heavy_megapixels * 1e6), heavy_workers=args.heavy_concurrent,
                      heavy_queue=args.heavy_queue, receiving_bytes=receiving)


def describe_limits(limits: WorkLimits) -> str:
    """The limits in one line, printed at start-up."""
    ordinary = lane_text(limits.workers, limits.queue)
    heavy = lane_text(limits.heavy_workers, limits.heavy_queue)
    receiving = (f"at most {limits.receiving_bytes / 1e6:g} MB of uploads received at once"
                 if limits.receiving_bytes else "no bound on uploads received at once")
    timeout = f"{limits.timeout_s:g} s per request" if limits.timeout_s else "no request timeout"
    decode = (f"decoding reduced to {limits.decode_min_size} px a side" if limits.decode_min_size
              else "full-size decoding")
    return (f"ordinary uploads: {ordinary}; uploads over {limits.heavy_pixels / 1e6:g} megapixels: {heavy}; "
            f"{receiving}; {timeout}; {decode}")


def lane_text(workers: int, queue: int) -> str:
    """One lane's bound in words."""
    return f"{workers} at once, {queue} waiting, 503 beyond" if workers else "no bound"
