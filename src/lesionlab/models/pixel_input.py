"""The network as deployed: resized RGB pixels (0..255) in, logits out, the model's own normalisation inside.

Deployment feeds every engine the same thing, the image squashed to the input size with lesionlab's one
resize (`data.imageio.resize_square`) and nothing else, as float32 (or uint8) `(N, 3, size, size)` pixels. The
rest of evaluation preprocessing, the grayscale mode and the per-channel normalisation, happens here, so it
travels inside the exported ONNX graph and inside the PyTorch predictor alike and the numpy side has nothing
to keep equal. The arithmetic is `transforms.eval_transform`'s on the same resized pixels: torchvision's
luminance weights truncated back to whole pixel values, then x / 255, then (x - mean) / std, in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lesionlab.models.checkpoint import ModelCard

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


class PixelInput(nn.Module):
    """`network(normalise(pixels), *extra)`: pixels RGB 0..255 `(N, 3, H, W)`, any real or integer dtype;
    `extra` is a metadata model's encoded patient fields."""

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

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the network itself is trained on, from 0..255 pixels."""
        values = pixels.to(torch.float32)
        if self.grayscale:
            red, green, blue = values[:, 0], values[:, 1], values[:, 2]
            gray = torch.floor(red * GRAY_WEIGHTS[0] + green * GRAY_WEIGHTS[1] + blue * GRAY_WEIGHTS[2])
            values = gray[:, None].expand(-1, 3, -1, -1)
        return (values * (1.0 / 255) - self.mean) / self.std

    def forward(self, pixels: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalise(pixels), *extra)
