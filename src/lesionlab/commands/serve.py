"""`lesionlab serve RUN`: the web API and page over a run directory or an exported .onnx file."""

from __future__ import annotations

import argparse

from lesionlab.commands._common import add_model_arguments, load_model_from_arguments

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` verb."""
    parser = subparsers.add_parser(
        "serve", help="serve predictions over HTTP with a web page (FastAPI + uvicorn)",
        description="POST /predict and /explain, GET /health, a page at / and API docs at /docs. The model "
                    "loads once at start-up. A research tool, not a diagnosis.",
    )
    parser.add_argument("run", metavar="RUN",
                        help="run directory (PyTorch, can explain) or exported .onnx file")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload in MB")
    add_model_arguments(parser)
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Load the model, build the app and run uvicorn until interrupted."""
    import uvicorn

    from lesionlab.errors import ConfigError
    from lesionlab.serve.app import create_app

    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb {args.max_upload_mb}: must be positive")
    predictor = load_model_from_arguments(args)
    app = create_app(predictor, max_upload_bytes=int(args.max_upload_mb * 1e6))
    print(f"lesionlab serve: {predictor.model_id} ({predictor.backend}) on http://{args.host}:{args.port}/ "
          f"(API docs at /docs)")
    if args.host not in LOOPBACK_HOSTS:
        print("lesionlab serve: listening beyond this machine; there is no authentication, so put it behind "
              "one if the network is not trusted.")
    uvicorn.run(app, host=args.host, port=args.port)
    return 0
