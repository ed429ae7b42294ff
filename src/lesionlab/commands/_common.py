"""Argument definitions that several verbs share, so `train`, `run` and `evaluate` spell and explain each flag
the same way, and the recipe shortcuts (`--image-size`, `--workers`) mean the same `--set` everywhere."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lesionlab.inference.base import Predictor


def add_data_arguments(parser: argparse.ArgumentParser, data_help: str | None = None) -> None:
    """`--data` and `--format`."""
    parser.add_argument(
        "--data",
        help=data_help or "dataset folder or file (default: $LESIONLAB_DATA, ../shared/data/ham10000)",
    )
    parser.add_argument("--format", help="dataset layout (ham10000, isic, prefix, folders, medmnist)")


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config`, `--set`, and the shortcuts `--image-size`, `--epochs-scale`, `--subset`, `--workers`."""
    parser.add_argument("--config", help="recipe YAML, or a name in configs/ (e.g. reference-small)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key by dotted path, value parsed as YAML (repeatable), "
        "e.g. --set stages.1.epochs=3 --set image_size=160",
    )
    parser.add_argument("--image-size", type=int, help="shortcut for --set image_size=N")
    parser.add_argument("--epochs-scale", type=float, help="scale every stage's epochs (rounded, at least 1)")
    parser.add_argument(
        "--subset", type=int, help="train on a class-stratified, lesion-grouped subset of N images"
    )
    parser.add_argument("--workers", type=int, help="shortcut for --set workers=N")
    add_precision_argument(parser)
    parser.add_argument("--tensorboard", action="store_true", default=None,
                        help="also log parameters, epoch metrics and figures to TensorBoard, in "
                        "<run>/tensorboard/ (shortcut for --set tracking.tensorboard=true)")
    parser.add_argument("--mlflow", action="store_true", default=None,
                        help="also log them to MLflow: the local store <runs dir>/mlruns/, or "
                        "$MLFLOW_TRACKING_URI (shortcut for --set tracking.mlflow=true)")


def add_run_location_arguments(parser: argparse.ArgumentParser) -> None:
    """`--name` and `--runs-dir`."""
    parser.add_argument("--name", help="run name (default: <arch>-<timestamp>)")
    parser.add_argument(
        "--runs-dir", type=Path, default=Path("runs"), help="folder holding run folders (default: runs)"
    )


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """`--precision` for forward-only passes (the recipe key `precision` where a verb trains)."""
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        help="forward passes in fp32 or bf16 autocast; auto (the recipe's default) uses bf16 where the "
        "processor has it natively and it agrees with fp32 on the run's validation images",
    )


def add_forward_backend_argument(parser: argparse.ArgumentParser) -> None:
    """`--forward-backend` for fp32 forward-only passes (the recipe key `forward_backend`)."""
    parser.add_argument(
        "--forward-backend",
        choices=("auto", "torch", "onnxruntime", "openvino"),
        help="engine of the fp32 inference passes: auto (the recipe's default) runs them on ONNX Runtime on "
        "a CPU, checked against PyTorch on the first batch; torch runs eager PyTorch",
    )


def add_tta_arguments(parser: argparse.ArgumentParser) -> None:
    """`--tta` and `--tta-views`."""
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the probabilities of flipped and rotated views",
    )
    parser.add_argument(
        "--tta-views",
        metavar="VIEWS",
        help="comma-separated views for --tta (implies it): hflip, vflip, rot90, rot180, rot270, "
        "transpose (default: hflip,vflip,rot90,rot180,rot270)",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """`--ensemble`, the TTA flags, `--threads`, `--backend` and `--precision`: how `predict` and `serve`
    turn RUN into a model."""
    parser.add_argument(
        "--ensemble",
        action="append",
        default=[],
        metavar="RUN",
        help="another run directory or .onnx file whose probabilities are averaged with RUN's (repeatable); "
        "e.g. the members of the recommended ensemble in docs/results.md",
    )
    add_tta_arguments(parser)
    parser.add_argument(
        "--class-offsets",
        type=Path,
        metavar="FILE",
        help="class-offsets.json written by `lesionlab study` for an ensemble: shifts the final "
        "probabilities towards balanced decisions (pass the same members and --tta the study used)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for inference")
    parser.add_argument(
        "--backend",
        choices=("pytorch", "onnxruntime", "openvino"),
        default=None,
        help="engine: pytorch for a run directory, onnxruntime for an .onnx file (the defaults), or openvino "
        "for an .onnx file or the int8 model-int8.xml; with a run directory, onnxruntime and openvino run "
        "its export/model.onnx",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16 runs pytorch under bf16 autocast and openvino with INFERENCE_PRECISION_HINT bf16 "
        "(faster on CPUs with AMX or AVX-512 bf16; probabilities move, see docs/results.md); default fp32",
    )


def load_model_from_arguments(args: argparse.Namespace) -> Predictor:
    """The predictor that `add_model_arguments` describes, RUN first."""
    from lesionlab.inference import load_predictor

    return load_predictor(args.run, threads=args.threads, views=tta_views(args), ensemble=args.ensemble,
                          class_offsets=args.class_offsets, backend=args.backend, precision=args.precision)


def recipe_overrides(args: argparse.Namespace) -> list[str]:
    """The `--set` assignments plus those the shortcut flags stand for, in that order."""
    shortcuts = [
        f"{key}={value}"
        for key, value in (("image_size", args.image_size), ("workers", args.workers),
                           ("precision", args.precision))
        if value is not None
    ]
    trackers = [f"tracking.{key}=true" for key in ("tensorboard", "mlflow") if getattr(args, key)]
    return [*args.set, *shortcuts, *trackers]


def tta_views(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The TTA views the flags ask for (identity first), or None when TTA is off."""
    from lesionlab.views import parse_views

    if not args.tta and not args.tta_views:
        return None
    return parse_views(args.tta_views)


RESUME_BY_NAME = ""


def add_resume_argument(parser: argparse.ArgumentParser, then: str = "") -> None:
    """`--resume [RUN_DIR]`, the same on `train` and `run`: a run directory, or nothing to resume the run
    that `--name` (and `--runs-dir`) name. Both spellings older releases took keep working."""
    parser.add_argument(
        "--resume", nargs="?", const=RESUME_BY_NAME, metavar="RUN_DIR",
        help=f"continue a stopped run from its last completed epoch{then}: give its folder, or give "
        "--name (and --runs-dir) instead",
    )


def resumed_run_dir(args: argparse.Namespace) -> Path | None:
    """The run folder `--resume` asks for: RUN_DIR, else `--runs-dir/--name`; None without `--resume`."""
    from lesionlab.errors import ConfigError

    if args.resume is None:
        return None
    if args.resume != RESUME_BY_NAME:
        if args.name and Path(args.resume).name != args.name:
            raise ConfigError(f"--resume {args.resume} and --name {args.name} name different runs; give one")
        return Path(args.resume)
    if not args.name:
        raise ConfigError("--resume needs the run: give its folder (--resume runs/NAME) or --name NAME")
    return Path(args.runs_dir) / args.name


def reject_options_with_resume(args: argparse.Namespace, names: tuple[str, ...], keeps: str,
                               flag: str = "--resume") -> None:
    """Refuse flags that would change a run being resumed (or refitted by `--release`): it keeps its own
    recipe and split."""
    from lesionlab.errors import ConfigError

    given = [f"--{name.replace('_', '-')}" for name in names if getattr(args, name) not in (None, [])]
    if given:
        raise ConfigError(
            f"{flag} keeps the run's own {keeps}; drop {', '.join(given)} or start a new run."
        )
