"""Training images per second: a plain torchvision loop against lesionlab's head-only and fine-tune paths.

All rows train MobileNetV3-Small (shared ImageNet weights, the reference head) with the `reference`
augmentation on the same N real images, in one process run, so the ratios compare like with like:

(a) baseline, the reference's way: an ImageFolder-style dataset decoding JPEGs with PIL transforms, a
    DataLoader, Adam, the backbone frozen by `requires_grad=False` but still run forward in train mode
    (full model forward, backward through the head);
(b) lesionlab head-only stage with `feature_cache: {views: K}`: K augmented views per image through the
    frozen backbone once, then E epochs of the head on cached vectors; images/s counts E x N images over
    all of it (cache build included);
(b') lesionlab head-only without the cache: backbone under no_grad per batch, graph for the head only;
(c) lesionlab full fine-tune (every layer trains) from the decoded-image cache, with and without
    channels_last.

Image-path rows time one epoch after a two-batch warm-up. Run from the repository root:

    .venv/bin/python benchmarks/bench_training.py --n 256
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from collections.abc import Callable

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as tv1

from lesionlab.data.cache import DecodedImageCache
from lesionlab.data.dataset import LesionDataset
from lesionlab.data.readers import Sample, compute_fingerprint, read_dataset
from lesionlab.data.transforms import eval_transform, train_transform
from lesionlab.models.freeze import apply_plan, resolve_plan, set_train_mode
from lesionlab.models.registry import IMAGENET_MEAN, IMAGENET_STD, architecture, build_model
from lesionlab.training.features import FeatureCache, frozen_backbone_forward
from lesionlab.training.imbalance import make_criterion
from lesionlab.training.loop import StageData, image_batches, train_epoch
from lesionlab.training.recipe import load_recipe

ARCH = "mobilenet_v3_small"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="dataset (default: $LESIONLAB_DATA, then ../shared/data/ham10000)")
    parser.add_argument("--n", type=int, default=256, help="number of training images (default 256)")
    parser.add_argument("--size", type=int, default=224, help="input size in pixels (default 224)")
    parser.add_argument("--batch-size", type=int, default=50, help="training batch size (default 50)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--views", type=int, default=4, help="feature cache views K (default 4)")
    parser.add_argument("--head-epochs", type=int, default=12, help="head epochs E on the cache (default 12)")
    return parser.parse_args()


class PilDataset(Dataset):
    """The reference's data path: open the JPEG, PIL transforms, tensor."""

    def __init__(self, samples: list[Sample], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        with Image.open(sample.path) as image:
            return self.transform(image.convert("RGB")), sample.label


def spread_sample(samples: list[Sample], count: int) -> list[Sample]:
    """`count` samples spread evenly over the table, so every class is represented."""
    step = max(len(samples) // count, 1)
    return samples[::step][:count]


WARMUP_BATCHES = 2


def timed(run_epoch: Callable[[int | None], int]) -> float:
    """Images per second of one epoch, after a short warm-up that loads kernels and page cache."""
    run_epoch(WARMUP_BATCHES)
    start = time.perf_counter()
    images = run_epoch(None)
    return images / (time.perf_counter() - start)


def plain_torchvision(samples: list[Sample], args: argparse.Namespace) -> float:
    """(a) The reference's loop: frozen params, full forward in train mode, Adam on the head."""
    transform = tv1.Compose([
        tv1.Resize((args.size, args.size)), tv1.RandomRotation(20),
        tv1.ColorJitter(brightness=0.3, contrast=0.3), tv1.RandomHorizontalFlip(), tv1.RandomVerticalFlip(),
        tv1.ToTensor(),
        tv1.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    model = build_model(ARCH, pretrained="imagenet")
    for parameter in model.features.parameters():
        parameter.requires_grad = False
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    loader = DataLoader(PilDataset(samples, transform), batch_size=args.batch_size, shuffle=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0)

    def epoch(limit: int | None) -> int:
        seen = 0
        for images, labels in itertools.islice(loader, limit):
            loss = criterion(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(labels)
        return seen

    return timed(epoch)


def stage_setup(trainable: str, bn: str, data: StageData) -> tuple[nn.Module, torch.optim.Optimizer, object]:
    """A pretrained model with a freeze plan applied, its optimizer, and a plain criterion."""
    spec = architecture(ARCH)
    model = build_model(ARCH, pretrained="imagenet")
    if data.channels_last:
        model = model.to(memory_format=torch.channels_last)
    plan = resolve_plan(trainable, spec, bn)
    apply_plan(model, spec, plan)
    set_train_mode(model, spec, plan)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return model, optimizer, make_criterion(None)


def lesionlab_head_cached(data: StageData, args: argparse.Namespace) -> float:
    """(b) Head-only stage: build the K-view feature cache, then E head epochs on it."""
    model, optimizer, criterion = stage_setup("head", "frozen", data)
    stage = load_recipe(None, [f"stages.0.batch_size={args.batch_size}"]).stages[0]
    start = time.perf_counter()
    cache = FeatureCache.build(model, data.train_set, args.views, stage.eval_batch_size, data.workers, 0,
                               data.device, data.channels_last)
    generator = torch.Generator().manual_seed(0)
    for _ in range(args.head_epochs):
        order = torch.randperm(len(data.train_set), generator=generator)
        batches = cache.batches(order, stage.batch_size, generator, drop_last=True)
        train_epoch(model.classifier, batches, len(order) // stage.batch_size, criterion, optimizer, None,
                    data, "head on cached features")
    return args.head_epochs * len(data.train_set) / (time.perf_counter() - start)


def lesionlab_image_path(data: StageData, args: argparse.Namespace, trainable: str, bn: str) -> float:
    """(c) and the uncached head path: lesionlab's image loader and `train_epoch`."""
    model, optimizer, criterion = stage_setup(trainable, bn, data)
    stage = load_recipe(None, [f"stages.1.batch_size={args.batch_size}"]).stages[1]
    spec = architecture(ARCH)
    plan = resolve_plan(trainable, spec, bn)
    forward = frozen_backbone_forward(model) if plan.backbone_frozen() else model

    def epoch(limit: int | None) -> int:
        loader = image_batches(data, stage, epoch_seed=0)
        batches = itertools.islice(loader, limit)
        _, seen, _ = train_epoch(forward, batches, limit or len(loader), criterion, optimizer, None, data,
                                 trainable)
        return seen

    return timed(epoch)


def main() -> None:
    args = parse_args()
    samples = spread_sample(read_dataset(args.data).samples, args.n)
    torch.manual_seed(0)
    rows: list[tuple[str, float]] = [("(a) plain torchvision loop, frozen backbone (baseline)",
                                      plain_torchvision(samples, args))]
    with tempfile.TemporaryDirectory(prefix="lesionlab-bench-") as cache_root:
        cache = DecodedImageCache(compute_fingerprint(samples), args.size, cache_root)
        cache.build(samples, workers=2, progress=False)
        train_set = LesionDataset(samples, args.size, train_transform("reference", args.size, False,
                                                                      IMAGENET_MEAN, IMAGENET_STD), cache)
        val_set = LesionDataset(samples, args.size, eval_transform(args.size, False, IMAGENET_MEAN,
                                                                   IMAGENET_STD), cache)
        fast = StageData(train_set, val_set, args.workers, torch.device("cpu"), channels_last=True)
        plain_layout = StageData(train_set, val_set, args.workers, torch.device("cpu"), channels_last=False)
        rows.append((f"(b) lesionlab head-only, feature cache K={args.views}, {args.head_epochs} epochs",
                     lesionlab_head_cached(fast, args)))
        rows.append(("(b') lesionlab head-only, no-grad backbone per batch",
                     lesionlab_image_path(fast, args, "head", "frozen")))
        rows.append(("(c) lesionlab full fine-tune, channels_last",
                     lesionlab_image_path(fast, args, "all", "train")))
        rows.append(("(c') lesionlab full fine-tune, contiguous",
                     lesionlab_image_path(plain_layout, args, "all", "train")))
    baseline = rows[0][1]
    width = max(len(name) for name, _ in rows)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\nMobileNetV3-Small, {args.n} images at {args.size} px, batch {args.batch_size}, "
          f"{args.workers} workers, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {load} (other processes skew every row)")
    print(f"{'path':<{width}}  {'images/s':>9}  {'vs (a)':>7}")
    for name, rate in rows:
        print(f"{name:<{width}}  {rate:>9,.0f}  {rate / baseline:>6.2f}x")


if __name__ == "__main__":
    main()
