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
from lesionlab.models.registry import IMAGENET_MEAN, IMAGENET_STD, architecture, build_model
from lesionlab.training.features import FeatureCache, extract_features, frozen_backbone_forward

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


def test_one_unaugmented_view_is_an_exact_cache(samples: list) -> None:
    model = frozen_model()
    no_augmentation = train_transform("none", SIZE, False, IMAGENET_MEAN, IMAGENET_STD)
    unaugmented = LesionDataset(samples, SIZE, no_augmentation)
    evaluation = LesionDataset(samples, SIZE, eval_transform(SIZE, False, IMAGENET_MEAN, IMAGENET_STD))
    cache = FeatureCache.build(model, unaugmented, 1, 8, 0, 0, torch.device("cpu"), False)
    expected, labels = extract_features(model.eval(), DataLoader(evaluation, batch_size=5),
                                        torch.device("cpu"), False, "eval")
    assert torch.equal(cache.views[0], expected)
    assert torch.equal(cache.labels, labels)


def test_views_differ_under_augmentation_and_are_reproducible(samples: list) -> None:
    model = frozen_model()
    augmented = LesionDataset(samples, SIZE, train_transform("strong", SIZE, False, IMAGENET_MEAN,
                                                             IMAGENET_STD))
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
    images = torch.randn(4, 3, SIZE, SIZE)
    forward = frozen_backbone_forward(model)
    assert torch.allclose(forward(images), model(images))
    forward(images).sum().backward()
    assert all(p.grad is not None for p in model.classifier.parameters())
    assert all(p.grad is None for p in model.features.parameters())
