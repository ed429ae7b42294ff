"""`lesionlab study CONFIG`: several recipes on one shared split, compared in one table."""

from __future__ import annotations

import argparse
from pathlib import Path

from lesionlab.commands._common import add_data_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="run a list of recipes on one shared split and compare them",
        description="Train and evaluate every run of a study file on one lesion-grouped split; finished "
        "runs are skipped and interrupted ones resumed, so rerunning the command completes a study. "
        "Writes study.md, study.csv and study.png into RUNS_DIR/study-<name>/.",
    )
    parser.add_argument("config", help="a study file, e.g. configs/study-freeze.yaml (or its name)")
    add_data_arguments(parser)
    parser.add_argument(
        "--runs-dir", type=Path, default=Path("runs"), help="where the study folder goes (default: runs)"
    )
    parser.add_argument("--image-size", type=int, help="budget: train and evaluate every run at this size")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="budget: scale every stage's epochs")
    parser.add_argument(
        "--subset", type=int, help="budget: a class-stratified, lesion-grouped subset of about N images"
    )
    parser.add_argument("--only", nargs="+", default=(), metavar="RUN", help="run just these runs")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from lesionlab.study import Budget, run_study

    budget = Budget(image_size=args.image_size, epochs_scale=args.epochs_scale, subset=args.subset)
    folder = run_study(
        args.config,
        data=args.data,
        fmt=args.format,
        runs_dir=args.runs_dir,
        budget=budget,
        only=tuple(args.only),
    )
    print((folder / "study.md").read_text(encoding="utf-8"))
    return 0
