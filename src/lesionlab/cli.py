"""The `lesionlab` command: one argparse parser whose verbs live in `lesionlab.commands.<verb>`.

The CLI holds no logic of its own: each verb module adds its sub-parser and a handler calling the library.
Exit codes: 0 success; 1 a bug (an unexpected exception, with its traceback); 2 a user error
(`LesionlabError`, printed as one clear message, never a traceback; argparse uses 2 for bad arguments too);
130 or 143 training stopped by SIGINT or SIGTERM (128 + the signal number), with the command that resumes it.
A run stopped by a failed write (disk full, folder read-only) exits 2 and prints that command too.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from lesionlab import __version__
from lesionlab.errors import USER_ERROR, DiskWriteError, LesionlabError
from lesionlab.training.interrupt import TrainingStopped, resume_command

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
    parser.add_argument("--version", action="version", version=f"lesionlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"lesionlab.commands.{name}").register(subparsers)
    return parser


def print_resume_command(verb: str, argv: Sequence[str] | None, run_dir: Path) -> None:
    """Tell the user how to continue a run that stopped before its end and can resume."""
    command = resume_command(verb, sys.argv[1:] if argv is None else argv, run_dir)
    print(f"Resume it with:\n  {command}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the chosen verb's handler, and turn user errors into a message and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except LesionlabError as error:
        print(f"lesionlab {args.command}: error: {error}", file=sys.stderr)
        if isinstance(error, DiskWriteError) and error.run_dir is not None:
            print_resume_command(args.command, argv, error.run_dir)
        return USER_ERROR
    except TrainingStopped as stop:
        print(f"lesionlab {args.command}: {stop}.", file=sys.stderr)
        if stop.run_dir is not None:
            print_resume_command(args.command, argv, stop.run_dir)
        return stop.exit_code
    except KeyboardInterrupt:
        print(f"lesionlab {args.command}: interrupted; completed work is saved.", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
