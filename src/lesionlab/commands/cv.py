"""`lesionlab cv`: lesion-grouped K-fold cross-validation of one recipe (`lesionlab.crossval`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lesionlab.commands._common import (
    add_data_arguments,
    add_recipe_arguments,
    add_run_location_arguments,
    add_tta_arguments,
    recipe_overrides,
)

DEFAULT_FOLDS = 5


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `cv` verb."""
    parser = subparsers.add_parser(
        "cv",
        help="cross-validate a recipe on K lesion-grouped folds of train + val; the folds as one ensemble",
        description=(
            "Pool the split's train and val parts, cut them into K lesion-grouped, class-stratified folds, "
            "and train the recipe K times into runs/<name>/fold-<k>/, each validating on its own fold; the "
            "test part stays untouched by every fold. Then score every train + val image once, out of fold "
            "(the figure to choose recipes by), score the K models as one ensemble on the test part, and "
            "write cv.md and model.json. Finished folds are skipped and stopped ones resumed, so rerunning "
            "the command continues it; --fold trains only some folds (e.g. one per session or job)."
        ),
    )
    add_data_arguments(parser)
    add_recipe_arguments(parser)
    add_run_location_arguments(parser)
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS,
                        help=f"number of folds (default: {DEFAULT_FOLDS})")
    parser.add_argument("--split", help="an existing split.csv whose train + val parts are cut into folds "
                        "and whose test part is kept (default: a new lesion-grouped 70/15/15 split, the "
                        "recipe's seed, as `lesionlab run` makes)")
    parser.add_argument("--fold", type=int, nargs="+", default=(), metavar="K",
                        help="train just these folds, then stop (score with a later command once all are "
                        "trained)")
    parser.add_argument("--compare", type=Path, metavar="CV_DIR",
                        help="once scored, compare the out-of-fold figures with another cross-validation "
                        "of the same split (a paired bootstrap interval of each difference)")
    add_tta_arguments(parser)
    parser.add_argument("--no-tta", action="store_true",
                        help="score on single views; by default with test-time augmentation, as `run` does")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Set up or continue the cross-validation, train its folds, and score it once all are trained."""
    from lesionlab.commands.run import test_views
    from lesionlab.crossval import compare_cv, prepare_cv, score_cv, train_folds
    from lesionlab.data.readers import read_dataset
    from lesionlab.errors import ConfigError
    from lesionlab.pipeline import training_split
    from lesionlab.tables import format_table
    from lesionlab.training import distributed
    from lesionlab.training.recipe import load_recipe, scale_epochs

    if not args.name:
        raise ConfigError("lesionlab cv needs --name NAME: the folder runs/NAME/ that a rerun continues")
    recipe = load_recipe(args.config, recipe_overrides(args))
    if args.epochs_scale is not None:
        recipe = scale_epochs(recipe, args.epochs_scale)
    table = read_dataset(args.data, args.format)
    split = training_split(table, args.split, args.subset, recipe.seed)
    cv = prepare_cv(args.runs_dir / args.name, recipe, table, split, args.folds, given=bool(args.split))
    train_folds(cv, tuple(args.fold))
    if not distributed.is_main():
        return 0
    remaining = cv.unfinished()
    if remaining:
        print(f"{cv.folder}: fold(s) {', '.join(map(str, remaining))} still to train; rerun the command "
              f"without --fold (or with them) to train them and score the cross-validation.")
        return 0
    score_cv(cv, test_views(args))
    print((cv.folder / "cv.md").read_text(encoding="utf-8"))
    if args.compare:
        print(format_table(compare_cv(cv.folder, args.compare)))
    return 0
