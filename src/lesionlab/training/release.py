"""The release fit: once validation has chosen a recipe and its epochs, train it again on train + val.

A validated run has spent its validation part on choices: the recipe, and for every stage the epoch (and
raw or averaged weights) that scored best. The release fit keeps every one of those choices and adds the
validation images to training, since they have nothing left to decide. Nothing is chosen again: each stage
stops at the epoch the validated run chose, with the same learning-rate schedule, and keeps the same kind of
weights. The test part stays untouched, so the release model is scored on it exactly as the validated one.

The plan is recorded in the release run's `run.json` (`release`), so a resumed release run keeps it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lesionlab.data.split import Split
from lesionlab.errors import CheckpointError, ConfigError
from lesionlab.run_json import read_run_json


@dataclass(frozen=True)
class StageChoice:
    """What validation chose in one stage: the epoch and whether the raw or averaged (`ema`) weights."""

    epoch: int
    weights: str


@dataclass(frozen=True)
class ReleasePlan:
    """The validated run a release refits, and its per-stage choices (keyed by 1-based stage number)."""

    validated_run: str
    stages: dict[str, StageChoice]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as stored in `run.json`."""
        return {"validated_run": self.validated_run,
                "stages": {stage: asdict(choice) for stage, choice in self.stages.items()}}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ReleasePlan:
        """Inverse of `to_dict`."""
        return cls(payload["validated_run"],
                   {stage: StageChoice(**choice) for stage, choice in payload["stages"].items()})

    def choice(self, stage_index: int) -> StageChoice:
        """The choice for one stage; a plan without it does not belong to this recipe."""
        try:
            return self.stages[str(stage_index)]
        except KeyError:
            raise ConfigError(f"the release plan of {self.validated_run} has no choice for stage "
                              f"{stage_index}; refit a run of the same recipe.") from None


def plan_from_validated_run(run_dir: Path) -> ReleasePlan:
    """Read the per-stage choices of a finished run from its `state.json`."""
    state_path = Path(run_dir) / "state.json"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise CheckpointError(f"{state_path}: missing; --release needs a run that finished training "
                              f"(lesionlab run or train).") from error
    if read_run_json(run_dir).get("release"):
        raise ConfigError(f"{run_dir} is itself a release fit; pass the validated run it was refitted from.")
    stages = {stage: StageChoice(int(best["epoch"]), best.get("weights") or "raw")
              for stage, best in state["stage_bests"].items()}
    return ReleasePlan(str(Path(run_dir)), stages)


def release_split(validated: Split) -> Split:
    """The validated run's split with its validation part moved into training; the test part unchanged."""
    parts = dict(validated.parts)
    parts["train"] = [*parts["train"], *parts.get("val", [])]
    parts["val"] = []
    return Split(parts, validated.fingerprint, validated.seed, validated.group)
