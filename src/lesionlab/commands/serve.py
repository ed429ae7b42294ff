"""`lesionlab serve RUN`: the web API and page over a run directory or an exported .onnx file."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from lesionlab.commands._common import add_model_arguments, load_model_from_arguments

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
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload in MB")
    parser.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                        help="uploads decoded and classified at once (default: one per usable CPU core; "
                             "0: no bound)")
    parser.add_argument("--max-queue", type=int, default=None, metavar="N",
                        help="uploads waiting for a free slot; beyond them the answer is 503 with "
                             "Retry-After (default: twice --max-concurrent)")
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
    for flag, value in (("--max-concurrent", args.max_concurrent), ("--max-queue", args.max_queue),
                        ("--request-timeout", args.request_timeout)):
        if value is not None and value < 0:
            raise ConfigError(f"{flag} {value}: must be 0 or more")
    predictor = load_model_from_arguments(args)
    limits = work_limits(args, predictor.preprocessing.input_size)
    app = create_app(predictor, max_upload_bytes=int(args.max_upload_mb * 1e6), limits=limits)
    print(f"lesionlab serve: {predictor.model_id} ({predictor.backend}) on http://{args.host}:{args.port}/ "
          f"(API docs at /docs)")
    if args.host not in LOOPBACK_HOSTS:
        print("lesionlab serve: listening beyond this machine; there is no authentication, so put it behind "
              "one if the network is not trusted.")
    print(f"lesionlab serve: {describe_limits(limits)}")
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


def work_limits(args: argparse.Namespace, input_size: int) -> WorkLimits:
    """The service's limits from the flags, over `WorkLimits.defaults`."""
    from lesionlab.serve.limits import WorkLimits

    defaults = WorkLimits.defaults(input_size)
    workers = defaults.workers if args.max_concurrent is None else args.max_concurrent
    queue = 2 * workers if args.max_queue is None else args.max_queue
    timeout = defaults.timeout_s if args.request_timeout is None else args.request_timeout
    return WorkLimits(workers=workers, queue=queue, timeout_s=timeout,
                      decode_min_size=None if args.full_decode else defaults.decode_min_size)


def describe_limits(limits: WorkLimits) -> str:
    """The limits in one line, printed at start-up."""
    bound = (f"{limits.workers} upload(s) at once, {limits.queue} waiting, 503 beyond"
             if limits.workers else "no bound on uploads at once")
    timeout = f"{limits.timeout_s:g} s per request" if limits.timeout_s else "no request timeout"
    decode = (f"decoding reduced to {limits.decode_min_size} px a side" if limits.decode_min_size
              else "full-size decoding")
    return f"{bound}; {timeout}; {decode}"
