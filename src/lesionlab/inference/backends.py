"""Which engine runs which model file, and at which precision: the one place `--backend` and `--precision`
are interpreted, so `predict`, `serve`, ensembles and the benchmark resolve a path the same way.

A run directory runs on PyTorch; with `--backend onnxruntime` or `openvino` it stands for its exported
`RUN/export/model.onnx`. An `.onnx` file runs on ONNX Runtime unless OpenVINO is asked for. An OpenVINO IR
file (`.xml` with its `.bin`, what `lesionlab export --int8` writes) runs on OpenVINO only. This module
imports neither torch nor any engine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lesionlab.errors import CheckpointError, ConfigError
from lesionlab.models.checkpoint import BEST_STEM, WEIGHTS_SUFFIX, checkpoint_stem

PYTORCH = "pytorch"
ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
BACKENDS = (PYTORCH, ONNXRUNTIME, OPENVINO)
FP32 = "fp32"
BF16 = "bf16"
PRECISIONS = (FP32, BF16)
BF16_BACKENDS = (PYTORCH, OPENVINO)  # ONNX Runtime's CPU provider has no bf16 switch

ONNX_SUFFIX = ".onnx"
OPENVINO_SUFFIX = ".xml"
EXPORT_DIR = "export"
FP32_NAME = "model.onnx"
INT8_NAME = "model-int8.xml"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: the engine, the file or run directory it loads, and the precision it runs at."""

    backend: str
    path: Path
    precision: str = FP32


def exported_fp32_path(run_dir: str | os.PathLike[str]) -> Path:
    """Where `lesionlab export RUN` writes a run's fp32 ONNX file."""
    return Path(run_dir) / EXPORT_DIR / FP32_NAME


def resolve_model(path: str | os.PathLike[str], backend: str | None = None,
                  precision: str = FP32) -> ModelSource:
    """The engine and file for `path` under `--backend` (None: the file's natural engine) and
    `--precision`; a combination that cannot run is a `ConfigError` that says what to pass instead."""
    given = Path(path)
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    suffix = given.suffix.lower()
    if suffix == OPENVINO_SUFFIX:
        natural, allowed = OPENVINO, (OPENVINO,)
    elif suffix == ONNX_SUFFIX:
        natural, allowed = ONNXRUNTIME, (ONNXRUNTIME, OPENVINO)
    else:
        natural, allowed = PYTORCH, BACKENDS
    chosen = backend or natural
    if chosen not in allowed:
        raise ConfigError(f"{given}: --backend {chosen} cannot run this file; use --backend "
                          f"{' or '.join(allowed)}, or pass the run directory it was exported from.")
    if precision == BF16 and chosen not in BF16_BACKENDS:
        raise ConfigError(f"--precision bf16 needs --backend {' or '.join(BF16_BACKENDS)}; ONNX Runtime runs "
                          f"this model in fp32 only.")
    if natural == PYTORCH and chosen != PYTORCH:
        given = exported_fp32_path(given)
        if not given.is_file():
            raise CheckpointError(f"{given}: --backend {chosen} runs a run's exported model and there is "
                                  f"none yet; create it with `lesionlab export {Path(path)}`.")
    return ModelSource(chosen, given, precision)


def checkpoint_weights_path(path: str | os.PathLike[str]) -> Path:
    """The `.safetensors` file behind a run directory (`best`) or a checkpoint given by stem or file name."""
    given = Path(path)
    if given.is_dir():
        weights = given / f"{BEST_STEM}{WEIGHTS_SUFFIX}"
    else:
        weights = checkpoint_stem(given).with_suffix(WEIGHTS_SUFFIX)
    if not weights.is_file():
        raise CheckpointError(f"{given}: no {weights.name} found; pass a run directory from `lesionlab "
                              f"train` (it holds best.safetensors), a checkpoint file, or an exported .onnx "
                              f"file.")
    return weights
