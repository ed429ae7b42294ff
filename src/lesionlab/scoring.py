"""The one scoring rule: the view logits of a model's members in, its class probabilities out.

Every figure lesionlab reports and every prediction it serves goes through `Scoring.probabilities`:
`lesionlab evaluate` (plain, TTA and temperature variants), ensembles evaluated or compared in a study, the
study's class-offset rows, and `predict`/`serve`/`lesionlab.load` for a single model, an ensemble or a
`model.json`. The rule, in order: each member's logits are divided by that member's temperature; softmax
per view; the mean over the views (probabilities, not logits, are averaged: each view casts a calibrated
vote, and a temperature fitted on single-view logits applies to each view as it was fitted); the mean over
the members; then the class offsets, softmax(log p + offsets). numpy only, so exported models run without
torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lesionlab.class_offsets import apply_class_offsets
from lesionlab.errors import ConfigError


def softmax(logits: np.ndarray, temperature: float | None = None) -> np.ndarray:
    """float64 softmax over the last axis of `logits / temperature` (None: no temperature)."""
    scaled = np.asarray(logits, dtype=np.float64)
    if temperature is not None:
        scaled = scaled / temperature
    shifted = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def graph_logits(probabilities: np.ndarray, temperature: float | None) -> np.ndarray:
    """Logits, on the scale `temperature` divides, of an exported graph whose output is softmax(logits / T)
    (the temperature folded into its last layer): T * log p, which differs from the network's logits by a
    constant per image and so scores identically. The floor keeps an underflowed probability finite."""
    floor = np.finfo(np.float32).tiny
    logits = np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), floor))
    return logits if temperature is None else logits * temperature


@dataclass(frozen=True)
class Scoring:
    """How a model turns its members' view logits into probabilities: one temperature per member (None:
    that member is uncalibrated) and the class offsets applied after averaging (None: no offsets)."""

    temperatures: tuple[float | None, ...] = (None,)
    class_offsets: tuple[float, ...] | None = None

    def member_probabilities(self, member: int, view_logits: np.ndarray) -> np.ndarray:
        """One member's probabilities `(N, classes)` from its logits `(N, views, classes)`: softmax of each
        view under the member's temperature, averaged over the views."""
        if view_logits.ndim != 3:
            raise ValueError(f"view logits must be (images, views, classes), got shape {view_logits.shape}")
        return softmax(view_logits, self.temperatures[member]).mean(axis=1)

    def probabilities(self, member_view_logits: Sequence[np.ndarray]) -> np.ndarray:
        """The model's probabilities `(N, classes)`: the members' view-averaged probabilities averaged, then
        shifted by the class offsets."""
        if len(member_view_logits) != len(self.temperatures):
            raise ConfigError(f"{len(member_view_logits)} members' logits for a scoring of "
                              f"{len(self.temperatures)} members")
        shapes = {(logits.shape[0], logits.shape[2]) for logits in member_view_logits}
        if len(shapes) != 1:
            raise ConfigError(f"ensemble members scored different images or classes: shapes "
                              f"{', '.join(str(logits.shape) for logits in member_view_logits)}")
        mean = np.mean([self.member_probabilities(index, logits)
                        for index, logits in enumerate(member_view_logits)], axis=0)
        if self.class_offsets is None:
            return mean
        return apply_class_offsets(mean, np.asarray(self.class_offsets, dtype=np.float64))
