"""The `lesionlab` command: one argparse parser whose verbs live in `lesionlab.commands.<verb>`.

The CLI holds no logic of its own: each verb module adds its sub-parser and a handler calling the library.
Exit codes (`lesionlab.errors`): 0 success; 1 some inputs bad, the rest done (the handler returns it); 2 a
user error (`LesionlabError`, printed as one clear message, never a traceback; argparse uses 2 for bad
arguments too); 3 a result refused by its quality check (the handler returns it); 4 a bug (any other
exception: its traceback and a request to report it); 130 or 143 training stopped by SIGINT or SIGTERM
(128 + the signal number), with the command that resumes it. A run stopped by a failed write (disk full,
folder read-only) exits 2 and prints that command too.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from lesionlab import __version__
from lesionlab.errors import INTERNAL_ERROR, USER_ERROR, DiskWriteError, LesionlabError
from lesionlab.training.interrupt import TrainingStopped, resume_command

COMMAND_MODULES: tuple[str, ...] = (
    "data",
    "train",
    "evaluate",
    "run",
    "study",
    "cv",
    "predict",
    "export",
    "bench",
    "serve",
)


BUG_REPORT = (
    "lesionlab {command}: internal error: this is a bug in lesionlab {version}, not a problem with your "
    "input. Please report it with the traceback above and the command that gave it."
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
    """Parse arguments, run the chosen verb's handler, and map how it ended to the exit codes above."""
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
    except Exception:
        traceback.print_exc()
        print(BUG_REPORT.format(command=args.command, version=__version__), file=sys.stderr)
        return INTERNAL_ERROR
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
