"""The `lesionlab` command: one argparse parser whose verbs live in `lesionlab.commands.<verb>`.

The CLI holds no logic of its own: each verb module adds its sub-parser and a handler calling the library.
User errors (`LesionlabError`) are printed as one clear message with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from lesionlab.errors import LesionlabError

COMMAND_MODULES: tuple[str, ...] = (
    "data",
    "train",
    "evaluate",
    "run",
    "study",
    "predict",
    "export",
    "bench",
    "serve",
)


def build_parser() -> argparse.ArgumentParser:
    """Assemble the parser from every command module."""
    parser = argparse.ArgumentParser(
        prog="lesionlab",
        description="Train, evaluate, explain and deploy dermoscopic skin-lesion classifiers "
        "(HAM10000, 7 classes).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"lesionlab.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the chosen verb's handler, and turn user errors into a message and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except LesionlabError as error:
        print(f"lesionlab {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lesionlab {args.command}: interrupted; completed work is saved.", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
