"""`lesionlab bench RUN`: latency and throughput of every inference engine, against ONNX Runtime fp32."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lesionlab.speed import BenchReport


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` verb."""
    parser = subparsers.add_parser(
        "bench", help="time PyTorch, ONNX Runtime and OpenVINO (fp32, bf16, int8) on this CPU",
        description="Batch-1 latency (p50, p95) and batch throughput with equal thread counts and warm-up, "
                    "on validation images of the run's split, with each engine's largest probability "
                    "difference from PyTorch fp32. Uses RUN/export/model.onnx (exported to a temporary "
                    "folder when absent), an ONNX Runtime int8 model quantized from it on training "
                    "images (in a temporary folder), and RUN/export/model-int8.xml when `lesionlab export "
                    "--int8` installed one.",
    )
    parser.add_argument("run", metavar="RUN",
                        help="run directory from `lesionlab train`, or a model.json (each member run in "
                             "turn)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for every backend (default: all CPU cores)")
    parser.add_argument("--iters", type=int, default=50, help="timed batch-1 calls per backend (default 50)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size for throughput (default 32)")
    parser.add_argument("--batch-iters", type=int, default=5,
                        help="timed batch calls per backend (default 5)")
    parser.add_argument("--data", default=None, help="dataset of the run's split (default: as train)")
    parser.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    """Measure and print the comparison table."""
    from lesionlab.errors import ConfigError
    from lesionlab.speed import bench_run

    if min(args.threads, args.iters, args.batch_size, args.batch_iters) < 1:
        raise ConfigError("--threads, --iters, --batch-size and --batch-iters must each be at least 1")
    from lesionlab.inference.model_file import is_model_file, member_runs, resolve_model_file

    runs = member_runs(resolve_model_file(args.run), "bench") if is_model_file(args.run) else (args.run,)
    for run in runs:
        report = bench_run(run, threads=args.threads, iterations=args.iters, batch_size=args.batch_size,
                           batch_iterations=args.batch_iters, data=args.data)
        if len(runs) > 1 or run != args.run:
            print(f"\n{run}:")
        print(bench_table(report))
    return 0


def bench_table(report: BenchReport) -> str:
    """Each engine's timings, its ratios against ONNX Runtime fp32 from the same run, and its largest
    probability difference from PyTorch fp32."""
    from lesionlab.tables import Table, format_table

    base = report.baseline.timing
    rows = tuple(
        (row.backend, f"{row.timing.p50_ms:.2f}", f"{row.timing.p95_ms:.2f}",
         f"{base.p50_ms / row.timing.p50_ms:.2f}x", f"{row.timing.images_per_second:.1f}",
         f"{row.timing.images_per_second / base.images_per_second:.2f}x", f"{row.max_abs_difference:.1e}")
        for row in report.rows
    )
    headers = ("backend", "batch-1 p50 ms", "p95 ms", "vs ORT fp32", f"batch-{report.batch_size} img/s",
               "vs ORT fp32", "max |p - p_fp32|")
    source = str(report.onnx_file) if report.onnx_file else "freshly exported to a temporary folder"
    int8 = (str(report.int8_file) if report.int8_file
            else "none (`lesionlab export RUN --int8` writes RUN/export/model-int8.xml)")
    return (f"{format_table(Table(headers=headers, rows=rows))}\n\nRatios are against ONNX Runtime fp32 in "
            f"this run; probability differences are against PyTorch fp32 on {report.batch_size} validation "
            f"images. {report.conditions()}.\nONNX file: {source}. int8 model: {int8}.")
