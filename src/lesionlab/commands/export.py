"""`lesionlab export RUN --format onnx [--int8]`: write ONNX files, show how closely they follow PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lesionlab.export import ExportReport

INT8_LOSS_WORTH_NOTING = 0.02


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export` verb."""
    parser = subparsers.add_parser(
        "export", help="export a run's model to ONNX (fp32, optionally int8) and check it against PyTorch",
        description="Write RUN/export/model.onnx (dynamic batch, softmax output, pre-processing in its "
                    "metadata) and, with --int8, model-int8.onnx; compare both with PyTorch on the run's "
                    "validation images.",
    )
    parser.add_argument("run", metavar="RUN", help="run directory from `lesionlab train`")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format (onnx)")
    parser.add_argument("--int8", action="store_true",
                        help="also write a statically quantized int8 model, calibrated on training images")
    parser.add_argument("--out", type=Path, default=None,
                        help="fp32 output file (default RUN/export/model.onnx); int8 goes beside it as "
                             "<stem>-int8.onnx")
    parser.add_argument("--data", default=None, help="dataset the run's split refers to (default: as train)")
    parser.add_argument("--max-images", type=int, default=200,
                        help="validation images used for the checks (default 200)")
    parser.add_argument("--calibration-images", type=int, default=128,
                        help="training images used to calibrate int8 (default 128)")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Export, check, and print the comparison table."""
    from lesionlab.errors import ConfigError
    from lesionlab.export import export_run

    if args.max_images < 1 or args.calibration_images < 1:
        raise ConfigError("--max-images and --calibration-images must be at least 1")
    report = export_run(args.run, out=args.out, int8=args.int8, data=args.data, max_images=args.max_images,
                        calibration_images=args.calibration_images)
    print(summary_table(report))
    return 0


def summary_table(report: ExportReport) -> str:
    """PyTorch first, then each file: size, agreement with PyTorch, balanced accuracy on the same images."""
    from lesionlab.evaluation.report import Table, format_table

    images = report.files[0].agreement.images
    rows = [("pytorch", "(run checkpoint)", "", "", "", f"{report.torch_balanced_accuracy:.4f}")]
    for exported in report.files:
        rows.append((
            exported.label, str(exported.path),
            f"{exported.size_bytes / 1e6:.1f} MB", f"{exported.agreement.max_abs_difference:.2e}",
            f"{100 * exported.agreement.top1_agreement:.1f}%", f"{exported.balanced_accuracy:.4f}",
        ))
    table = Table(headers=("model", "file", "size", "max |p - p_torch|", "top-1 agreement",
                           "balanced accuracy"), rows=tuple(rows), numeric_from=2)
    notes = [f"Checked on {images} validation image(s) of the run's split."]
    loss = report.files[0].balanced_accuracy - report.files[-1].balanced_accuracy
    if len(report.files) > 1 and loss > INT8_LOSS_WORTH_NOTING:
        notes.append(f"Note: int8 loses {loss:.3f} balanced accuracy against fp32 on these images; serve "
                     f"the fp32 file where accuracy matters.")
    return "\n\n".join([format_table(table), *notes])
