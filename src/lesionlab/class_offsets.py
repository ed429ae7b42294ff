"""Class offsets for balanced decisions: the file a study writes and `predict`/`serve` apply.

An offset per class is added to the log-probabilities (softmax(log p + offsets)), moving decisions towards
the classes a model under-predicts; `lesionlab.evaluation.decision` fits them on a validation part. This
module only reads, writes and applies them, with numpy alone, because the ONNX path must run without torch.

File (`class-offsets.json`): `classes` (the model's class order), `offsets` (one per class, summing to zero),
`fitted_on` (which data), `members` (the runs whose averaged probabilities they were fitted to), `samples`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lesionlab.errors import ConfigError
from lesionlab.io_utils import atomic_write_json

CLASS_OFFSETS_FILE = "class-offsets.json"
PROBABILITY_FLOOR = 1e-8


def apply_class_offsets(probabilities: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Probabilities re-weighted by exp(offsets) and renormalised: softmax(log p + offsets), per row."""
    shifted = np.log(np.maximum(probabilities, PROBABILITY_FLOOR)) + offsets
    shifted -= shifted.max(axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class ClassOffsets:
    """Fitted offsets and what they were fitted to."""

    classes: tuple[str, ...]
    offsets: tuple[float, ...]
    fitted_on: str
    members: tuple[str, ...]
    samples: int

    def __post_init__(self) -> None:
        if len(self.classes) != len(self.offsets):
            raise ConfigError(f"{len(self.offsets)} offsets for {len(self.classes)} classes")

    def as_array(self) -> np.ndarray:
        """The offsets in class order."""
        return np.asarray(self.offsets, dtype=float)

    def check_members(self, run_names: Sequence[str], source: str) -> None:
        """Refuse models other than those the offsets were fitted to (by training run name): offsets fitted
        for one ensemble's probabilities shift another's in the wrong places."""
        if self.members and sorted(run_names) != sorted(self.members):
            raise ConfigError(f"{source}: class offsets were fitted for runs {', '.join(self.members)}, not "
                              f"{', '.join(run_names)}; pass those runs (RUN plus --ensemble) with the "
                              f"study's --tta.")

    def check_classes(self, classes: Sequence[str], source: str) -> None:
        """Refuse a model whose class order differs: an offset would land on the wrong class."""
        if tuple(classes) != self.classes:
            raise ConfigError(f"{source}: class offsets are for classes {', '.join(self.classes)}, the model "
                              f"has {', '.join(classes)}; use the offsets its study wrote.")


def save_class_offsets(path: Path, offsets: ClassOffsets) -> Path:
    """Write `class-offsets.json` atomically."""
    return atomic_write_json(path, asdict(offsets))


def class_offsets_file(path: str | Path) -> Path:
    """The file itself, or `class-offsets.json` inside a folder (a study's ensemble row folder)."""
    path = Path(path)
    return path / CLASS_OFFSETS_FILE if path.is_dir() else path


def load_class_offsets(path: str | Path) -> ClassOffsets:
    """Read a class-offsets file (or a folder holding one); a missing or malformed file is a `ConfigError`
    saying what to pass."""
    path = class_offsets_file(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return ClassOffsets(
            classes=tuple(str(code) for code in raw["classes"]),
            offsets=tuple(float(value) for value in raw["offsets"]),
            fitted_on=str(raw["fitted_on"]),
            members=tuple(str(member) for member in raw.get("members", ())),
            samples=int(raw["samples"]),
        )
    except FileNotFoundError as error:
        message = (f"{path}: no class-offsets file; `lesionlab study` writes one per ensemble "
                   f"(runs/study-<name>/ensemble-<name>+class-offsets/{CLASS_OFFSETS_FILE}).")
        raise ConfigError(message) from error
    except (ValueError, KeyError, TypeError) as error:
        message = f"{path}: not a class-offsets file ({error}); rerun the study to rewrite it."
        raise ConfigError(message) from error
