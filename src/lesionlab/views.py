"""Label-preserving views of a square image batch, by name: the vocabulary of test-time augmentation.

Dermoscopic images have no canonical orientation, so flips and 90° rotations keep the label. Each view is
defined once, in `VIEWS`, as a sequence of three exact pixel moves (flip the rows, flip the columns, swap
rows and columns), and `apply_view` performs it on whatever holds the pixels: numpy arrays (prediction, whose
exported-model path runs without torch), torch tensors (evaluation, and the views inside an exported graph)
and Grad-CAM maps, in the channels-first or channels-last layout. `undo_view` runs the same moves backwards,
which turns a view's heat map back into the image's frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

from lesionlab.errors import ConfigError

FLIP_ROWS = "flip rows"
FLIP_COLUMNS = "flip columns"
SWAP = "swap rows and columns"

NCHW = "NCHW"
NHWC = "NHWC"
Layout = Literal["NCHW", "NHWC"]

# Where rows and columns lie in each layout; NCHW also covers any array whose last two axes are the image's
# (a heat map `(N, H, W)` or `(H, W)`).
SPATIAL_AXES: dict[str, tuple[int, int]] = {NCHW: (-2, -1), NHWC: (-3, -2)}

Pixels = TypeVar("Pixels")


@dataclass(frozen=True)
class View:
    """One view: the moves that make it, in order. Each move is its own inverse, so the view is undone by
    the same moves in reverse order."""

    moves: tuple[str, ...]


IDENTITY = "identity"

VIEWS: dict[str, View] = {
    IDENTITY: View(()),
    "hflip": View((FLIP_COLUMNS,)),
    "vflip": View((FLIP_ROWS,)),
    "rot90": View((FLIP_COLUMNS, SWAP)),  # a quarter turn counter-clockwise, as numpy's and torch's rot90
    "rot180": View((FLIP_ROWS, FLIP_COLUMNS)),
    "rot270": View((SWAP, FLIP_COLUMNS)),
    "transpose": View((SWAP,)),
}

VIEW_NAMES: tuple[str, ...] = tuple(VIEWS)

DEFAULT_VIEWS: tuple[str, ...] = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270")


def _move(batch: Any, move: str, rows: int, columns: int) -> Any:
    """One move on a numpy array or a torch tensor (both name the axis swap `swapaxes`; numpy flips with
    `np.flip`, torch with the tensor's `flip`)."""
    if move == SWAP:
        return batch.swapaxes(rows, columns)
    axis = rows if move == FLIP_ROWS else columns
    return np.flip(batch, axis) if isinstance(batch, np.ndarray) else batch.flip(axis)


def _run(batch: Pixels, moves: Sequence[str], layout: Layout) -> Pixels:
    rows, columns = SPATIAL_AXES[layout]
    for move in moves:
        batch = _move(batch, move, rows, columns)
    return batch


def apply_view(name: str, batch: Pixels, layout: Layout = NCHW) -> Pixels:
    """View `name` of a batch (numpy array or torch tensor) in `layout`; a numpy result may be a strided
    view of the input."""
    return _run(batch, VIEWS[name].moves, layout)


def undo_view(name: str, batch: Pixels, layout: Layout = NCHW) -> Pixels:
    """Turn something computed in view `name`'s frame (a heat map) back into the image's own frame."""
    return _run(batch, VIEWS[name].moves[::-1], layout)


def parse_views(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Turn `hflip,rot90` (or a list) into views starting with the identity; None gives the default set.

    The identity always comes first so that the same inference pass also yields the plain (no-TTA)
    predictions.
    """
    if text is None:
        return DEFAULT_VIEWS
    names = [name.strip() for name in (text.split(",") if isinstance(text, str) else text) if name.strip()]
    unknown = [name for name in names if name not in VIEWS]
    if unknown:
        raise ConfigError(f"unknown TTA view(s) {', '.join(unknown)}; choose from {', '.join(VIEWS)}")
    return (IDENTITY, *dict.fromkeys(name for name in names if name != IDENTITY))


def view_batch(batch: np.ndarray, views: Sequence[str], layout: Layout = NCHW) -> np.ndarray:
    """Every view of a numpy batch stacked view-major: `(len(views) * N, ...)`, contiguous."""
    return np.ascontiguousarray(np.concatenate([apply_view(name, batch, layout) for name in views], axis=0))
