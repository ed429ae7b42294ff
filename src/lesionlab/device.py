"""Where tensors run: the device a recipe or option names, and moving an image batch there. Shared by training
and evaluation, so both pick and lay out devices by one rule."""

from __future__ import annotations

import torch

from lesionlab.errors import ConfigError


def pick_device(choice: str) -> torch.device:
    """`auto` picks CUDA when present, else the CPU."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("recipe key 'device' is cuda but no CUDA device is available; use auto or cpu")
    return torch.device(choice)


def to_device(images: torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor], device: torch.device,
              channels_last: bool) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Move an image batch to the device, in channels-last layout when asked (faster convolutions on CPU).

    A tuple (a metadata model's `(images, metadata)`) moves element by element.
    """
    if isinstance(images, (tuple, list)):
        return tuple(to_device(part, device, channels_last) for part in images)
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images
