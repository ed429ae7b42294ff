"""Label-preserving views of a square image batch, by name: the vocabulary of test-time augmentation.

Dermoscopic images have no canonical orientation, so flips and 90° rotations keep the label. Evaluation
applies them to torch batches (`evaluation.tta`); prediction applies them here to numpy batches, because the
ONNX path must run without torch. Both take their names from this module, and a test checks that the two agree
pixel for pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from lesionlab.errors import ConfigError

IDENTITY = "identity"

NUMPY_VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    IDENTITY: lambda batch: batch,
    "hflip": lambda batch: np.flip(batch, axis=-1),
    "vflip": lambda batch: np.flip(batch, axis=-2),
    "rot90": lambda batch: np.rot90(batch, 1, axes=(-2, -1)),
    "rot180": lambda batch: np.rot90(batch, 2, axes=(-2, -1)),
    "rot270": lambda batch: np.rot90(batch, 3, axes=(-2, -1)),
    "transpose": lambda batch: np.swapaxes(batch, -2, -1),
}

VIEW_NAMES: tuple[str, ...] = tuple(NUMPY_VIEWS)

DEFAULT_VIEWS: tuple[str, ...] = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270")


def parse_views(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Turn `hflip,rot90` (or a list) into views starting with the identity; None gives the default set.

    The identity always comes first so that the same inference pass also yields the plain (no-TTA)
    predictions.
    """
    if text is None:
        return DEFAULT_VIEWS
    names = [name.strip() for name in (text.split(",") if isinstance(text, str) else text) if name.strip()]
    unknown = [name for name in names if name not in NUMPY_VIEWS]
    if unknown:
        raise ConfigError(f"unknown TTA view(s) {', '.join(unknown)}; choose from {', '.join(NUMPY_VIEWS)}")
    return (IDENTITY, *dict.fromkeys(name for name in names if name != IDENTITY))


def view_batch(batch: np.ndarray, views: Sequence[str]) -> np.ndarray:
    """Every view of a `(N, C, H, W)` batch stacked view-major: `(len(views) * N, C, H, W)`, contiguous."""
    return np.ascontiguousarray(np.concatenate([NUMPY_VIEWS[name](batch) for name in views], axis=0))
