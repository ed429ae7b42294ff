"""Train only the head on backbone features: the cheap way to run a frozen-backbone stage on a CPU.

With every feature block frozen and BatchNorm `frozen`, the backbone is a fixed function of the image, so a
forward+backward pass through it is wasted work. Two shortcuts follow:
- per batch, run the backbone under `torch.no_grad()` and build a gradient graph for the head only
  (`frozen_backbone_forward`); augmentation stays fresh every epoch;
- with `feature_cache: {views: K}`, compute the pooled features of K augmented views of every training
  image once per stage (`FeatureCache`), then each epoch draws one cached view per sampled image and trains
  the head on vectors. `views: 1` with `augment: none` is exact: the same features the image path computes.
Dropout and everything else in the head still run in train mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm import tqdm

from lesionlab.models.registry import pooled_features

Batch = tuple[torch.Tensor, torch.Tensor]


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Move an image batch to the device, in channels-last layout when asked (faster convolutions on CPU)."""
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images


def frozen_backbone_forward(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward function that builds no graph through the (frozen, eval-mode) backbone."""

    def forward(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = pooled_features(model, images)
        return model.classifier(features)

    return forward


@torch.inference_mode()
def extract_features(model: nn.Module, loader: DataLoader, device: torch.device, channels_last: bool,
                     description: str) -> Batch:
    """Pooled backbone features and labels of every item a loader yields, in order."""
    features: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for images, batch_targets in tqdm(loader, desc=description, unit="batch", leave=False):
        features.append(pooled_features(model, to_device(images, device, channels_last)).float().cpu())
        labels.append(batch_targets[0] if isinstance(batch_targets, (tuple, list)) else batch_targets)
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
    def build(cls, model: nn.Module, dataset: Dataset, view_count: int, batch_size: int, workers: int,
              seed: int, device: torch.device, channels_last: bool,
              passes: Dataset | None = None) -> FeatureCache:
        """Run the frozen backbone over `view_count` passes of the (augmenting) training set.

        One sequential loader over the passes back to back (so workers start once), seeded, so the cache is
        reproducible; `torch.manual_seed(seed)` also covers augmentation drawn in the main process.
        `passes` replaces the repeated dataset with fixed views (view-major, `distill.ViewPasses`).
        """
        torch.manual_seed(seed)
        passes = passes if passes is not None else ConcatDataset([dataset] * view_count)
        loader = DataLoader(passes, batch_size=batch_size, shuffle=False,
                            num_workers=workers, generator=torch.Generator().manual_seed(seed),
                            pin_memory=device.type == "cuda")
        features, labels = extract_features(model, loader, device, channels_last,
                                            f"feature cache ({view_count} view(s))")
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
