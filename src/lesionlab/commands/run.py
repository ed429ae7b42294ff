"""`lesionlab run`: the main job in one command: split, train, calibrate, evaluate the test part, report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from lesionlab.commands._common import (
    add_data_arguments,
    add_recipe_arguments,
    add_resume_argument,
    add_run_location_arguments,
    add_tta_arguments,
    recipe_overrides,
    reject_options_with_resume,
    resumed_run_dir,
    tta_views,
)

if TYPE_CHECKING:
    from lesionlab.evaluation.run_offsets import RunModel

RESUME_CONFLICTS = ("data", "format", "config", "set", "image_size", "epochs_scale", "subset", "workers",
                    "precision", "tensorboard", "mlflow")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `run` verb."""
    parser = subparsers.add_parser(
        "run",
        help="split, train, calibrate and evaluate in one command, ending with the test-part report",
        description=(
            "Make a lesion-grouped 70/15/15 split of the dataset, train the recipe (configs/default.yaml "
            "unless --config) into runs/<name>/, fit a temperature on the validation part, evaluate the best "
            "model once on the test part (with test-time augmentation unless --no-tta) and write "
            "runs/<name>/eval/<data>-test/report.html; then choose class offsets on the validation part "
            "(kept where they beat the plain decisions out of fold), write runs/<name>/model.json and, "
            "where the offsets were kept, score it on the test part too."
        ),
    )
    add_data_arguments(parser)
    add_recipe_arguments(parser)
    add_run_location_arguments(parser)
    add_tta_arguments(parser)
    parser.add_argument(
        "--no-tta",
        action="store_true",
        help="score the test part on single views; by default it is scored with test-time augmentation, "
        "which validation chose (docs/results.md)",
    )
    parser.add_argument(
        "--no-class-offsets",
        action="store_true",
        help="skip the class-offsets step and runs/<name>/model.json (by default offsets are fitted on "
        "the validation part and kept only where they beat the plain decisions there out of fold)",
    )
    add_resume_argument(parser, then=", then evaluate it")
    parser.add_argument(
        "--release",
        metavar="VALIDATED_RUN",
        type=Path,
        help="refit a finished run's recipe on its train + val parts, each stage stopping at the epoch "
        "validation chose, then evaluate on its untouched test part (run name: <VALIDATED_RUN>-release "
        "unless --name)",
    )
    parser.set_defaults(handler=run_run)


def test_views(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The views the test part is scored on: TTA's (default or `--tta-views`), or None with `--no-tta`.

    TTA is on by default because validation chose it: it raised validation balanced accuracy by 1.4 points
    in each of two default runs (docs/results.md).
    """
    from lesionlab.views import parse_views

    if args.no_tta:
        return None
    return tta_views(args) or parse_views(None)


def run_run(args: argparse.Namespace) -> int:
    """Run the pipeline and print the training summary and the test-part headline table."""
    from lesionlab.evaluation.report import console_summary
    from lesionlab.pipeline import PipelineOptions, run_pipeline
    from lesionlab.training.runner import summary_table

    resumed = resumed_run_dir(args)
    if resumed is not None:
        reject_options_with_resume(args, (*RESUME_CONFLICTS, "release"), "data, recipe and split")
    if args.release:
        reject_options_with_resume(args, RESUME_CONFLICTS, "recipe and split", flag="--release")
    result = run_pipeline(
        PipelineOptions(
            data=args.data,
            fmt=args.format,
            config=args.config,
            overrides=tuple(recipe_overrides(args)),
            epochs_scale=args.epochs_scale,
            subset=args.subset,
            name=resumed.name if resumed else args.name,
            runs_dir=resumed.parent if resumed else args.runs_dir,
            tta_views=test_views(args),
            resume=resumed is not None,
            release=args.release,
            class_offsets=not args.no_class_offsets,
        )
    )
    if result.evaluation is None:
        return 0
    metrics = result.evaluation.metrics
    print(f"\nrun: {result.run_dir}\n{summary_table(result.run_dir)}\n")
    print(f"test part ({metrics['samples']} images, {metrics['evaluation']['variant_description']}):")
    print(console_summary(metrics, with_classification_report=False))
    print(f"\nreport: {result.evaluation.out_dir / 'report.html'}")
    if result.run_model is not None:
        print_run_model(result.run_model)
    return 0


def print_run_model(run_model: RunModel) -> None:
    """The class-offsets choice, the model file to deploy, and its test figures where offsets were kept."""
    print(f"\n{run_model.choice.describe()}")
    if run_model.evaluation is not None:
        from lesionlab.evaluation.report import console_summary

        metrics = run_model.evaluation.metrics
        print(f"\ntest part ({metrics['samples']} images), {run_model.model_file}: "
              f"{metrics['evaluation']['rule']}:")
        print(console_summary(metrics, with_classification_report=False))
    print(f"\nmodel to deploy: {run_model.model_file} (lesionlab predict / serve / export take it)")
