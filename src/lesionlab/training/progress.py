"""Where a run stands, and the rules that read it: which epoch is best, which stages are done, epoch seeds.

`RunProgress` is the JSON half of the resume state (`training.rundir` commits it with the tensors). The stage
loop asks these functions three questions: is a stage already complete, does the run resume inside it, and
does an epoch beat the stage's best so far.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

from lesionlab.errors import ConfigError
from lesionlab.training.recipe import Recipe
from lesionlab.training.release import StageChoice


@dataclass
class RunProgress:
    """Where a run stands after its last completed epoch: the JSON part of the resume state."""

    stage: int = 0
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    stage_bests: dict[str, dict[str, Any]] = field(default_factory=dict)
    scheduler: dict[str, Any] | None = None
    train_seconds: float = 0.0
    precision: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per stage, the precision of its forward-only passes and the parity check that chose it."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> RunProgress:
        """Inverse of `to_dict`."""
        return cls(**payload)

    def resumes_inside(self, stage_index: int) -> bool:
        """Whether the last completed epoch lies inside this stage: it continues from the saved optimizer,
        schedule and weight average rather than starting from the previous stage's best checkpoint."""
        return self.stage == stage_index and self.epoch > 0


def derive_seed(seed: int, stage: int, epoch: int) -> int:
    """A 63-bit seed that depends only on (seed, stage, epoch), so resumed epochs replay identically."""
    digest = hashlib.sha256(f"lesionlab/{seed}/{stage}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def is_better(rule: str, candidate: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Whether an epoch beats the stage's best so far; ties keep the earlier epoch.

    `reference` is the reference's rule: higher validation accuracy, ties broken by lower training loss.
    """
    if best is None:
        return True
    if rule == "reference":
        candidate_key = (candidate["val_accuracy"], -candidate["train_loss"])
        return candidate_key > (best["val_accuracy"], -best["train_loss"])
    return candidate[f"val_{rule}"] > best[f"val_{rule}"]


def unprefixed(averaged: dict[str, float]) -> dict[str, float]:
    """`ema_val_*` scores under the `val_*` names the selection rule reads."""
    return {key[len("ema_") :]: value for key, value in averaged.items()}


def stage_last_epoch(recipe: Recipe, stage_index: int, choice: StageChoice | None = None) -> int:
    """The last epoch a stage trains: all of them, or a release fit's chosen one."""
    epochs = recipe.stages[stage_index - 1].epochs
    if choice is None:
        return epochs
    if not 1 <= choice.epoch <= epochs:
        raise ConfigError(
            f"stage {stage_index}: the release plan keeps epoch {choice.epoch}, but the "
            f"recipe's stage has {epochs} epochs; refit with the validated run's own recipe."
        )
    return choice.epoch


def stage_is_complete(
    recipe: Recipe, progress: RunProgress, stage_index: int, choice: StageChoice | None = None
) -> bool:
    """Whether `progress` already covers every epoch a stage trains."""
    if progress.stage > stage_index:
        return True
    return progress.stage == stage_index and progress.epoch >= stage_last_epoch(recipe, stage_index, choice)
