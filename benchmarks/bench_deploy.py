"""Deployment speed of trained runs: every inference engine against ONNX Runtime fp32, one table per run.

For each RUN this prints `lesionlab bench`'s table (PyTorch eager fp32 and bf16 autocast, ONNX Runtime
fp32 and int8, OpenVINO fp32, bf16 and int8 when `lesionlab export RUN --int8` installed one), then names the
fastest engine at batch 32 whose probabilities stay within `--tolerance` of PyTorch fp32, with its throughput
as a ratio against ONNX Runtime fp32 from the same run.

    .venv/bin/python benchmarks/bench_deploy.py runs/default --threads 2
"""

from __future__ import annotations

import argparse
import os

from lesionlab.commands.bench import bench_table
from lesionlab.speed import BenchReport, bench_run


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", metavar="RUN", nargs="+", help="run directories from `lesionlab train`")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for every engine (default: all CPU cores)")
    parser.add_argument("--iters", type=int, default=100, help="timed batch-1 calls per engine (default 100)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size for throughput (default 32)")
    parser.add_argument("--batch-iters", type=int, default=10,
                        help="timed batch calls per engine (default 10)")
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="largest probability difference from PyTorch fp32 that counts as the same "
                             "answer (default 0.01)")
    parser.add_argument("--data", default=None, help="dataset of the runs' splits (default: as trained)")
    return parser.parse_args()


def fastest_within(report: BenchReport, tolerance: float) -> str:
    """The fastest engine at batch size whose probabilities stay within `tolerance`, against ORT fp32."""
    base = report.baseline.timing.images_per_second
    close = [row for row in report.rows if row.max_abs_difference <= tolerance]
    best = max(close, key=lambda row: row.timing.images_per_second)
    fastest = max(report.rows, key=lambda row: row.timing.images_per_second)
    lines = [f"fastest within {tolerance} of PyTorch fp32 at batch {report.batch_size}: {best.backend}, "
             f"{best.timing.images_per_second / base:.2f}x ONNX Runtime fp32 "
             f"(max |p - p_fp32| {best.max_abs_difference:.1e})"]
    if fastest is not best:
        lines.append(f"fastest overall: {fastest.backend}, {fastest.timing.images_per_second / base:.2f}x, "
                     f"but its probabilities move by up to {fastest.max_abs_difference:.3f}")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    for run in args.runs:
        report = bench_run(run, threads=args.threads, iterations=args.iters, batch_size=args.batch_size,
                           batch_iterations=args.batch_iters, data=args.data)
        print(f"run: {run} (load average {', '.join(f'{load:.1f}' for load in os.getloadavg())})")
        print(bench_table(report))
        print(f"{fastest_within(report, args.tolerance)}\n")


if __name__ == "__main__":
    main()
