"""Checkpoints as safetensors weights plus a JSON model card: loading a model never unpickles anything.

The card says everything needed to rebuild and use the network (architecture, classes, input size,
mean/std, grayscale, head) and where it came from (stage, epoch, metrics, run). `ModelCard` and `read_card`
import no torch, so ONNX-only tools can read cards without PyTorch installed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lesionlab.errors import CheckpointError
from lesionlab.io_utils import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    from torch import nn

WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"
BEST_STEM = "best"


@dataclass
class ModelCard:
    """What a checkpoint is: enough to rebuild the model, pre-process its input, and trace its origin."""

    arch: str
    num_classes: int
    classes: list[str]
    input_size: int
    mean: list[float]
    std: list[float]
    grayscale: bool
    head_hidden: int
    dropout: float
    stage: int
    epoch: int
    metrics: dict[str, float] = field(default_factory=dict)
    run_name: str = ""
    metadata: dict[str, Any] | None = None
    """The patient fields the model reads (`fields`, `dropout`, `hidden`); None for an image-only model."""
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any], source: str | os.PathLike[str] = "model card") -> ModelCard:
        """Build a card from parsed JSON; missing fields are a `CheckpointError` naming the file."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - payload.keys())
        if missing:
            raise CheckpointError(f"{source}: model card lacks {', '.join(missing)}; it was not written by "
                                  f"lesionlab or is damaged. Re-create it with `lesionlab train`.")
        return cls(**{key: value for key, value in payload.items() if key in names})


def checkpoint_stem(path: str | os.PathLike[str]) -> Path:
    """Accept `x`, `x.safetensors` or `x.json` and return the shared stem `x`."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (WEIGHTS_SUFFIX, CARD_SUFFIX) else path


def stage_best_stem(run_dir: str | os.PathLike[str], stage: int) -> Path:
    """`<run_dir>/stage<k>-best`: the best checkpoint of stage k (1-based), without suffix."""
    return Path(run_dir) / f"stage{stage}-best"


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read the JSON card beside a checkpoint (any of stem, `.safetensors`, `.json`)."""
    card_path = checkpoint_stem(path).with_suffix(CARD_SUFFIX)
    try:
        payload = json.loads(card_path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise CheckpointError(f"{card_path}: model card not found; pass a checkpoint written by lesionlab "
                              f"train (its .safetensors and .json sit side by side).") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{card_path}: not valid JSON ({error}); the file is damaged, re-train or "
                              f"restore it.") from error
    if not isinstance(payload, dict):
        raise CheckpointError(f"{card_path}: expected a JSON object with the model card.")
    return ModelCard.from_dict(payload, card_path)


def save_checkpoint(path_stem: str | os.PathLike[str], model: nn.Module, card: ModelCard) -> Path:
    """Write `<stem>.safetensors` then `<stem>.json`, each atomically; return the weights path."""
    from safetensors.torch import save

    stem = checkpoint_stem(path_stem)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    weights_path = stem.with_suffix(WEIGHTS_SUFFIX)
    atomic_write_bytes(weights_path, save(state, metadata={"arch": card.arch}))
    atomic_write_json(stem.with_suffix(CARD_SUFFIX), card.to_dict())
    return weights_path


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a safetensors file into CPU tensors; a truncated or corrupt file is a `CheckpointError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    weights_path = checkpoint_stem(path).with_suffix(WEIGHTS_SUFFIX)
    try:
        return load(weights_path.read_bytes())
    except FileNotFoundError as error:
        raise CheckpointError(f"{weights_path}: checkpoint weights not found; pass an existing checkpoint "
                              f"or run directory.") from error
    except (SafetensorError, ValueError, OSError) as error:
        raise CheckpointError(f"{weights_path}: unreadable safetensors file ({error}); it is truncated or "
                              f"corrupt. Use another checkpoint from the run's checkpoints/ folder."
                              ) from error


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model from its card and load the weights strictly; return it in eval mode with its card."""
    from lesionlab.models.metadata_model import MetadataSpec, with_metadata
    from lesionlab.models.registry import build_model

    card = read_card(path)
    state = load_state(path)
    model = build_model(card.arch, num_classes=card.num_classes, pretrained="none",
                        head_hidden=card.head_hidden, dropout=card.dropout)
    spec = MetadataSpec.from_dict(card.metadata, str(checkpoint_stem(path).with_suffix(CARD_SUFFIX)))
    if spec is not None:
        model = with_metadata(model, spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        weights_path = checkpoint_stem(path).with_suffix(WEIGHTS_SUFFIX)
        raise CheckpointError(f"{weights_path}: weights do not match the {card.arch} described by its card "
                              f"({error}).") from error
    return model.eval(), card


def load_run(run_dir: str | os.PathLike[str]) -> tuple[nn.Module, ModelCard]:
    """Load a run directory's chosen model (`best.safetensors`)."""
    run_path = Path(run_dir)
    best = run_path / f"{BEST_STEM}{WEIGHTS_SUFFIX}"
    if not best.is_file():
        raise CheckpointError(f"{run_path}: no {best.name} in this run directory; pass a finished (or at "
                              f"least one-epoch) run from `lesionlab train`, or a checkpoint file.")
    return load_checkpoint(best)
