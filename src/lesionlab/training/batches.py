"""What a stage trains on, and how one epoch's batches are drawn from it.

`stage_data` builds the train and val datasets once per run (pixels 0..255: the network runs behind
`pixel_input`, which normalises them); `image_batches`, `cached_batches` and `val_loader` produce an
epoch's batches from them. Every epoch draws its items from one seeded generator, in one process or over
ranks (`distributed.RankBatches`), so the same (seed, stage, epoch) gives the same batches.
`drops_last_batch` is the one rule for a last partial batch, and `steps_per_epoch` follows from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from lesionlab.data.cache import DecodedImageCache
from lesionlab.data.dataset import ImageTransform, LesionDataset
from lesionlab.data.readers.samples import SampleTable
from lesionlab.data.split import Split, split_samples_table
from lesionlab.data.transforms import eval_transform, train_transform
from lesionlab.errors import DataError
from lesionlab.models.metadata_model import MetadataDataset
from lesionlab.models.pixel_input import PixelInput
from lesionlab.models.registry import architecture
from lesionlab.training import distributed
from lesionlab.training.distill import AugmentedViews, ViewSampler
from lesionlab.training.features import FeatureCache
from lesionlab.training.imbalance import make_sampler
from lesionlab.training.recipe import Recipe, StageConfig

Targets = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
"""Labels, or (labels, teacher logits) when distilling."""
Batch = tuple[torch.Tensor, Targets]


@dataclass
class StageData:
    """What a stage trains and validates on, and how batches are produced."""

    train_set: LesionDataset
    val_set: LesionDataset
    workers: int
    device: torch.device
    channels_last: bool
    augment: Callable[[int], ImageTransform]
    """The training transform at a given output size (progressive resizing swaps it per epoch)."""
    views: AugmentedViews | None = None
    """When distilling: the fixed augmented views of `train_set`, with their teachers' logits."""
    view_count: int = 0


def stage_data(
    recipe: Recipe, table: SampleTable, split: Split, device: torch.device, needs_validation: bool = True
) -> StageData:
    """Datasets for the train and val parts, reading pixels from the decoded-image cache when enabled.

    Only a release fit (`needs_validation=False`) trains without a validation part.
    """
    if not split.parts.get("train") or (needs_validation and not split.parts.get("val")):
        raise DataError(
            f"the split of {table.root} needs non-empty train and val parts (it has "
            f"{len(split.parts.get('train', []))} train, {len(split.parts.get('val', []))} val); "
            f"make a split with a validation fraction above 0."
        )
    cache = None
    if recipe.cache:
        covered = split_samples_table(table, split)
        cache = DecodedImageCache(covered.fingerprint, recipe.image_size)
        with distributed.main_first():
            cache.ensure(covered.samples, workers=max(recipe.workers, 2))
    size, gray = recipe.image_size, recipe.grayscale

    def augment(train_size: int) -> ImageTransform:
        return train_transform(recipe.augment, train_size, gray)

    train_set = LesionDataset(split.parts["train"], size, augment(size), cache)
    val_set = LesionDataset(split.parts.get("val", []), size, eval_transform(size, gray), cache)
    if recipe.metadata is not None:
        train_set = MetadataDataset(train_set, recipe.metadata.fields)
        val_set = MetadataDataset(val_set, recipe.metadata.fields)
    return StageData(
        train_set=train_set,
        val_set=val_set,
        workers=recipe.workers,
        device=device,
        channels_last=recipe.channels_last,
        augment=augment,
    )


def pixel_input(network: nn.Module, recipe: Recipe, device: torch.device) -> PixelInput:
    """`network` as the stage's loaders feed it: their pixels (already gray where the recipe asks), normalised
    inside by the rule the deployed model applies, with the architecture's mean and std its card records."""
    spec = architecture(recipe.arch)
    return PixelInput.normalising(network, spec.mean, spec.std).to(device)


def drops_last_batch(draws: int, batch_size: int) -> bool:
    """A last partial batch is dropped when a full one exists: BatchNorm needs more than one item."""
    return draws > batch_size


def steps_per_epoch(data: StageData, stage: StageConfig) -> int:
    """Optimizer steps in one epoch of the stage (the sampler may oversample, so it sets the draw count)."""
    sampler = make_sampler(data.train_set.labels, stage.sampler_weights, torch.Generator())
    draws = len(data.train_set) if sampler is None else sampler.num_samples
    return draws // stage.batch_size if drops_last_batch(draws, stage.batch_size) else 1


def image_batches(data: StageData, stage: StageConfig, epoch_seed: int) -> DataLoader:
    """A seeded DataLoader over augmented training images."""
    generator = torch.Generator().manual_seed(epoch_seed)
    sampler = make_sampler(data.train_set.labels, stage.sampler_weights, generator)
    draws = len(data.train_set) if sampler is None else sampler.num_samples
    loader_seed = torch.Generator().manual_seed(epoch_seed + 1)
    if distributed.active():
        return rank_image_batches(data, stage, sampler, generator, epoch_seed)
    if data.views is not None:
        items = sampler if sampler is not None else torch.randperm(len(data.train_set), generator=generator)
        return DataLoader(
            data.views,
            batch_size=stage.batch_size,
            sampler=ViewSampler(items, data.view_count, generator),
            generator=loader_seed,
            num_workers=data.workers,
            drop_last=drops_last_batch(draws, stage.batch_size),
            pin_memory=data.device.type == "cuda",
        )
    return DataLoader(
        data.train_set,
        batch_size=stage.batch_size,
        sampler=sampler,
        shuffle=sampler is None,
        generator=loader_seed,
        num_workers=data.workers,
        drop_last=drops_last_batch(draws, stage.batch_size),
        pin_memory=data.device.type == "cuda",
    )


def rank_image_batches(
    data: StageData, stage: StageConfig, sampler: Any, generator: torch.Generator, epoch_seed: int
) -> DataLoader:
    """This rank's slice of every global batch of the epoch's one global draw (`distributed.RankBatches`).

    The draw is the weighted sampler's (or a permutation from the same generator), as in one process; each
    rank's workers get their own augmentation seeds.
    """
    items = sampler if sampler is not None else torch.randperm(len(data.train_set), generator=generator)
    dataset: Any = data.train_set
    if data.views is not None:
        dataset, items = data.views, ViewSampler(items, data.view_count, generator)
    stream = list(items)
    batches = distributed.RankBatches(
        stream, stage.batch_size, drop_last=drops_last_batch(len(stream), stage.batch_size)
    )
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=data.workers,
        generator=torch.Generator().manual_seed(distributed.rank_seed(epoch_seed + 1)),
        pin_memory=data.device.type == "cuda",
    )


def cached_batches(
    cache: FeatureCache, data: StageData, stage: StageConfig, epoch_seed: int
) -> Iterator[Batch]:
    """Batches of cached features in sampler order (same sampler and seed as the image path)."""
    generator = torch.Generator().manual_seed(epoch_seed)
    sampler = make_sampler(data.train_set.labels, stage.sampler_weights, generator)
    order = (
        torch.tensor(list(sampler), dtype=torch.long)
        if sampler is not None
        else torch.randperm(len(data.train_set), generator=generator)
    )
    return distributed.local_batches(
        cache.batches(
            order, stage.batch_size, generator, drop_last=drops_last_batch(len(order), stage.batch_size)
        )
    )


def val_loader(data: StageData, stage: StageConfig) -> DataLoader:
    """Validation images in file order, no augmentation; workers persist across the stage's epochs."""
    return DataLoader(
        distributed.local_subset(data.val_set),
        batch_size=stage.eval_batch_size,
        shuffle=False,
        num_workers=data.workers,
        persistent_workers=data.workers > 0,
        pin_memory=data.device.type == "cuda",
    )


def targets_to_device(targets: Targets | list[torch.Tensor], device: torch.device) -> Targets:
    """Labels, or (labels, teacher logits), on the training device (a DataLoader collates pairs as lists)."""
    if isinstance(targets, (tuple, list)):
        labels, teacher_logits = targets
        return labels.to(device, non_blocking=True), teacher_logits.to(device, non_blocking=True)
    return targets.to(device, non_blocking=True)
