"""`lesionlab export RUN [--int8]`: write the ONNX file (and an int8 OpenVINO model where it keeps accuracy)
and show how each follows PyTorch on the run's validation images; `lesionlab export MODEL.json` writes one
graph for the whole model file, checked the same way.

With `--int8` the exit status tells a script whether the int8 model can be used: 0 when it passed (within
`--max-accuracy-drop` of fp32 and faster at batch 1 and 32), 3 (`errors.REFUSED`) when it was refused. A
refused model is not written; `<stem>-int8-report.json` beside the fp32 file records the figures and the
status either way. `--keep-slower` keeps an int8 model that keeps accuracy but is not faster on this CPU
(for its size, or for a CPU that runs int8 faster); the speed shortfalls are then printed and recorded as
notes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lesionlab.export import ExportReport
    from lesionlab.quantize import Int8Report


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export` verb."""
    parser = subparsers.add_parser(
        "export", help="export a run's model to ONNX (and int8 for OpenVINO) and check it against PyTorch",
        description="Write RUN/export/model.onnx (dynamic batch, resized 0..255 pixels in, the model's "
                    "normalisation, temperature and softmax inside, the resize rule in its metadata) and "
                    "check it on ONNX Runtime and OpenVINO against PyTorch on the run's "
                    "validation images. With --int8, also quantize it for OpenVINO (NNCF, accuracy control, "
                    "calibrated on training images) into model-int8.xml/.bin, kept only if it loses at most "
                    "--max-accuracy-drop balanced accuracy and is faster than fp32; exit status 3 when not.",
    )
    parser.add_argument("run", metavar="RUN",
                        help="run directory from `lesionlab train`, or a model.json: its members (each with "
                             "its temperature), TTA views and class offsets become one ONNX graph, "
                             "<name>.onnx beside the model file (or --out), checked against the model file")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format (onnx)")
    parser.add_argument("--int8", action="store_true",
                        help="also write an int8 OpenVINO model where it keeps accuracy and is faster")
    parser.add_argument("--keep-slower", action="store_true",
                        help="with --int8: keep an int8 model that keeps accuracy even where it is not "
                             "faster than fp32 here (2.5 MB against 6.5 MB for MobileNetV3-Small; another "
                             "CPU may run it faster)")
    parser.add_argument("--out", type=Path, default=None,
                        help="fp32 output file (default RUN/export/model.onnx); int8 goes beside it as "
                             "<stem>-int8.xml and .bin, its verdict as <stem>-int8-report.json")
    parser.add_argument("--data", default=None, help="dataset the run's split refers to (default: as train)")
    parser.add_argument("--max-images", type=int, default=None,
                        help="validation images used for the checks (default: the whole validation part)")
    parser.add_argument("--calibration-images", type=int, default=300,
                        help="training images used to calibrate int8 (default 300)")
    parser.add_argument("--max-accuracy-drop", type=float, default=0.01,
                        help="largest balanced-accuracy loss of int8 against fp32 on the validation images "
                             "(default 0.01, one point)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for every engine in the checks (default: the engines' own)")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Export, check, and print the comparison table; 3 when the int8 model was refused."""
    from lesionlab.errors import REFUSED, ConfigError
    from lesionlab.export import export_run

    if (args.max_images is not None and args.max_images < 1) or args.calibration_images < 1:
        raise ConfigError("--max-images and --calibration-images must be at least 1")
    if args.keep_slower and not args.int8:
        raise ConfigError("--keep-slower applies to --int8; add --int8 or drop --keep-slower")
    if not 0 <= args.max_accuracy_drop <= 1:
        raise ConfigError(f"--max-accuracy-drop {args.max_accuracy_drop}: give a fraction between 0 and 1")
    from lesionlab.inference.model_file import is_model_file, resolve_model_file

    if is_model_file(args.run):
        from lesionlab.export import export_model_file

        if args.int8:
            raise ConfigError(f"{args.run}: --int8 quantizes one run's model; export the member runs with "
                              f"--int8 one by one, or drop --int8")
        report = export_model_file(resolve_model_file(args.run), out=args.out, data=args.data,
                                   max_images=args.max_images, threads=args.threads)
        print(summary_table(report, "pytorch (model file)"))
        return 0
    report = export_run(args.run, out=args.out, int8=args.int8, data=args.data, max_images=args.max_images,
                        calibration_images=args.calibration_images, max_drop=args.max_accuracy_drop,
                        threads=args.threads, keep_slower=args.keep_slower)
    print(summary_table(report))
    if report.int8 is not None:
        print(f"\n{int8_summary(report.int8)}")
        return 0 if report.int8.passed else REFUSED
    return 0


def summary_table(report: ExportReport, reference: str = "pytorch") -> str:
    """PyTorch (`reference`) first, then each file on each engine: size, agreement with PyTorch, balanced
    accuracy on the same images."""
    from lesionlab.tables import Table, format_table

    images = report.files[0].agreement.images
    files = [*report.files, *([report.int8.model] if report.int8 else [])]
    source = "(run checkpoint)" if reference == "pytorch" else "(its members)"
    rows = [(reference, source, "", "", "", f"{report.torch_balanced_accuracy:.4f}")]
    for exported in files:
        refused = report.int8 is not None and exported is report.int8.model and not report.int8.passed
        rows.append((
            exported.label, "(refused, not written)" if refused else str(exported.path),
            f"{exported.size_bytes / 1e6:.1f} MB", f"{exported.agreement.max_abs_difference:.2e}",
            f"{100 * exported.agreement.top1_agreement:.1f}%", f"{exported.balanced_accuracy:.4f}",
        ))
    table = Table(headers=("model", "file", "size", "max |p - p_torch|", "top-1 agreement",
                           "balanced accuracy"), rows=tuple(rows), numeric_from=2)
    return f"{format_table(table)}\n\nChecked on {images} validation image(s) of the run's split."


def int8_summary(report: Int8Report) -> str:
    """The int8 verdict: accuracy against fp32, speed against each fp32 engine, and what failed, if any."""
    from lesionlab.tables import Table, format_table

    fp32_rows = report.speed[:-1]
    int8_row = report.speed[-1]
    rows = tuple(
        (row.label, f"{row.timing.p50_ms:.2f}", f"{row.timing.p95_ms:.2f}",
         f"{row.timing.images_per_second:.1f}")
        for row in report.speed
    )
    speed = format_table(Table(headers=("engine", "batch-1 p50 ms", "p95 ms", "batch-32 img/s"), rows=rows))
    accuracy = (f"int8 balanced accuracy {report.model.balanced_accuracy:.4f} against fp32 "
                f"{report.fp32_balanced_accuracy:.4f} (OpenVINO, same {report.model.agreement.images} "
                f"validation images): drop {report.drop:+.4f}, limit {report.max_drop:.4f}.")
    fastest = max(row.timing.images_per_second for row in fp32_rows)
    ratio = f"int8 throughput {int8_row.timing.images_per_second / fastest:.2f}x the fastest fp32 engine."
    if report.passed and report.notes:
        listed = "\n".join(f"- {note}" for note in report.notes)
        verdict = f"int8 kept (--keep-slower) and written to {report.model.path}, although:\n{listed}"
    elif report.passed:
        verdict = f"int8 passed: written to {report.model.path}."
    else:
        listed = "\n".join(f"- {problem}" for problem in report.problems)
        verdict = f"int8 FAILED and was not written:\n{listed}"
    return "\n".join([speed, "", accuracy, ratio, verdict, f"Report: {report.report_path}"])
