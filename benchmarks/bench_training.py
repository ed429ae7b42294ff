"""Training images per second: a plain torchvision loop against lesionlab's head-only and fine-tune paths,
progressive resizing, and freeze plans with the frozen prefix in fp32 or bf16.

All rows train MobileNetV3-Small (shared ImageNet weights, the reference head) with the same augmentation
(`--augment`, `reference` by default) on the same N real images, in one process run, so the ratios compare
like with like. Each table has its own baseline, its first row:

Paths, against (a):
(a) baseline, the reference's way: an ImageFolder-style dataset decoding JPEGs with PIL transforms, a
    DataLoader, Adam, the backbone frozen by `requires_grad=False` but still run forward in train mode
    (full model forward, backward through the head);
(b) lesionlab head-only stage with `feature_cache: {views: K}`: K augmented views per image through the
    frozen backbone once, then E epochs of the head on cached vectors; images/s counts E x N images over
    all of it (cache build included);
(b') lesionlab head-only without the cache: backbone under no_grad per batch, graph for the head only;
(c) lesionlab full fine-tune (every layer trains) from the decoded-image cache, with and without
    channels_last, and (c'') with the default's MixUp/CutMix on every batch (the default mixes half).

Progressive resizing, against full fine-tuning at a fixed `--size`: one epoch at each size of `--schedule`,
then the schedule's average over a stage of `--epochs` epochs, each size weighted by the epochs
`StageConfig.epoch_image_size` gives it (total images / total time, so slow sizes count for their time).

Freeze plans, against `all`: `trainable: <plan>` with BatchNorm `frozen` (train mode in the trainable blocks,
eval mode in the frozen ones). Three ways to run the frozen prefix: the whole model as it is (the prefix then
records no autograd graph, because neither its weights nor its input require gradients; lesionlab's path
before `frozen_prefix_forward`), and `lesionlab.training.features.frozen_prefix_forward` in fp32 (no_grad,
BatchNorm folded) and in bf16 (no_grad, bf16 autocast, where a stage's parity check chose bf16); the
trainable rest runs in fp32 in every column.

Image-path rows time one epoch after a two-batch warm-up. Run from the repository root:

    nice -n 19 .venv/bin/python benchmarks/bench_training.py --n 256
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as tv1
from tqdm import tqdm

from lesionlab.classes import NUM_CLASSES
from lesionlab.data.cache import DecodedImageCache
from lesionlab.data.dataset import ImageTransform, LesionDataset
from lesionlab.data.readers import read_dataset
from lesionlab.data.readers.samples import Sample, compute_fingerprint
from lesionlab.data.transforms import PRESETS, eval_transform, train_transform
from lesionlab.models.freeze import FreezePlan, apply_plan, resolve_plan, set_train_mode
from lesionlab.models.pixel_input import PixelInput
from lesionlab.models.registry import IMAGENET_MEAN, IMAGENET_STD, architecture, build_model
from lesionlab.precision import native_bf16
from lesionlab.tables import Table, format_table
from lesionlab.training.batches import StageData, image_batches
from lesionlab.training.features import FeatureCache, frozen_prefix_forward
from lesionlab.training.imbalance import make_criterion
from lesionlab.training.loop import train_epoch
from lesionlab.training.mixing import batch_mixer
from lesionlab.training.recipe import MixingConfig, StageConfig, load_recipe

ARCH = "mobilenet_v3_small"
FREEZE_PLANS: tuple[str, ...] = ("all", "features.2-12,head", "features.4-12,head", "features.7-12,head")
WARMUP_BATCHES = 2
EVERY_BATCH_MIXED = MixingConfig(mixup_alpha=0.2, cutmix_alpha=1.0, probability=1.0)
"""The default's mixing on every batch rather than half of them: the most it can cost."""
Forward = Callable[[torch.Tensor], torch.Tensor]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="dataset (default: $LESIONLAB_DATA, then ../shared/data/ham10000)")
    parser.add_argument("--n", type=int, default=256, help="number of training images (default 256)")
    parser.add_argument("--size", type=int, default=224, help="input size in pixels (default 224)")
    parser.add_argument("--batch-size", type=int, default=50, help="training batch size (default 50)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--views", type=int, default=4, help="feature cache views K (default 4)")
    parser.add_argument("--head-epochs", type=int, default=12, help="head epochs E on the cache (default 12)")
    parser.add_argument("--augment", default="reference", choices=sorted(PRESETS),
                        help="augmentation of the lesionlab rows (default reference, as the baseline's)")
    parser.add_argument("--schedule", default="160,192,224",
                        help="progressive image sizes, none above --size (default 160,192,224)")
    parser.add_argument("--epochs", type=int,
                        help="epochs of the stage the schedule spreads over (default: the default recipe's "
                             "fine-tuning stage)")
    parser.add_argument("--plans", nargs="+", default=list(FREEZE_PLANS),
                        help=f"freeze plans to time, `all` first (default: {' '.join(FREEZE_PLANS)})")
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: PyTorch's, one per core); 1 keeps a busy machine's "
                             "lowest-priority run from two threads waiting on each other")
    parser.add_argument("--pretrained", default="imagenet",
                        help="initial weights: imagenet (default) or none (the smoke test)")
    args = parser.parse_args(argv)
    args.epochs = args.epochs or load_recipe(None).stages[-1].epochs
    args.schedule = [int(size) for size in args.schedule.split(",")]
    if max(args.schedule) > args.size:
        parser.error(f"--schedule {args.schedule} goes above --size {args.size}, the size images are "
                     f"cached at")
    if args.plans[0] != "all":
        parser.error("--plans must start with `all`, the freeze table's baseline")
    return args


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
    model = build_model(ARCH, pretrained=args.pretrained)
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


def stage_setup(trainable: str, bn: str, data: StageData,
                pretrained: str) -> tuple[PixelInput, FreezePlan, torch.optim.Optimizer, nn.Module]:
    """A pretrained model with a freeze plan applied (as `train_stage` does), behind its normalisation (it
    takes the loaders' pixels), its optimizer, a criterion."""
    spec = architecture(ARCH)
    network = build_model(ARCH, pretrained=pretrained)
    if data.channels_last:
        network = network.to(memory_format=torch.channels_last)
    plan = resolve_plan(trainable, spec, bn)
    apply_plan(network, spec, plan)
    set_train_mode(network, spec, plan)
    optimizer = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=1e-3)
    return PixelInput.normalising(network, spec.mean, spec.std), plan, optimizer, make_criterion(None)


def lesionlab_head_cached(data: StageData, args: argparse.Namespace) -> float:
    """(b) Head-only stage: build the K-view feature cache, then E head epochs on it."""
    model, _, optimizer, criterion = stage_setup("head", "frozen", data, args.pretrained)
    data.train_set.transform = data.augment(args.size)
    stage = load_recipe(None, [f"stages.0.batch_size={args.batch_size}"]).stages[0]
    start = time.perf_counter()
    cache = FeatureCache.build(model, data.train_set, args.views, stage.eval_batch_size, data.workers, 0,
                               data.device, data.channels_last)
    generator = torch.Generator().manual_seed(0)
    for _ in range(args.head_epochs):
        order = torch.randperm(len(data.train_set), generator=generator)
        batches = cache.batches(order, stage.batch_size, generator, drop_last=True)
        train_epoch(model.network.classifier, batches, len(order) // stage.batch_size, criterion, optimizer,
                    None, data, "head on cached features")
    return args.head_epochs * len(data.train_set) / (time.perf_counter() - start)


def lesionlab_image_path(data: StageData, args: argparse.Namespace, trainable: str, bn: str,
                         image_size: int | None = None, prefix: str | None = "fp32",
                         mixing: MixingConfig | None = None) -> float:
    """(b'), (c) and the other image-path rows: lesionlab's image loader and `train_epoch`, as `train_stage`
    runs them (the training transform at the epoch's size, the plan's forward, the stage's batch mixing)."""
    model, plan, optimizer, criterion = stage_setup(trainable, bn, data, args.pretrained)
    stage = load_recipe(None, [f"stages.1.batch_size={args.batch_size}"]).stages[1]
    data.train_set.transform = data.augment(image_size or args.size)
    forward: Forward = model if prefix is None else frozen_prefix_forward(model, plan, prefix)

    def epoch(limit: int | None) -> int:
        loader = image_batches(data, stage, epoch_seed=0)
        batches = itertools.islice(loader, limit)
        _, seen, _ = train_epoch(forward, batches, limit or len(loader), criterion, optimizer, None, data,
                                 trainable, mixer=batch_mixer(mixing, NUM_CLASSES))
        return seen

    return timed(epoch)


def schedule_stage(args: argparse.Namespace) -> StageConfig:
    """The fine-tuning stage with `--schedule` over `--epochs`, as a recipe would declare it."""
    sizes = ",".join(str(size) for size in args.schedule)
    return load_recipe(None, [f"image_size={args.size}", f"stages.1.epochs={args.epochs}",
                              f"stages.1.image_size=[{sizes}]"]).stages[1]


def schedule_epochs(args: argparse.Namespace) -> dict[int, int]:
    """How many epochs of the stage each scheduled size trains, by lesionlab's own rule."""
    stage = schedule_stage(args)
    sizes = [stage.epoch_image_size(epoch, args.size) for epoch in range(1, args.epochs + 1)]
    return {size: sizes.count(size) for size in args.schedule}


def ratio_rows(rows: list[tuple[str, float]]) -> tuple[tuple[str, ...], ...]:
    """Name, images/s and the ratio to the first row."""
    baseline = rows[0][1]
    return tuple((name, f"{rate:,.1f}", f"{rate / baseline:.2f}x") for name, rate in rows)


def prefix_label(plan: str) -> str:
    """What a freeze plan leaves frozen, for the table."""
    if plan == "all":
        return "none"
    first = int(plan.split(",")[0].split(".")[1].split("-")[0])
    return f"features.0-{first - 1}" if first > 1 else "features.0"


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    samples = spread_sample(read_dataset(args.data).samples, args.n)
    torch.manual_seed(0)
    epochs_at = schedule_epochs(args)
    bf16 = native_bf16(torch.device("cpu"))
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lesionlab-bench-") as cache_root:
        cache = DecodedImageCache(compute_fingerprint(samples), args.size, cache_root)
        cache.build(samples, workers=2, progress=False)

        def augment(size: int) -> ImageTransform:
            return train_transform(args.augment, size, False)

        train_set = LesionDataset(samples, args.size, augment(args.size), cache)
        val_set = LesionDataset(samples, args.size, eval_transform(args.size, False), cache)
        fast = StageData(train_set, val_set, args.workers, torch.device("cpu"), channels_last=True,
                         augment=augment)
        plain_layout = StageData(train_set, val_set, args.workers, torch.device("cpu"), channels_last=False,
                                 augment=augment)
        jobs: list[tuple[str, Callable[[], float]]] = [
            ("a", lambda: plain_torchvision(samples, args)),
            ("b", lambda: lesionlab_head_cached(fast, args)),
            ("b'", lambda: lesionlab_image_path(fast, args, "head", "frozen")),
            (f"all@{args.size}", lambda: lesionlab_image_path(fast, args, "all", "train")),
            ("c'", lambda: lesionlab_image_path(plain_layout, args, "all", "train")),
            ("c''", lambda: lesionlab_image_path(fast, args, "all", "train", mixing=EVERY_BATCH_MIXED)),
        ]
        jobs += [(f"all@{size}", lambda size=size: lesionlab_image_path(fast, args, "all", "train", size))
                 for size in args.schedule if size != args.size]
        for plan in args.plans[1:]:
            jobs.append((f"{plan}/model", lambda plan=plan: lesionlab_image_path(fast, args, plan, "frozen",
                                                                                 prefix=None)))
            jobs.append((f"{plan}/fp32", lambda plan=plan: lesionlab_image_path(fast, args, plan, "frozen")))
            if bf16:
                jobs.append((f"{plan}/bf16", lambda plan=plan: lesionlab_image_path(
                    fast, args, plan, "frozen", prefix="bf16")))
        progress = tqdm(jobs, desc="bench_training", unit="row")
        for key, measure in progress:
            progress.set_postfix_str(key)
            rates[key] = measure()
        progress.close()

    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\nMobileNetV3-Small, {args.n} images at {args.size} px, {args.augment} augmentation, batch "
          f"{args.batch_size}, {args.workers} workers, {torch.get_num_threads()} threads, {os.cpu_count()} "
          f"CPUs, load average {load} (other processes skew every row)\n")
    paths = [("(a) plain torchvision loop, frozen backbone (baseline)", rates["a"]),
             (f"(b) lesionlab head-only, feature cache K={args.views}, {args.head_epochs} epochs",
              rates["b"]),
             ("(b') lesionlab head-only, no-grad backbone per batch", rates["b'"]),
             ("(c) lesionlab full fine-tune, channels_last", rates[f"all@{args.size}"]),
             ("(c') lesionlab full fine-tune, contiguous", rates["c'"]),
             ("(c'') lesionlab full fine-tune, channels_last, MixUp or CutMix on every batch", rates["c''"])]
    print(format_table(Table(("path", "images/s", "vs (a)"), ratio_rows(paths))))

    total_epochs = sum(epochs_at.values())
    average = total_epochs / sum(count / rates[f"all@{size}"] for size, count in epochs_at.items())
    progressive = [(f"fixed {args.size} px (c, baseline)", rates[f"all@{args.size}"]),
                   *((f"one epoch at {size} px ({count} of {total_epochs} epochs)", rates[f"all@{size}"])
                     for size, count in epochs_at.items()),
                   (f"schedule {'/'.join(map(str, args.schedule))}, average over {total_epochs} epochs",
                    average)]
    print(f"\nfull fine-tune, progressive resizing vs a fixed {args.size} px")
    print(format_table(Table(("images at", "images/s", "vs fixed"), ratio_rows(progressive))))

    baseline = rates[f"all@{args.size}"]
    plan_rows = [("all (c, baseline)", "none", f"{baseline:,.1f}", "1.00x", "-", "-", "-", "-")]
    for plan in args.plans[1:]:
        model_rate, fp32_rate = rates[f"{plan}/model"], rates[f"{plan}/fp32"]
        bf16_rate = rates.get(f"{plan}/bf16")
        plan_rows.append((plan, prefix_label(plan), f"{model_rate:,.1f}", f"{model_rate / baseline:.2f}x",
                          f"{fp32_rate:,.1f}", f"{fp32_rate / model_rate:.2f}x",
                          "-" if bf16_rate is None else f"{bf16_rate:,.1f}",
                          "-" if bf16_rate is None else f"{bf16_rate / model_rate:.2f}x"))
    note = "" if bf16 else " (this CPU has no native bf16: bf16 columns left out)"
    print(f"\nfine-tune per freeze plan (BatchNorm `frozen`) at {args.size} px: the whole model, then the "
          f"frozen prefix forward-only in fp32 (folded) or bf16 autocast (frozen_prefix_forward){note}")
    print(format_table(Table(("trainable", "frozen prefix", "model img/s", "vs all", "fp32 prefix img/s",
                              "vs model", "bf16 prefix img/s", "vs model"), tuple(plan_rows),
                             numeric_from=2)))


if __name__ == "__main__":
    main()
