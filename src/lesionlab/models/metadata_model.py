"""An image model with a patient-metadata branch: a small MLP on the encoded fields, concatenated with the
pooled image features before the classifier head.

`MetadataNet` keeps the MobileNetV3 layout every other part of lesionlab relies on (`features`, `avgpool`,
`classifier`, so freeze plans, BatchNorm folding and checkpoints work unchanged); its `classifier` is a
`FusedHead` whose input is the pooled image features followed by the encoded metadata. That one vector is
what the stage-1 feature cache stores (`head_input`), so cached training sees each image's own fields, and
the head's `MetadataDropout` withholds fields afresh on every path.

Inputs: `model(images, metadata)`, `model((images, metadata))` (what a `MetadataDataset` batch carries) or
`model(images)`, which is every field missing. Exported graphs take the two tensors as two inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lesionlab.data.dataset import LesionDataset
from lesionlab.data.metadata import check_fields, encode, field_widths, missing_encoding
from lesionlab.errors import ConfigError

MetadataInputs = tuple[torch.Tensor, torch.Tensor]


class MetadataDropout(nn.Module):
    """In training, replace each field of each row by its missing encoding with probability `p`.

    It is part of the model's head, so every training path (images or cached features) draws it afresh per
    batch, like `nn.Dropout`; in eval mode it is the identity.
    """

    def __init__(self, fields: Sequence[str], p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"metadata dropout must be in [0, 1], got {p}")
        self.p = float(p)
        self.widths = field_widths(fields)
        self.register_buffer("missing", missing_encoding(fields), persistent=False)
        self.register_buffer("field_of_slot", torch.repeat_interleave(
            torch.arange(len(self.widths)), torch.tensor(self.widths)), persistent=False)

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return encoded
        dropped = torch.rand(encoded.shape[0], len(self.widths), device=encoded.device) < self.p
        mask = dropped[:, self.field_of_slot]
        return torch.where(mask, self.missing.to(encoded.dtype), encoded)


@dataclass(frozen=True)
class MetadataSpec:
    """Which fields a model reads, its training dropout of fields, and the MLP's width (the model card's
    `metadata` entry and the recipe's `metadata:` key)."""

    fields: tuple[str, ...]
    dropout: float
    hidden: int

    @property
    def width(self) -> int:
        """Length of the encoded metadata vector."""
        return sum(field_widths(self.fields))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as stored in a model card."""
        return {"fields": list(self.fields), "dropout": self.dropout, "hidden": self.hidden}

    @classmethod
    def from_dict(cls, payload: dict[str, Any] | None, where: str) -> MetadataSpec | None:
        """A spec from a card or recipe entry; None (no metadata branch) stays None."""
        if payload is None:
            return None
        try:
            return cls(check_fields(list(payload["fields"]), where), float(payload["dropout"]),
                       int(payload["hidden"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"{where}: a metadata entry needs fields, dropout and hidden "
                              f"({error})") from None


class FusedHead(nn.Module):
    """The task head over `[pooled image features, encoded metadata]`: the metadata passes dropout and an
    MLP, and is concatenated with the image features before the image head."""

    def __init__(self, image_features: int, spec: MetadataSpec, head: nn.Sequential) -> None:
        super().__init__()
        self.image_features = image_features
        self.dropout = MetadataDropout(spec.fields, spec.dropout)
        self.mlp = nn.Sequential(nn.Linear(spec.width, spec.hidden), nn.ReLU())
        self.head = head

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        image, metadata = fused[:, :self.image_features], fused[:, self.image_features:]
        return self.head(torch.cat([image, self.mlp(self.dropout(metadata))], dim=1))

    def __getitem__(self, index: int) -> nn.Module:
        """The image head's layers, so `output_layer` finds the logits layer as for any head."""
        return self.head[index]


class MetadataNet(nn.Module):
    """A MobileNetV3-layout network whose head also reads the patient metadata (module docstring)."""

    def __init__(self, features: nn.Module, avgpool: nn.Module, classifier: FusedHead,
                 spec: MetadataSpec) -> None:
        super().__init__()
        self.features = features
        self.avgpool = avgpool
        self.classifier = classifier
        self.spec = spec
        self.register_buffer("missing", missing_encoding(spec.fields), persistent=False)

    def forward(self, images: torch.Tensor | Sequence[torch.Tensor],
                metadata: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(images, (tuple, list)):
            images, metadata = images
        pooled = torch.flatten(self.avgpool(self.features(images)), 1)
        return self.classifier(head_input(pooled, self.fill_missing(metadata, pooled)))

    def fill_missing(self, metadata: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """The metadata batch, or every field missing for each row of `like` when there is none."""
        if metadata is None:
            return self.missing.to(like.dtype).expand(like.shape[0], -1)
        if metadata.shape[-1] != self.spec.width:
            raise ConfigError(f"metadata batch has {metadata.shape[-1]} values per image; this model reads "
                              f"{', '.join(self.spec.fields)} ({self.spec.width} values)")
        return metadata.to(like.dtype)


def head_input(pooled: torch.Tensor, metadata: torch.Tensor) -> torch.Tensor:
    """What a `FusedHead` reads: pooled image features then the encoded metadata."""
    return torch.cat([pooled, metadata.to(pooled.dtype)], dim=1)


def with_metadata(model: nn.Module, spec: MetadataSpec) -> MetadataNet:
    """Wrap a built image model behind a metadata branch.

    Its head's first Linear is widened by `spec.hidden` inputs whose weights start at zero, so the wrapped
    model starts as exactly the image model (ImageNet hidden layer included) and learns what metadata adds.
    """
    head = copy.deepcopy(model.classifier)
    index, first = next((index, layer) for index, layer in enumerate(head) if isinstance(layer, nn.Linear))
    widened = nn.Linear(first.in_features + spec.hidden, first.out_features)
    with torch.no_grad():
        widened.weight.zero_()
        widened.weight[:, :first.in_features] = first.weight
        widened.bias.copy_(first.bias)
    head[index] = widened
    return MetadataNet(model.features, model.avgpool, FusedHead(first.in_features, spec, head), spec)


def model_metadata(model: nn.Module) -> MetadataSpec | None:
    """The metadata spec of a model, None for an image-only model."""
    return model.spec if isinstance(model, MetadataNet) else None


class MetadataDataset(LesionDataset):
    """A `LesionDataset` whose items are `((image, encoded metadata), label)` for a metadata model.

    `withhold=True` encodes every field as missing (scoring a model without its fields).
    """

    def __init__(self, base: LesionDataset, fields: Sequence[str], withhold: bool = False) -> None:
        super().__init__(base.samples, base.size, base.transform, base.cache)
        self.fields = tuple(fields)
        self.withhold = withhold

    def encoded(self, index: int) -> torch.Tensor:
        """The encoded metadata of item `index`."""
        return encode(None if self.withhold else self.samples[index].metadata, self.fields)

    def __getitem__(self, index: int) -> tuple[MetadataInputs, int]:  # type: ignore[override]
        image, label = super().__getitem__(index)
        return (image, self.encoded(index)), label
