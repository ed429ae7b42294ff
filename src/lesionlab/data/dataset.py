"""The PyTorch view of a list of samples: uint8 pixels in, transformed tensor and label out.

Pixels come from the decoded-image cache when one is given, else are decoded and resized on the fly with the
same function the cache used, so a model sees identical inputs either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from lesionlab.data.cache import DecodedImageCache
from lesionlab.data.imageio import load_resized_array
from lesionlab.data.readers.samples import Sample
from lesionlab.errors import DataError

ImageTransform = Callable[[torch.Tensor], torch.Tensor]


class LesionDataset(Dataset[tuple[torch.Tensor, int]]):
    """Item `i` is `(transform(uint8 tensor (3, size, size)), label)`; no transform: the uint8 tensor."""

    def __init__(
        self,
        samples: Sequence[Sample],
        size: int,
        transform: ImageTransform | None = None,
        cache: DecodedImageCache | None = None,
    ) -> None:
        if cache is not None and cache.size != size:
            raise DataError(
                f"{cache.array_path}: the cache holds {cache.size}px images but the dataset wants "
                f"{size}px; make the cache with size={size}"
            )
        if cache is not None and not cache.is_ready([sample.image_id for sample in samples]):
            raise DataError(
                f"{cache.array_path}: decoded-image cache is missing, stale or lacks some of these "
                "images; call cache.ensure(table.samples) first"
            )
        self.samples = list(samples)
        self.size = size
        self.transform = transform
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        """Labels in item order (for class weights and weighted samplers)."""
        return [sample.label for sample in self.samples]

    def pixels(self, index: int) -> torch.Tensor:
        """The untransformed uint8 image of item `index`, shape (3, size, size)."""
        sample = self.samples[index]
        if self.cache is not None:
            resized = self.cache.get(sample.image_id)
        else:
            resized = load_resized_array(sample.path, self.size)
        return torch.from_numpy(resized).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.pixels(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.samples[index].label
