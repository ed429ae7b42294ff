"""The reference's small CNN trained from scratch ("My Model" in seed 000): the floor transfer learning beats.

It exposes the same `features` / `avgpool` / `classifier` layout as torchvision's MobileNetV3 so that freeze
plans, the feature cache, checkpoints and Grad-CAM treat every architecture alike.
"""

from __future__ import annotations

import torch
from torch import nn

SMALL_CNN_WIDTHS: tuple[int, ...] = (32, 64, 128, 256)


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """One conv-BN-ReLU-pool step: halves the resolution and widens the channels."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallCNN(nn.Module):
    """A few conv blocks, global average pooling, and a classifier head supplied by the registry."""

    def __init__(self, classifier: nn.Module, widths: tuple[int, ...] = SMALL_CNN_WIDTHS) -> None:
        super().__init__()
        inputs = (3, *widths[:-1])
        blocks = [conv_block(c_in, c_out) for c_in, c_out in zip(inputs, widths, strict=True)]
        self.features = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of normalised images."""
        return self.classifier(torch.flatten(self.avgpool(self.features(images)), 1))
