"""Inference speed of one run on this CPU: PyTorch eager against ONNX Runtime fp32 and int8, side by side.

Every backend gets the same thread count (`torch.set_num_threads` and ORT's `intra_op_num_threads`), the same
input, and warm-up calls before timing, so the ratios compare engines rather than settings. Reported: batch-1
latency (p50, p95; what one web request waits) and batch throughput (what a bulk job gets). The numbers are
only meaningful relative to each other within one run on one machine; the ratio column is against PyTorch
eager.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from lesionlab.export import EXPORT_DIR, FP32_NAME, default_paths, export_onnx, quantize_int8
from lesionlab.inference.base import Predictor
from lesionlab.inference.onnx_backend import OnnxPredictor
from lesionlab.inference.run_samples import load_batch, split_samples
from lesionlab.inference.torch_backend import TorchPredictor

CALIBRATION_IMAGES = 64


@dataclass(frozen=True)
class BenchRow:
    """One backend's timings."""

    backend: str
    p50_ms: float
    p95_ms: float
    images_per_second: float


@dataclass(frozen=True)
class BenchReport:
    """All rows (PyTorch eager first) and the conditions they were measured under."""

    rows: tuple[BenchRow, ...]
    threads: int
    batch_size: int
    input_size: int
    onnx_files: tuple[Path, ...]
    exported_now: bool

    def conditions(self) -> str:
        """One line naming everything that affects the numbers."""
        return (f"{platform.processor() or platform.machine()}, {self.threads} thread(s), input "
                f"{self.input_size}x{self.input_size}, torch {torch.__version__}, onnxruntime "
                f"{ort.__version__} (graph optimisation ORT_ENABLE_ALL)")


def call_times(call: Callable[[], object], iterations: int, warmup: int) -> np.ndarray:
    """Seconds per call for `iterations` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = np.empty(iterations)
    for index in range(iterations):
        start = time.perf_counter()
        call()
        times[index] = time.perf_counter() - start
    return times


def bench_predictor(name: str, predictor: Predictor, single: np.ndarray, batch: np.ndarray, iterations: int,
                    batch_iterations: int, warmup: int) -> BenchRow:
    """Batch-1 latency percentiles and batch throughput of one predictor."""
    latencies = call_times(lambda: predictor.predict_batch(single), iterations, warmup) * 1000.0
    batch_times = call_times(lambda: predictor.predict_batch(batch), batch_iterations, 1)
    return BenchRow(
        backend=name,
        p50_ms=float(np.percentile(latencies, 50)),
        p95_ms=float(np.percentile(latencies, 95)),
        images_per_second=float(len(batch) / np.median(batch_times)),
    )


def exported_files(run_dir: Path, work_dir: Path, reference: TorchPredictor,
                   data: str | os.PathLike[str] | None) -> tuple[Path, Path, bool]:
    """The run's exported fp32 and int8 files, or fresh ones in `work_dir` when the run has none."""
    fp32, int8 = default_paths(run_dir, None)
    if fp32.is_file() and int8.is_file():
        return fp32, int8, False
    fp32, int8 = default_paths(run_dir, work_dir / EXPORT_DIR / FP32_NAME)
    export_onnx(reference.model, reference.card, fp32)
    samples = split_samples(run_dir, "train", data, CALIBRATION_IMAGES)
    calibration = load_batch(samples, reference.preprocessing, "calibration images")
    quantize_int8(fp32, int8, calibration.images)
    return fp32, int8, True


def bench_run(run_dir: str | os.PathLike[str], threads: int, iterations: int = 50, batch_size: int = 32,
              batch_iterations: int = 5, warmup: int = 5, data: str | os.PathLike[str] | None = None,
              seed: int = 0) -> BenchReport:
    """Time PyTorch eager, ONNX Runtime fp32 and int8 on the same inputs with the same threads."""
    reference = TorchPredictor.from_path(run_dir, threads=threads)
    size = reference.preprocessing.input_size
    inputs = np.random.default_rng(seed).standard_normal((batch_size, 3, size, size), dtype=np.float32)
    single = inputs[:1].copy()
    with tempfile.TemporaryDirectory(prefix="lesionlab-bench-") as work:
        fp32, int8, exported_now = exported_files(Path(run_dir), Path(work), reference, data)
        predictors: list[tuple[str, Predictor]] = [
            ("pytorch eager", reference),
            ("onnxruntime fp32", OnnxPredictor(fp32, threads=threads)),
            ("onnxruntime int8", OnnxPredictor(int8, threads=threads)),
        ]
        rows = tuple(bench_predictor(name, predictor, single, inputs, iterations, batch_iterations, warmup)
                     for name, predictor in predictors)
    return BenchReport(rows=rows, threads=threads, batch_size=batch_size, input_size=size,
                       onnx_files=() if exported_now else (fp32, int8), exported_now=exported_now)
