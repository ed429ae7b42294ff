"""Timing one predictor the same way everywhere (`lesionlab bench`, the int8 speed check of `lesionlab
export`): untimed warm-up calls first, batch-1 latency percentiles (what one web request waits) and batch
throughput (what a bulk job gets). Torch-free, so it can time the exported engines on their own."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lesionlab.inference.base import Predictor


@dataclass(frozen=True)
class Timing:
    """Batch-1 latency percentiles in milliseconds and batch throughput in images per second."""

    p50_ms: float
    p95_ms: float
    images_per_second: float


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


def time_predictor(predictor: Predictor, single: np.ndarray, batch: np.ndarray, iterations: int = 50,
                   batch_iterations: int = 5, warmup: int = 5) -> Timing:
    """Latency percentiles of `single` (one image) and the median throughput on `batch`."""
    latencies = call_times(lambda: predictor.predict_batch(single), iterations, warmup) * 1000.0
    batch_times = call_times(lambda: predictor.predict_batch(batch), batch_iterations, 1)
    return Timing(
        p50_ms=float(np.percentile(latencies, 50)),
        p95_ms=float(np.percentile(latencies, 95)),
        images_per_second=float(len(batch) / np.median(batch_times)),
    )


def timing_batches(images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image and a batch of `batch_size` taken from `images` (repeated when there are fewer)."""
    repeats = -(-batch_size // len(images))
    batch = np.ascontiguousarray(np.concatenate([images] * repeats)[:batch_size])
    return batch[:1].copy(), batch
