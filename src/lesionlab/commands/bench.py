"""`lesionlab bench RUN`: latency and throughput of PyTorch eager against ONNX Runtime fp32 and int8."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lesionlab.speed import BenchReport


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` verb."""
    parser = subparsers.add_parser(
        "bench", help="time PyTorch eager vs ONNX Runtime fp32/int8 on this CPU",
        description="Batch-1 latency (p50, p95) and batch throughput with equal thread counts and warm-up; "
                    "exports to a temporary folder when the run has no RUN/export files.",
    )
    parser.add_argument("run", metavar="RUN", help="run directory from `lesionlab train`")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for every backend (default: all CPU cores)")
    parser.add_argument("--iters", type=int, default=50, help="timed batch-1 calls per backend (default 50)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size for throughput (default 32)")
    parser.add_argument("--batch-iters", type=int, default=5,
                        help="timed batch calls per backend (default 5)")
    parser.add_argument("--data", default=None, help="dataset of the run's split, for int8 calibration")
    parser.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    """Measure and print the comparison table."""
    from lesionlab.errors import ConfigError
    from lesionlab.speed import bench_run

    if min(args.threads, args.iters, args.batch_size, args.batch_iters) < 1:
        raise ConfigError("--threads, --iters, --batch-size and --batch-iters must each be at least 1")
    report = bench_run(args.run, threads=args.threads, iterations=args.iters, batch_size=args.batch_size,
                       batch_iterations=args.batch_iters, data=args.data)
    print(bench_table(report))
    return 0


def bench_table(report: BenchReport) -> str:
    """Each backend's timings and its ratio against PyTorch eager from the same run."""
    from lesionlab.evaluation.report import Table, format_table

    eager = report.rows[0]
    rows = tuple(
        (row.backend, f"{row.p50_ms:.2f}", f"{row.p95_ms:.2f}", f"{eager.p50_ms / row.p50_ms:.2f}x",
         f"{row.images_per_second:.1f}", f"{row.images_per_second / eager.images_per_second:.2f}x")
        for row in report.rows
    )
    headers = ("backend", "batch-1 p50 ms", "p95 ms", "speed-up", f"batch-{report.batch_size} img/s",
               "speed-up")
    table = Table(headers=headers, rows=rows)
    source = ("freshly exported to a temporary folder" if report.exported_now
              else ", ".join(str(path) for path in report.onnx_files))
    return (f"{format_table(table)}\n\nSpeed-up is against PyTorch eager in this run. "
            f"{report.conditions()}.\nONNX files: {source}.")
