"""The frozen-backbone shortcuts compute what the full model would, and train only the head."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from lesionlab.data.dataset import LesionDataset
from lesionlab.data.readers import read_dataset
from lesionlab.data.transforms import eval_transform, train_transform
from lesionlab.models.freeze import apply_plan, resolve_plan, set_train_mode
from lesionlab.models.pixel_input import PixelInput
from lesionlab.models.registry import IMAGENET_MEAN, IMAGENET_STD, architecture, build_model
from lesionlab.precision import native_bf16
from lesionlab.training.features import (
    FeatureCache,
    extract_features,
    frozen_prefix_forward,
    frozen_prefix_length,
)

SIZE = 32


@pytest.fixture
def samples(tiny_ham_dataset: Callable[..., Path]) -> list:
    return read_dataset(tiny_ham_dataset(images_per_class=2, size=(SIZE, SIZE))).samples


def frozen_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("small_cnn", pretrained="none")
    spec = architecture("small_cnn")
    plan = resolve_plan("head", spec, "frozen")
    apply_plan(model, spec, plan)
    set_train_mode(model, spec, plan)
    return model


def pixel_model(model: torch.nn.Module) -> PixelInput:
    return PixelInput.normalising(model, IMAGENET_MEAN, IMAGENET_STD)


def test_one_unaugmented_view_is_an_exact_cache(samples: list) -> None:
    model = pixel_model(frozen_model())
    unaugmented = LesionDataset(samples, SIZE, train_transform("none", SIZE, False))
    evaluation = LesionDataset(samples, SIZE, eval_transform(SIZE, False))
    cache = FeatureCache.build(model, unaugmented, 1, 8, 0, 0, torch.device("cpu"), False,
                               forward_backend="torch")
    expected, labels = extract_features(model.eval(), DataLoader(evaluation, batch_size=5),
                                        torch.device("cpu"), False, "eval", forward_backend="torch")
    assert torch.equal(cache.views[0], expected)
    assert torch.equal(cache.labels, labels)


def test_views_differ_under_augmentation_and_are_reproducible(samples: list) -> None:
    model = pixel_model(frozen_model())
    augmented = LesionDataset(samples, SIZE, train_transform("strong", SIZE, False))
    first = FeatureCache.build(model, augmented, 2, 8, 0, 7, torch.device("cpu"), False)
    again = FeatureCache.build(model, augmented, 2, 8, 0, 7, torch.device("cpu"), False)
    assert first.views.shape == (2, len(samples), architecture("small_cnn").feature_width)
    assert not torch.equal(first.views[0], first.views[1])
    assert torch.equal(first.views, again.views)


def test_cached_batches_follow_the_sampled_order() -> None:
    views = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)
    cache = FeatureCache(views=views, labels=torch.arange(6))
    order = torch.tensor([5, 0, 3, 3, 1])
    batches = list(cache.batches(order, 2, torch.Generator().manual_seed(0), drop_last=True))
    assert [labels.tolist() for _, labels in batches] == [[5, 0], [3, 3]]
    for features, labels in batches:
        for row, item in zip(features, labels, strict=True):
            assert any(torch.equal(row, views[view, item]) for view in range(2))


def test_frozen_backbone_forward_matches_the_model_and_trains_only_the_head() -> None:
    model = frozen_model().eval()
    pixels = pixel_model(model)
    images = torch.rand(4, 3, SIZE, SIZE) * 255
    forward = frozen_prefix_forward(pixels, resolve_plan("head", architecture("small_cnn"), "frozen"), "fp32")
    assert torch.allclose(forward(images), pixels(images), rtol=1e-4, atol=1e-5)
    forward(images).sum().backward()
    assert all(p.grad is not None for p in model.classifier.parameters())
    assert all(p.grad is None for p in model.features.parameters())


def partly_frozen(trainable: str, bn: str) -> tuple[torch.nn.Module, object]:
    """MobileNetV3-Small with a freeze plan applied as `train_stage` applies it."""
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", pretrained="none")
    spec = architecture("mobilenet_v3_small")
    plan = resolve_plan(trainable, spec, bn)
    apply_plan(model, spec, plan)
    set_train_mode(model, spec, plan)
    return model, plan


def test_a_frozen_prefix_runs_forward_only_and_the_rest_trains() -> None:
    model, plan = partly_frozen("features.4-12,head", "frozen")
    assert frozen_prefix_length(model, plan) == 4
    pixels = pixel_model(model)
    forward = frozen_prefix_forward(pixels, plan, "fp32")
    images = torch.rand(2, 3, 64, 64) * 255
    model.eval()
    assert torch.allclose(forward(images), pixels(images), rtol=1e-4, atol=1e-5)
    forward(images).sum().backward()
    assert all(p.grad is not None for p in model.features[4:].parameters())
    assert all(p.grad is None for p in model.features[:4].parameters())


def test_frozen_blocks_with_training_batchnorm_are_no_fixed_prefix() -> None:
    model, plan = partly_frozen("features.4-12,head", "train")
    assert frozen_prefix_length(model, plan) == 0
    pixels = pixel_model(model)
    assert frozen_prefix_forward(pixels, plan, "fp32") is pixels


@pytest.mark.skipif(not native_bf16(torch.device("cpu")), reason="this CPU has no native bf16")
def test_a_bf16_prefix_feeds_an_fp32_rest_with_gradients() -> None:
    model, plan = partly_frozen("features.4-12,head", "frozen")
    pixels = pixel_model(model)
    forward = frozen_prefix_forward(pixels, plan, "bf16")
    images = torch.rand(2, 3, 64, 64) * 255
    model.eval()
    logits = forward(images)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, pixels(images), rtol=0.05, atol=0.05)
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.features[4:].parameters())
