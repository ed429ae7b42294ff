"""The training and forward-pass benchmarks still run end to end, on a tiny generated dataset in seconds.

They are scripts, not part of the package, so nothing else imports them; without this test a change in
lesionlab's training or inference API would break them unnoticed until the next time someone measures.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from lesionlab.precision import native_bf16

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--n", "8", "--size", "64", "--batch-size", "4", "--workers", "0", "--pretrained", "none"]


def load_benchmark(name: str) -> ModuleType:
    """Import `benchmarks/<name>.py` by path (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_training_prints_every_table(tiny_ham_dataset: Callable[..., Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = tiny_ham_dataset(images_per_class=2)
    load_benchmark("bench_training").main([
        "--data", str(data), *TINY, "--views", "1", "--head-epochs", "1", "--schedule", "48,64",
        "--epochs", "2", "--plans", "all", "features.7-12,head",
    ])
    output = capsys.readouterr().out
    assert "(a) plain torchvision loop" in output
    assert "(c'') lesionlab full fine-tune, channels_last, MixUp or CutMix on every batch" in output
    assert "schedule 48/64, average over 2 epochs" in output
    assert "features.7-12,head" in output and "features.0-6" in output and "fp32 prefix img/s" in output
    assert "load average" in output


@pytest.mark.skipif(not native_bf16(torch.device("cpu")), reason="this CPU has no native bf16")
def test_bench_forward_prints_speed_and_parity(tiny_ham_dataset: Callable[..., Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = tiny_ham_dataset(images_per_class=2)
    load_benchmark("bench_forward").main(["--data", str(data), *TINY, "--repeats", "1"])
    output = capsys.readouterr().out
    assert "stage-1 feature cache" in output and "TTA inference, 6 views" in output
    assert "plain (identity view)" in output and "TTA mean of 6 views" in output
    assert "fp32 folded, onnxruntime (lesionlab)" in output and "bf16 unfolded (lesionlab)" in output
    assert "cached features, folded fp32 against unfolded fp32: smallest cosine similarity" in output


def test_bench_architectures_prints_ratios_to_mobilenet_v3_small(capsys: pytest.CaptureFixture[str]) -> None:
    load_benchmark("bench_architectures").main([
        "--archs", "efficientnet_lite0", "--sizes", "32", "--batch-size", "2", "--eval-batch-size", "2",
        "--steps", "1", "--repeats", "1",
    ])
    lines = capsys.readouterr().out.splitlines()
    baseline = next(line for line in lines if line.startswith("mobilenet_v3_small"))
    assert baseline.split()[4] == "1.00"
    assert any(line.startswith("efficientnet_lite0") for line in lines)
