"""`lesionlab evaluate RUN`: metrics, calibration, figures and a report for a run's best model on any data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lesionlab.commands._common import (
    add_data_arguments,
    add_forward_backend_argument,
    add_precision_argument,
    add_tta_arguments,
    tta_views,
)
from lesionlab.malignancy import DEFAULT_TARGET_SENSITIVITY

if TYPE_CHECKING:
    from lesionlab.training.recipe import TrackingConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `evaluate` verb."""
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a run's best model: metrics with 95%% intervals, calibration, report",
        description="Run the best model of RUN over a part of its own split (default: test) or over another "
        "dataset (default: all of it), with the run's own preprocessing, and write predictions.csv, "
        "metrics.json, report.md, report.html and figures to RUN/eval/<data>-<split>/.",
    )
    parser.add_argument(
        "run", metavar="RUN", type=Path,
        help="run directory (from `lesionlab train` or `run`), or a model.json (its members, views and class "
        "offsets, scored together; written to <its folder>/eval/<its name>-<split>/ unless --out)",
    )
    add_data_arguments(
        parser,
        data_help="another dataset to evaluate on, in any layout lesionlab reads "
        "(default: the run's own data and split)",
    )
    parser.add_argument(
        "--split",
        choices=("test", "val", "train", "all"),
        help="which part: default test for the run's own data, all for other data",
    )
    add_tta_arguments(parser)
    parser.add_argument(
        "--ensemble", action="append", default=[], type=Path, metavar="RUN2",
        help="another run (repeatable): evaluate each member, then score the mean of their probabilities "
        "(written to RUN/eval/ensemble-<members>-<split>/ unless --out)",
    )
    parser.add_argument(
        "--no-calibration",
        action="store_true",
        help="skip temperature scaling (by default a temperature fitted on the run's validation "
        "part is applied and reported beside the plain figures)",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: RUN/eval/<data>-<split>)")
    parser.add_argument("--device", help="auto, cpu or cuda (default: the run's recipe)")
    parser.add_argument(
        "--malignant-sensitivity", type=float, default=DEFAULT_TARGET_SENSITIVITY, metavar="S",
        help="sensitivity the malignant/benign threshold is chosen for on the validation part "
        f"(default {DEFAULT_TARGET_SENSITIVITY})",
    )
    parser.add_argument(
        "--no-metadata", action="store_true",
        help="score a metadata model with every patient field withheld (as at a prediction without age, "
        "sex or site); written to RUN/eval/<data>-<split>-no-metadata/ unless --out",
    )
    add_precision_argument(parser)
    add_forward_backend_argument(parser)
    parser.add_argument(
        "--tensorboard", action="store_true",
        help="also log the headline figures and the PNG figures to the run's TensorBoard events "
        "(<run>/tensorboard/); on without the flag when the run trained with tracking.tensorboard",
    )
    parser.add_argument(
        "--mlflow", action="store_true",
        help="also log them to the run's MLflow run (the one run.json records, else a new one in "
        "<runs dir>/mlruns/ or $MLFLOW_TRACKING_URI); on without the flag when the run trained with "
        "tracking.mlflow",
    )
    parser.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate, then print the classification report, the headline table and where the report is."""
    from lesionlab.errors import ConfigError
    from lesionlab.evaluation.ensemble import evaluate_ensemble, evaluate_model_file
    from lesionlab.evaluation.evaluate import EvaluationOptions, evaluate_run
    from lesionlab.evaluation.report import console_summary
    from lesionlab.inference.model_file import is_model_file, resolve_model_file
    from lesionlab.tracking import log_evaluation

    if not 0.0 < args.malignant_sensitivity <= 1.0:
        raise ConfigError(f"--malignant-sensitivity {args.malignant_sensitivity}: give a value in (0, 1]")
    options = EvaluationOptions(
        data=args.data,
        fmt=args.format,
        split=args.split,
        tta_views=tta_views(args),
        calibrate=not args.no_calibration,
        out_dir=args.out,
        device=args.device,
        precision=args.precision,
        forward_backend=args.forward_backend,
        malignant_sensitivity=args.malignant_sensitivity,
        metadata=not args.no_metadata,
    )
    if is_model_file(args.run) and (args.ensemble or options.tta_views):
        raise ConfigError(f"{args.run}: a model file names its members and TTA views itself; drop "
                          f"--ensemble and --tta.")
    if (args.ensemble or is_model_file(args.run)) and (args.tensorboard or args.mlflow):
        raise ConfigError("--tensorboard and --mlflow log into one run's trackers; evaluate a single run "
                          "with them, not an ensemble or a model file.")
    if args.ensemble or is_model_file(args.run):
        if is_model_file(args.run):
            result = evaluate_model_file(resolve_model_file(args.run), options)
        else:
            result = evaluate_ensemble([args.run, *args.ensemble], options)
        validation = result.metrics["validation"]
        print(f"\n{len(result.metrics['evaluation']['members'])} member(s) ({result.metrics['samples']} "
              f"images, {result.metrics['evaluation']['rule']}):\n")
        print(console_summary(result.metrics))
        if validation is not None:
            print(f"\nvalidation part: balanced accuracy {validation['balanced_accuracy']:.3f}, macro F1 "
                  f"{validation['macro_f1']:.3f}")
        print(f"\nmetrics: {result.out_dir / 'metrics.json'}")
        return 0
    tracking = evaluation_tracking(args.run, args.tensorboard, args.mlflow)
    result = evaluate_run(args.run, options)
    log_evaluation(args.run, tracking, result.out_dir, result.metrics)
    evaluation = result.metrics["evaluation"]
    print(
        f"{evaluation['run']} on {evaluation['dataset']}-{evaluation['split']} ({result.metrics['samples']} "
        f"images, {evaluation['variant_description']}):\n"
    )
    print(console_summary(result.metrics))
    print(f"\nreport: {result.out_dir / 'report.html'}")
    return 0


def evaluation_tracking(run_dir: Path, tensorboard: bool, mlflow: bool) -> TrackingConfig:
    """The trackers an evaluation of `run_dir` logs to: those the flags ask for (refused up front when not
    installed), and those the run trained with (its `config.yaml`), each skipped with a note where its
    package is missing, so a tracked run still evaluates where a viewer's package is not installed."""
    from lesionlab.tracking import check_available
    from lesionlab.training.recipe import TrackingConfig, load_recipe

    asked = TrackingConfig(tensorboard=tensorboard, mlflow=mlflow)
    check_available(asked)
    config = Path(run_dir) / "config.yaml"
    trained = load_recipe(config).tracking if config.is_file() else TrackingConfig(False, False)
    return TrackingConfig(**{key: getattr(asked, key) or (getattr(trained, key) and _installed(key))
                             for key in ("tensorboard", "mlflow")})


def _installed(tracker: str) -> bool:
    """Whether a tracker's package imports; where not, say that the evaluation is not logged to it."""
    from lesionlab.errors import ConfigError
    from lesionlab.tracking import check_available
    from lesionlab.training.recipe import TrackingConfig

    try:
        check_available(TrackingConfig(tensorboard=tracker == "tensorboard", mlflow=tracker == "mlflow"))
    except ConfigError as missing:
        print(f"note: this evaluation is not logged to {tracker}: {missing}", file=sys.stderr)
        return False
    return True
