"""A network behind its input rule: RGB pixels (0..255) in, logits out, the model's normalisation inside.

This is the one place pixels are normalised. Deployment feeds every engine the image squashed to the input
size with lesionlab's one resize (`data.imageio.resize_square`) and nothing else, as float32 (or uint8)
`(N, 3, size, size)` pixels; the grayscale mode and the per-channel normalisation happen here, so they travel
inside the exported ONNX graph and the PyTorch predictor alike. Training, validation and `evaluate` feed the
same kind of pixels from their pipelines (`data.transforms`), which apply the colour mode themselves
(training must, before it augments) and leave the normalisation to `PixelInput.normalising`.

The arithmetic is torchvision's `ToDtype(scale=True)` followed by `Normalize`, operation for operation
(x * (1 / 255), then (x - mean) / std, in float32), which the pipelines applied before this module held
the rule, so runs trained then see bit-identical input. The grayscale mode (`luminance`) is torchvision's
luminance weights truncated back to whole pixel values; the pipelines apply the same function.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lesionlab.models.checkpoint import ModelCard

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def luminance(pixels: torch.Tensor) -> torch.Tensor:
    """The grayscale mode, written once for training's pipelines and every deployed model: each of the 3
    channels of `(..., 3, H, W)` RGB 0..255 pixels becomes the luminance, truncated to a whole pixel value,
    in the input's dtype. It is torchvision's `Grayscale` on uint8, which the pipelines used before, to
    within one level on 21 of the 16.7 million colours (torchvision's fused arithmetic rounds a few exact
    halves up)."""
    values = pixels.to(torch.float32)
    red, green, blue = values.unbind(dim=-3)
    gray = torch.floor(red * GRAY_WEIGHTS[0] + green * GRAY_WEIGHTS[1] + blue * GRAY_WEIGHTS[2])
    return gray.unsqueeze(-3).expand_as(values).to(pixels.dtype)


class PixelInput(nn.Module):
    """`network(normalise(pixels), *extra)`: pixels RGB 0..255 `(N, 3, H, W)`, any real or integer dtype;
    `extra` is a metadata model's encoded patient fields, which may also come as one `(pixels, metadata)`
    pair, the way a DataLoader collates a metadata dataset's items."""

    def __init__(self, network: nn.Module, mean: Sequence[float], std: Sequence[float],
                 grayscale: bool) -> None:
        super().__init__()
        self.network = network
        self.grayscale = grayscale
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    @classmethod
    def for_card(cls, network: nn.Module, card: ModelCard) -> PixelInput:
        """The network with the normalisation and colour mode its card records."""
        return cls(network, card.mean, card.std, bool(card.grayscale))

    @classmethod
    def normalising(cls, network: nn.Module, mean: Sequence[float], std: Sequence[float]) -> PixelInput:
        """The network behind the normalisation alone, for the pixels of a `data.transforms` pipeline, which
        has already applied the colour mode (training must, before it augments)."""
        return cls(network, mean, std, grayscale=False)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the network itself is trained on, from 0..255 pixels."""
        values = pixels.to(torch.float32)
        if self.grayscale:
            values = luminance(values)
        return (values * (1.0 / 255) - self.mean) / self.std

    def forward(self, pixels: torch.Tensor | Sequence[torch.Tensor], *extra: torch.Tensor) -> torch.Tensor:
        if isinstance(pixels, (tuple, list)):
            pixels, *extra = pixels
        return self.network(self.normalise(pixels), *extra)
