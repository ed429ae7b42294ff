"""Inference speed of one run on this CPU, every engine side by side: PyTorch eager (fp32 and bf16 autocast),
ONNX Runtime fp32 and int8 (`lesionlab.quantize_onnxruntime`, quantized here on training images), and OpenVINO
fp32, bf16 and int8 (where `lesionlab export --int8` installed one).

Every engine gets the same thread count, the same real validation images of the run's split, and warm-up
calls before timing (`inference.timing`), so the ratios compare engines rather than settings. Each row also
gives the largest probability difference from PyTorch fp32 on those images: speed is worth little if the
answers move. Ratios are against ONNX Runtime fp32 measured in the same run; absolute numbers only mean
something next to each other, on one machine, at one moment.
"""

from __future__ import annotations

import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import torch

from lesionlab.export import default_paths, export_onnx
from lesionlab.inference.backends import BF16, EXPORT_DIR, FP32_NAME
from lesionlab.inference.base import Predictor
from lesionlab.inference.onnx_backend import OnnxPredictor
from lesionlab.inference.openvino_backend import OpenVinoPredictor
from lesionlab.inference.run_samples import load_batch, split_samples
from lesionlab.inference.timing import Timing, time_predictor, timing_batches
from lesionlab.inference.torch_backend import TorchPredictor
from lesionlab.quantize_onnxruntime import quantize_onnxruntime

BASELINE = "onnxruntime fp32"
CALIBRATION_IMAGES = 64


@dataclass(frozen=True)
class BenchRow:
    """One engine's timings and how far its probabilities move from PyTorch fp32."""

    backend: str
    timing: Timing
    max_abs_difference: float


@dataclass(frozen=True)
class BenchReport:
    """All rows (PyTorch fp32 first) and the conditions they were measured under."""

    rows: tuple[BenchRow, ...]
    threads: int
    batch_size: int
    input_size: int
    onnx_file: Path | None
    int8_file: Path | None

    @property
    def baseline(self) -> BenchRow:
        """The row every ratio is against: ONNX Runtime fp32."""
        return next(row for row in self.rows if row.backend == BASELINE)

    def conditions(self) -> str:
        """One line naming everything that affects the numbers."""
        return (f"{platform.processor() or platform.machine()}, {self.threads} thread(s), input "
                f"{self.input_size}x{self.input_size}, torch {torch.__version__}, onnxruntime "
                f"{ort.__version__} (ORT_ENABLE_ALL), openvino {ov.__version__} (CPU, latency hint)")


def engines(run_dir: Path, fp32: Path, ort_int8: Path, int8: Path | None,
            threads: int) -> list[tuple[str, Predictor]]:
    """Every engine and precision to compare, PyTorch fp32 (the reference) first."""
    rows: list[tuple[str, Predictor]] = [
        ("pytorch fp32", TorchPredictor.from_path(run_dir, threads=threads)),
        ("pytorch bf16 autocast", TorchPredictor.from_path(run_dir, threads=threads, precision=BF16)),
        (BASELINE, OnnxPredictor(fp32, threads=threads)),
        ("onnxruntime int8", OnnxPredictor(ort_int8, threads=threads)),
        ("openvino fp32", OpenVinoPredictor(fp32, threads=threads)),
        ("openvino bf16", OpenVinoPredictor(fp32, threads=threads, precision=BF16)),
    ]
    if int8 is not None:
        rows.append(("openvino int8", OpenVinoPredictor(int8, threads=threads)))
    return rows


def bench_run(run_dir: str | os.PathLike[str], threads: int, iterations: int = 50, batch_size: int = 32,
              batch_iterations: int = 5, warmup: int = 5, data: str | os.PathLike[str] | None = None,
              seed: int = 0) -> BenchReport:
    """Time every engine on the same validation images with the same threads.

    The run's `export/model.onnx` is used where it exists (else a fresh export in a temporary folder), and
    `export/model-int8.xml` where `lesionlab export RUN --int8` installed one (else no OpenVINO int8 row);
    the ONNX Runtime int8 model is quantized afresh, in a temporary folder, on training images of the split.
    """
    run = Path(run_dir)
    fp32, int8 = default_paths(run, None)
    reference = TorchPredictor.from_path(run)
    samples = split_samples(run, "val", data, batch_size, seed)
    single, batch = timing_batches(load_batch(samples, reference.preprocessing, "benchmark images").images,
                                   batch_size)
    with tempfile.TemporaryDirectory(prefix="lesionlab-bench-") as work:
        exported = fp32.is_file()
        if not exported:
            fp32 = export_onnx(reference.model, reference.card,
                               Path(work) / EXPORT_DIR / FP32_NAME, reference.temperature)
        int8_file = int8 if int8.is_file() else None
        calibration = load_batch(split_samples(run, "train", data, CALIBRATION_IMAGES, seed),
                                 reference.preprocessing, "calibration images").images
        ort_int8 = quantize_onnxruntime(fp32, Path(work) / "model-ort-int8.onnx", calibration)
        predictors = engines(run, fp32, ort_int8, int8_file, threads)
        expected = predictors[0][1].predict_batch(batch)
        rows = tuple(
            BenchRow(name, time_predictor(predictor, single, batch, iterations, batch_iterations, warmup),
                     float(np.abs(predictor.predict_batch(batch) - expected).max()))
            for name, predictor in predictors
        )
    return BenchReport(rows=rows, threads=threads, batch_size=batch_size,
                       input_size=reference.preprocessing.input_size,
                       onnx_file=fp32 if exported else None, int8_file=int8_file)
