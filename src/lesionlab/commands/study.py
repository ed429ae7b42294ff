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
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe key in every run, before each run's own `set` (repeatable; recorded in the "
        "study folder like the budget), e.g. --set stages.1.mixing=null",
    )
    parser.add_argument("--only", nargs="+", default=(), metavar="RUN", help="run just these runs")
    separate = parser.add_mutually_exclusive_group()
    separate.add_argument(
        "--jobs", action="store_true",
        help="train each run as its own job: make the study folder and its split, and print one "
        "`lesionlab train` command per run (train nothing)",
    )
    separate.add_argument(
        "--collect", action="store_true",
        help="build the study's table and ensembles from runs trained by those commands (train nothing; "
        "a missing or unfinished run is refused, by name)",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from lesionlab.study import Budget, collect_study, prepare_jobs, run_study
    from lesionlab.training import distributed

    budget = Budget(image_size=args.image_size, epochs_scale=args.epochs_scale, subset=args.subset,
                    overrides=tuple(args.overrides))
    where = {"data": args.data, "fmt": args.format, "runs_dir": args.runs_dir, "only": tuple(args.only)}
    if args.jobs:
        print("\n".join(prepare_jobs(args.config, budget=budget, **where)))
        return 0
    if args.collect:
        folder = collect_study(args.config, budget=None if budget == Budget() else budget, **where)
    else:
        folder = run_study(args.config, budget=budget, **where)
    if distributed.is_main():  # under torchrun the others end after training; rank 0 writes the table
        print((folder / "study.md").read_text(encoding="utf-8"))
    return 0
