"""`lesionlab train`: run a recipe into a run directory, or resume one; ends with a per-stage summary."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from lesionlab.commands._common import (
    add_data_arguments,
    add_recipe_arguments,
    add_resume_argument,
    add_run_location_arguments,
    recipe_overrides,
    reject_options_with_resume,
    resumed_run_dir,
)

RESUME_CONFLICTS = ("config", "split", "set", "image_size", "epochs_scale", "subset", "workers", "precision",
                    "tensorboard", "mlflow")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` verb."""
    parser = subparsers.add_parser(
        "train",
        help="train a model from a recipe (two-stage transfer learning by default)",
        description="Train a recipe (configs/default.yaml unless --config) into runs/<name>/. Without "
        "--split, a lesion-grouped split (val 0.15, test 0.15, the recipe's seed) is made and "
        "saved in the run folder; training never reads its test part.",
    )
    add_data_arguments(parser)
    add_recipe_arguments(parser)
    add_run_location_arguments(parser)
    parser.add_argument("--split", help="an existing split.csv (from `lesionlab data split`)")
    add_resume_argument(parser)
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Resolve recipe, data and split, train, and print the summary table."""
    from lesionlab.data.readers import read_dataset
    from lesionlab.data.split import read_split
    from lesionlab.pipeline import training_split
    from lesionlab.tracking import check_available
    from lesionlab.training.recipe import load_recipe, scale_epochs
    from lesionlab.training.runner import summary_table, train_run

    resumed = resumed_run_dir(args)
    if resumed is not None:
        reject_options_with_resume(args, RESUME_CONFLICTS, "recipe and split")
        run_dir = resumed
        recipe = load_recipe(run_dir / "config.yaml")
        table = read_dataset(args.data or _recorded_data_root(run_dir), args.format)
        split = read_split(run_dir / "split.csv", table)
        train_run(recipe, table, split, run_dir, resume=True)
    else:
        recipe = load_recipe(args.config, recipe_overrides(args))
        if args.epochs_scale is not None:
            recipe = scale_epochs(recipe, args.epochs_scale)
        table = read_dataset(args.data, args.format)
        split = training_split(table, args.split, args.subset, recipe.seed)
        check_available(recipe.tracking)
        name = args.name or f"{recipe.arch}-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir = Path(args.runs_dir) / name
        train_run(recipe, table, split, run_dir)
    print(f"\nrun: {run_dir}\n{summary_table(run_dir)}")
    return 0


def _recorded_data_root(run_dir: Path) -> str | None:
    """The dataset folder a run was started on, from its run.json (so --resume needs no --data)."""
    import json

    try:
        return json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["dataset"]["root"]
    except (OSError, ValueError, KeyError):
        return None
