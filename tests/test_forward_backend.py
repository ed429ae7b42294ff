"""The engine of forward-only passes: its choice, its check against eager, its fallback, and that the passes
it runs (the feature cache, evaluation inference) give eager's results. OpenVINO's engine is tested in
tests/test_deploy.py (OpenVINO must not be loaded in this process before tests that fork loader workers)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from lesionlab.data.split import Split
from lesionlab.device import CPU_FORWARD_CHUNK, forward_in_chunks
from lesionlab.errors import ConfigError
from lesionlab.evaluation.inference import InferenceSettings, infer_view_logits
from lesionlab.forward_backend import (
    AUTO,
    ENGINE_RUNS,
    ONNXRUNTIME,
    OPENVINO,
    PROBABILITY_TOLERANCE,
    TORCH,
    EngineForward,
    check_backend_choice,
    check_worker_forks,
    forward_engine,
    loader_workers,
)
from lesionlab.models.fold import fold_batchnorm
from lesionlab.models.pixel_input import PixelInput
from lesionlab.models.registry import IMAGENET_MEAN, IMAGENET_STD, build_model
from lesionlab.training.features import FeatureCache
from lesionlab.training.recipe import load_recipe
from lesionlab.training.runner import train_run

CPU = torch.device("cpu")
SIZE = 32


class Images(Dataset):
    """Fixed random images with labels, as a loader yields them."""

    def __init__(self, count: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(count, 3, SIZE, SIZE, generator=generator)
        self.labels = torch.arange(count) % 7

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    network = build_model("mobilenet_v3_small", pretrained="none").eval()
    for module in network.modules():  # non-trivial BatchNorm statistics, so folding is exercised
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return network


def test_choice() -> None:
    assert forward_engine(AUTO, "auto", CPU) == ONNXRUNTIME
    assert forward_engine(AUTO, "fp32", CPU) == ONNXRUNTIME
    assert forward_engine(AUTO, "fp32", CPU, features=True) == TORCH  # the faster engine for a feature cache
    assert forward_engine(ONNXRUNTIME, "fp32", CPU, features=True) == ONNXRUNTIME  # asked for by name
    assert forward_engine(AUTO, "bf16", CPU) == TORCH  # bf16 runs eager under autocast
    assert forward_engine(ONNXRUNTIME, "bf16", CPU) == TORCH  # a stage whose parity check chose bf16
    assert forward_engine(TORCH, "fp32", CPU) == TORCH
    assert forward_engine(OPENVINO, "fp32", CPU) == OPENVINO
    assert forward_engine(AUTO, "fp32", torch.device("cuda")) == TORCH
    with pytest.raises(ConfigError, match="runs on a CPU"):
        forward_engine(ONNXRUNTIME, "fp32", torch.device("cuda"))
    with pytest.raises(ConfigError, match="fp32 only"):
        check_backend_choice(ONNXRUNTIME, "bf16")
    with pytest.raises(ConfigError, match="choose one of"):
        check_backend_choice("tensorrt", "fp32")


def test_recipe_key() -> None:
    assert load_recipe().forward_backend == AUTO
    with pytest.raises(ConfigError, match="fp32 only"):
        load_recipe(overrides=["forward_backend=onnxruntime", "precision=bf16"])


def test_openvino_never_runs_beside_forked_loader_workers(tiny_split: tuple[Any, Split],
                                                         tmp_path: Path) -> None:
    """OpenVINO loaded in the main process can crash workers forked after it: training with both is refused
    before the run folder exists, naming the recipe keys, and a pass on OpenVINO reads in the main process."""
    table, split = tiny_split
    recipe = load_recipe(overrides=["forward_backend=openvino", "workers=2"])
    run_dir = tmp_path / "run"
    keys = r"recipe keys 'forward_backend' and 'workers'.*set workers=0.*forward_backend=auto"
    with pytest.raises(ConfigError, match=keys):
        train_run(recipe, table, split, run_dir)
    assert not run_dir.exists()
    check_worker_forks(OPENVINO, 0)
    check_worker_forks(ONNXRUNTIME, 2)
    assert loader_workers(OPENVINO, 2) == 0 and loader_workers(ONNXRUNTIME, 2) == 2


@torch.inference_mode()
def test_engine_matches_eager_and_is_kept(model: nn.Module) -> None:
    folded = fold_batchnorm(model)
    images = torch.rand(6, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    forward = EngineForward(folded, ONNXRUNTIME, "test", logits=True)
    first, second = forward(images), forward(images[:3])  # a smaller batch: the graph's batch is dynamic
    assert forward.check is not None and forward.check.engine == ONNXRUNTIME
    assert forward.check.fallback is None
    assert forward.check.max_difference <= PROBABILITY_TOLERANCE and forward.check.top1_agreement == 1.0
    expected = folded(images)
    assert torch.allclose(first, expected, atol=1e-4) and torch.allclose(second, expected[:3], atol=1e-4)


@torch.inference_mode()
def test_disagreement_falls_back_to_eager(model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    real = ENGINE_RUNS[ONNXRUNTIME]

    def skewed(graph: bytes, threads: int) -> Callable[..., torch.Tensor]:
        run = real(graph, threads)
        return lambda *inputs: run(*inputs) + torch.linspace(0, 1, 7)

    monkeypatch.setitem(ENGINE_RUNS, ONNXRUNTIME, skewed)
    folded = fold_batchnorm(model)
    images = torch.rand(4, 3, SIZE, SIZE)
    forward = EngineForward(folded, ONNXRUNTIME, "test", logits=True)
    outputs = [forward(images), forward(images)]
    assert forward.check is not None and forward.check.engine == TORCH
    assert "disagreed" in (forward.check.fallback or "")
    assert forward.check.max_difference > PROBABILITY_TOLERANCE
    for output in outputs:
        assert torch.equal(output, folded(images))


@torch.inference_mode()
def test_engine_failure_falls_back_to_eager(model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(graph: bytes, threads: int) -> Callable[..., torch.Tensor]:
        raise RuntimeError("no kernel for this node")

    monkeypatch.setitem(ENGINE_RUNS, ONNXRUNTIME, broken)
    folded = fold_batchnorm(model)
    images = torch.rand(2, 3, SIZE, SIZE)
    forward = EngineForward(folded, ONNXRUNTIME, "test", logits=True)
    assert torch.equal(forward(images), folded(images))
    assert forward.check is not None and forward.check.engine == TORCH
    assert "no kernel for this node" in (forward.check.fallback or "")


def test_auto_builds_the_feature_cache_eagerly(model: nn.Module) -> None:
    dataset = Images(12)
    pixels = PixelInput.normalising(model, IMAGENET_MEAN, IMAGENET_STD)
    auto, eager = (FeatureCache.build(pixels, dataset, 1, 8, 0, 0, CPU, True, forward_backend=backend).views
                   for backend in (AUTO, TORCH))
    assert torch.equal(auto, eager)


def test_feature_cache_same_on_every_engine(model: nn.Module) -> None:
    dataset = Images(20)
    pixels = PixelInput.normalising(model, IMAGENET_MEAN, IMAGENET_STD)
    caches = {
        backend: FeatureCache.build(pixels, dataset, 2, 8, 0, 0, CPU, True, forward_backend=backend)
        for backend in (TORCH, ONNXRUNTIME)
    }
    eager, engine = caches[TORCH].views, caches[ONNXRUNTIME].views
    assert engine.shape == eager.shape == (2, 20, 576)
    assert float((engine - eager).abs().max() / eager.abs().max()) < 1e-4
    assert torch.equal(caches[TORCH].labels, caches[ONNXRUNTIME].labels)


def test_inference_same_on_every_engine(model: nn.Module) -> None:
    dataset = Images(10)
    views = ("identity", "hflip", "rot90")
    logits, checks = {}, []
    for engine in (TORCH, ONNXRUNTIME):
        settings = InferenceSettings(CPU, 4, 0, True, "fp32", engine)
        logits[engine] = infer_view_logits(model, dataset, settings, views, engine, checks)
    assert logits[TORCH].shape == (10, 3, 7)
    assert abs(logits[TORCH] - logits[ONNXRUNTIME]).max() < 1e-4
    assert [check.engine for check in checks] == [ONNXRUNTIME]


@torch.inference_mode()
def test_forward_passes_on_a_cpu_run_in_chunks_with_the_whole_batch_output(
    model: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ENGINE_RUNS[ONNXRUNTIME]
    batch_sizes: list[int] = []

    def counting(graph: bytes, threads: int) -> Callable[..., torch.Tensor]:
        run = real(graph, threads)

        def call(*inputs: torch.Tensor) -> torch.Tensor:
            batch_sizes.append(len(inputs[0]))
            return run(*inputs)

        return call

    monkeypatch.setitem(ENGINE_RUNS, ONNXRUNTIME, counting)
    folded = fold_batchnorm(model)
    images = torch.rand(2 * CPU_FORWARD_CHUNK + 3, 3, SIZE, SIZE)
    forward = EngineForward(folded, ONNXRUNTIME, "test", logits=True)
    forward(images)
    assert forward.check is not None and forward.check.engine == ONNXRUNTIME
    batch_sizes.clear()
    output = forward(images)
    assert batch_sizes == [CPU_FORWARD_CHUNK, CPU_FORWARD_CHUNK, 3]
    assert torch.allclose(output, folded(images), atol=1e-4)

    eager_batches: list[int] = []

    def network(pixels: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
        eager_batches.append(len(pixels))
        return folded(pixels) + fields.sum(dim=1, keepdim=True)

    fields = torch.rand(len(images), 4)
    pair = forward_in_chunks(lambda inputs: network(*inputs), (images, fields))
    assert eager_batches == [CPU_FORWARD_CHUNK, CPU_FORWARD_CHUNK, 3]
    assert torch.allclose(pair, folded(images) + fields.sum(dim=1, keepdim=True), atol=1e-5)
    feature_batches: list[int] = []
    features = torch.rand(100, 576)  # cached features, not images: one call
    forward_in_chunks(lambda batch: feature_batches.append(len(batch)) or batch, features)
    assert feature_batches == [100]
