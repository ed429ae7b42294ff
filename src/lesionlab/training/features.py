"""Train only the head on backbone features: the cheap way to run a frozen-backbone stage on a CPU.

With every feature block frozen and BatchNorm `frozen`, the backbone is a fixed function of the image, so a
forward+backward pass through it is wasted work. Two shortcuts follow:
- per batch, run the backbone under `torch.no_grad()` and build a gradient graph for the head only
  (`frozen_prefix_forward`); augmentation stays fresh every epoch;
- with `feature_cache: {views: K}`, compute the pooled features of K augmented views of every training
  image once per stage (`FeatureCache`), then each epoch draws one cached view per sampled image and trains
  the head on vectors. `views: 1` with `augment: none` is exact: the same features the image path computes.
Dropout and everything else in the head still run in train mode. In fp32, feature extraction and a frozen
prefix run a copy of the model with its (eval-mode) BatchNorms folded into their convolutions
(`lesionlab.models.fold`), which is the same function at a fraction of the cost on a CPU; the cache runs that
copy eagerly under `forward_backend: auto` (the faster engine for it here) and on the graph engine a recipe
names otherwise (`lesionlab.forward_backend`), checked against eager on its first batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm import tqdm

from lesionlab.device import Forward, to_device
from lesionlab.forward_backend import AUTO, EngineForward, forward_engine
from lesionlab.models.fold import fold_for
from lesionlab.models.freeze import FreezePlan
from lesionlab.models.pixel_input import PixelInput
from lesionlab.models.registry import pooled_features
from lesionlab.precision import forward_precision
from lesionlab.training import distributed

Batch = tuple[torch.Tensor, torch.Tensor]
log = logging.getLogger(__name__)


def frozen_prefix_length(model: nn.Module, plan: FreezePlan) -> int:
    """How many leading feature blocks are a fixed function of the image in a stage: frozen, with BatchNorm
    `frozen` (eval mode). With BatchNorm `train` a frozen block still normalises by batch statistics and
    updates them, so it is not fixed and the prefix is empty."""
    if plan.bn != "frozen":
        return 0
    blocks = len(model.features)
    return next((index for index in range(blocks) if plan.trains(f"features.{index}")), blocks)


def frozen_prefix_forward(model: PixelInput, plan: FreezePlan, precision: str) -> Forward:
    """The training forward on pixels of a stage whose first feature blocks are frozen
    (`frozen_prefix_length` of `model.network`).

    The prefix is a fixed function, so it runs forward-only: under `torch.no_grad()` (no graph, no backward),
    in the stage's forward precision (bf16 autocast where the stage's parity check chose bf16, as its feature
    cache and validation are; in fp32 as a BatchNorm-folded copy, `lesionlab.models.fold`), after the
    normalisation. The trainable rest and the head run in fp32 with a gradient graph. The copy is taken now:
    call this again whenever the prefix's weights or modes change (`train_stage` does, every epoch). A stage
    without a frozen prefix gets the model itself.
    """
    network = model.network
    length = frozen_prefix_length(network, plan)
    if length == 0:
        return model
    prefix, rest = fold_for(network.features[:length], precision), network.features[length:]

    def forward(inputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        pixels, metadata = inputs if isinstance(inputs, (tuple, list)) else (inputs, None)
        with torch.no_grad(), forward_precision(precision, pixels.device):
            frozen = prefix(model.normalise(pixels))
        pooled = torch.flatten(network.avgpool(rest(frozen.float())), 1)
        return network.classifier(pooled if metadata is None else torch.cat([pooled, metadata], dim=1))

    return forward


class PooledFeatures(nn.Module):
    """`pooled_features` of the network behind a `PixelInput`, from pixels, as a module of its own, so a graph
    engine can trace it."""

    def __init__(self, model: PixelInput) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:
        images = self.model.normalise(pixels)
        return pooled_features(self.model.network, images if metadata is None else (images, metadata))


@torch.inference_mode()
def extract_features(model: PixelInput, loader: DataLoader, device: torch.device, channels_last: bool,
                     description: str, forward_backend: str = AUTO) -> Batch:
    """Pooled backbone features and labels of every item (pixels) a loader yields, in order, in the precision
    the caller's autocast sets: in fp32 through the model's BatchNorm-folded copy, on the engine
    `forward_backend` resolves to (`lesionlab.forward_backend`, checked against eager on the first batch)."""
    precision = "bf16" if torch.is_autocast_enabled(device.type) else "fp32"
    engine = forward_engine(forward_backend, precision, device, features=True)
    backbone = EngineForward(PooledFeatures(fold_for(model, precision)), engine, description, logits=False,
                             asked=forward_backend)
    features: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for images, batch_targets in tqdm(loader, desc=description, unit="batch", leave=False,
                                          disable=not distributed.show_progress()):
        inputs = to_device(images, device, channels_last)
        features.append(backbone(*(inputs if isinstance(inputs, (tuple, list)) else (inputs,))).float().cpu())
        labels.append(batch_targets[0] if isinstance(batch_targets, (tuple, list)) else batch_targets)
    if backbone.check is not None:
        log.info("%s: %s", description, backbone.check.to_dict())
    return torch.cat(features), torch.cat(labels)


@dataclass
class FeatureCache:
    """K augmented views of every training image as pooled features: `views` (K, N, D), `labels` (N,).

    With `teacher_logits` (teachers, K, N, classes), a distilled stage's batches carry each draw's teacher
    logits of the same view.
    """

    views: torch.Tensor
    labels: torch.Tensor
    teacher_logits: torch.Tensor | None = None

    @classmethod
    def build(cls, model: PixelInput, dataset: Dataset, view_count: int, batch_size: int, workers: int,
              seed: int, device: torch.device, channels_last: bool,
              passes: Dataset | None = None, forward_backend: str = AUTO) -> FeatureCache:
        """Run the frozen backbone over `view_count` passes of the (augmenting) training set.

        One sequential loader over the passes back to back (so workers start once), seeded, so the cache is
        reproducible; `torch.manual_seed(seed)` also covers augmentation drawn in the main process.
        `passes` replaces the repeated dataset with fixed views (view-major, `distill.ViewPasses`).
        `forward_backend` picks the engine of an fp32 cache (`extract_features`).
        """
        torch.manual_seed(seed)
        passes = passes if passes is not None else ConcatDataset([dataset] * view_count)
        loader = DataLoader(passes, batch_size=batch_size, shuffle=False,
                            num_workers=workers, generator=torch.Generator().manual_seed(seed),
                            pin_memory=device.type == "cuda")
        features, labels = extract_features(model, loader, device, channels_last,
                                            f"feature cache ({view_count} view(s))", forward_backend)
        return cls(views=features.reshape(view_count, len(dataset), -1), labels=labels[:len(dataset)])

    def batches(self, order: torch.Tensor, batch_size: int, generator: torch.Generator,
                drop_last: bool) -> Iterator[Batch]:
        """Yield (features, labels) for the sampled item `order`, one random cached view per draw."""
        view_of_draw = torch.randint(self.views.shape[0], (len(order),), generator=generator)
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            items, views = order[start:start + batch_size], view_of_draw[start:start + batch_size]
            if self.teacher_logits is None:
                yield self.views[views, items], self.labels[items]
            else:
                yield self.views[views, items], (self.labels[items],
                                                 self.teacher_logits[:, views, items].transpose(0, 1))


def shared_feature_cache(build: Callable[[], FeatureCache]) -> FeatureCache:
    """A stage's feature cache built once, on rank 0, and broadcast: every rank trains on the same views."""
    if not distributed.active():
        return build()
    cache = build() if distributed.is_main() else None
    views = distributed.broadcast_tensor(cache.views if cache is not None else None)
    labels = distributed.broadcast_tensor(cache.labels if cache is not None else None)
    teacher = distributed.broadcast_tensor(cache.teacher_logits if cache is not None else None)
    assert views is not None and labels is not None
    return cache if cache is not None else FeatureCache(views=views, labels=labels, teacher_logits=teacher)
