"""Where tensors run: the device a recipe or option names, moving an image batch there, and the batch size a
forward-only pass runs at. Shared by training and evaluation, so both pick devices and lay out batches by one
rule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


Forward = Callable[..., torch.Tensor]
"""A forward-only pass: a model, or a function of a batch (and a metadata model's fields), giving outputs."""

CPU_FORWARD_CHUNK = 16
"""Images per forward-only call on a CPU. On 2 cores (MobileNetV3-Small, 257 px, 2 threads; benchmarks/
bench_forward.py) eager fp32 calls of 16 images ran 6-view TTA 1.86x and the feature cache 1.59x as fast as
batches of 128: a small batch's activations stay in the processor's caches. Loader batches stay large (fewer
hand-overs from the workers); only the forward call is split."""


def _chunks(value: Any, size: int) -> list[Any]:
    """`value` (a tensor, or a tuple of them such as a metadata model's `(images, metadata)`) cut along its
    first dimension."""
    if isinstance(value, (tuple, list)):
        return [tuple(parts) for parts in zip(*(_chunks(part, size) for part in value), strict=True)]
    return list(value.split(size))


def _first_tensor(value: Any) -> torch.Tensor:
    """The image batch of `inputs[0]`: the tensor itself, or the first of a `(images, metadata)` pair."""
    return _first_tensor(value[0]) if isinstance(value, (tuple, list)) else value


def forward_in_chunks(forward: Forward, *inputs: Any) -> torch.Tensor:
    """`forward(*inputs)` on an image batch, run `CPU_FORWARD_CHUNK` images at a time on a CPU and in one
    call elsewhere (a GPU wants large batches) or on inputs that are not images (cached features). For a
    model in eval mode every image's output is its own, so the concatenation is the whole batch's output;
    training steps never come here (BatchNorm in train mode normalises by the whole batch)."""
    first = _first_tensor(inputs[0])
    if first.device.type != "cpu" or first.dim() != 4 or len(first) <= CPU_FORWARD_CHUNK:
        return forward(*inputs)
    pieces = zip(*(_chunks(value, CPU_FORWARD_CHUNK) for value in inputs), strict=True)
    return torch.cat([forward(*piece) for piece in pieces])
