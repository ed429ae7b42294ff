"""The files of one training run, each written atomically, and the resume state that ties them together.

Layout (see docs/architecture.md): `config.yaml`, `split.csv`, `history.csv`, `run.json`, `train.log`,
`checkpoints/stage<k>-e<NNN>.{safetensors,json}`, `stage<k>-best.*`, `best.*`, `state.safetensors` and
`state.json`.

`state.safetensors` alone is what `--resume` reads: it holds the model weights and optimizer tensors of the
last completed epoch, and the rest of the resume state (epoch, scheduler, history, best so far) as JSON in
its header, so one atomic rename commits everything at once. `state.json` is a readable copy of that JSON,
written after.

A run killed at any instant (even `kill -9` inside a write) therefore resumes from the last commit: files
written after it (an epoch checkpoint, a best checkpoint) are rewritten identically when the epoch replays,
and `recover` repairs what may lag behind a commit (`state.json`, `history.csv`, the pruning, temporary files
of a write cut short). A new run that fails before its first commit holds nothing worth keeping, so
`remove_new_run` deletes what it created.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lesionlab.classes import CLASS_CODES, NUM_CLASSES
from lesionlab.errors import CheckpointError
from lesionlab.io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text
from lesionlab.models.checkpoint import BEST_STEM, ModelCard, save_checkpoint, stage_best_stem
from lesionlab.models.registry import architecture, head_config
from lesionlab.training.recipe import Recipe

HISTORY_COLUMNS: tuple[str, ...] = (
    "stage",
    "epoch",
    "lr",
    "image_size",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_balanced_accuracy",
    "val_macro_f1",
    "ema_val_loss",
    "ema_val_accuracy",
    "ema_val_balanced_accuracy",
    "ema_val_macro_f1",
    "weights",
    "seconds",
    "cache_seconds",
    "images_per_s",
)
TIMING_COLUMNS: tuple[str, ...] = ("seconds", "cache_seconds", "images_per_s")
"""The history columns that measure time, not training: they differ between two runs of the same recipe."""
STATE_KEY = "lesionlab_state"
MODEL_PREFIX = "model/"
OPTIMIZER_PREFIX = "optimizer/"
AVERAGE_PREFIX = "average/"


class RunDirectory:
    """Paths and writers for `runs/<name>/`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.split = self.path / "split.csv"
        self.history = self.path / "history.csv"
        self.run_json = self.path / "run.json"
        self.log = self.path / "train.log"
        self.state_tensors = self.path / "state.safetensors"
        self.state_json = self.path / "state.json"
        self.checkpoints = self.path / "checkpoints"
        self.best = self.path / BEST_STEM

    @property
    def name(self) -> str:
        """The run's name (its folder name)."""
        return self.path.name

    def epoch_stem(self, stage: int, epoch: int) -> Path:
        """`checkpoints/stage<k>-e<NNN>` (no suffix)."""
        return self.checkpoints / f"stage{stage}-e{epoch:03d}"

    def stage_best(self, stage: int) -> Path:
        """`stage<k>-best` (no suffix)."""
        return stage_best_stem(self.path, stage)

    def save_epoch(self, stage: int, epoch: int, model: nn.Module, card: ModelCard, improved: bool) -> None:
        """The epoch's checkpoint, and `stage<k>-best` and `best` when it beats the stage's best so far.

        Written before the resume state is committed: an epoch replayed after a stop rewrites them alike.
        """
        save_checkpoint(self.epoch_stem(stage, epoch), model, card)
        if improved:
            save_checkpoint(self.stage_best(stage), model, card)
            save_checkpoint(self.best, model, card)

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite `history.csv` from the full list of epoch rows."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.history, buffer.getvalue())

    def prune_checkpoints(self, stage: int, keep_epochs: set[int]) -> None:
        """Delete a stage's epoch checkpoints other than `keep_epochs` (the last and the best)."""
        for weights in self.checkpoints.glob(f"stage{stage}-e*.safetensors"):
            epoch = int(weights.stem.rsplit("-e", 1)[1])
            if epoch not in keep_epochs:
                weights.unlink(missing_ok=True)
                weights.with_suffix(".json").unlink(missing_ok=True)

    def save_state(
        self,
        state: dict[str, Any],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        average: nn.Module | None = None,
    ) -> None:
        """Commit the resume state: one atomic `state.safetensors`, then its readable `state.json` copy.

        `average` is the stage's moving average of the weights, when it keeps one: resuming without it
        would restart the average and end on other weights.
        """
        from safetensors.torch import save

        optimizer_json, optimizer_tensors = encode_optimizer(optimizer)
        payload = {**state, "optimizer": optimizer_json}
        tensors = {
            f"{MODEL_PREFIX}{name}": tensor.detach().cpu().contiguous()
            for name, tensor in model.state_dict().items()
        }
        tensors.update({f"{OPTIMIZER_PREFIX}{name}": tensor for name, tensor in optimizer_tensors.items()})
        if average is not None:
            tensors.update(
                {
                    f"{AVERAGE_PREFIX}{name}": tensor.detach().cpu().contiguous()
                    for name, tensor in average.state_dict().items()
                }
            )
        atomic_write_bytes(self.state_tensors, save(tensors, metadata={STATE_KEY: json.dumps(payload)}))
        atomic_write_json(self.state_json, payload)

    def recover(self, payload: dict[str, Any]) -> None:
        """Bring the files that follow a commit up to date with the committed state `payload`.

        A stop between `save_state`'s rename and the end of the epoch's bookkeeping leaves `state.json`,
        `history.csv` and the checkpoint pruning one epoch behind, and a write cut short leaves its temporary
        file; a resumed run that has nothing left to train would otherwise keep them so.
        """
        for folder in (self.path, self.checkpoints):
            for leftover in folder.glob(".*.tmp"):
                leftover.unlink(missing_ok=True)
        atomic_write_json(self.state_json, payload)
        self.write_history(payload["history"])
        best = payload.get("best")
        if payload.get("stage") and best is not None:
            self.prune_checkpoints(payload["stage"], {payload["epoch"], best["epoch"]})

    def remove_new_run(self, created_folder: bool) -> None:
        """Delete a new run that failed before committing an epoch; never a run that can resume.

        The folder goes only if this run created it; otherwise only the files a run writes are removed, and
        anything else in the folder stays.
        """
        if self.state_tensors.exists():
            return
        if created_folder:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        for name in (self.config, self.split, self.history, self.run_json, self.log, self.state_json):
            name.unlink(missing_ok=True)
        for stem in (self.best, *self.path.glob("stage*-best.safetensors")):
            stem.with_suffix(".safetensors").unlink(missing_ok=True)
            stem.with_suffix(".json").unlink(missing_ok=True)
        for leftover in self.path.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)

    def load_state(
        self,
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Read the resume state: (JSON state, model state dict, optimizer tensors, weight-average state)."""
        from safetensors import SafetensorError, safe_open

        if not self.state_tensors.is_file():
            raise CheckpointError(
                f"{self.state_tensors}: no resume state in {self.path}; the run never "
                f"finished an epoch. Start it again without --resume."
            )
        try:
            with safe_open(self.state_tensors, framework="pt") as handle:
                payload = json.loads((handle.metadata() or {})[STATE_KEY])
                names = handle.keys()
                tensors = {name: handle.get_tensor(name) for name in names}
        except (SafetensorError, KeyError, ValueError, OSError) as error:
            raise CheckpointError(
                f"{self.state_tensors}: unreadable resume state ({error}); the file is "
                f"damaged. Start a new run."
            ) from error
        model_state = {
            name[len(MODEL_PREFIX) :]: tensor
            for name, tensor in tensors.items()
            if name.startswith(MODEL_PREFIX)
        }
        optimizer_tensors = {
            name[len(OPTIMIZER_PREFIX) :]: tensor
            for name, tensor in tensors.items()
            if name.startswith(OPTIMIZER_PREFIX)
        }
        average_state = {
            name[len(AVERAGE_PREFIX) :]: tensor
            for name, tensor in tensors.items()
            if name.startswith(AVERAGE_PREFIX)
        }
        return payload, model_state, optimizer_tensors, average_state


def model_card(recipe: Recipe, stage: int, epoch: int, metrics: dict[str, float], run_name: str) -> ModelCard:
    """The card saved beside every checkpoint of this run: what a reader of the weights needs to use them."""
    spec = architecture(recipe.arch)
    head_hidden, dropout = head_config(recipe.arch, recipe.head_hidden, recipe.dropout)
    return ModelCard(
        arch=recipe.arch,
        num_classes=NUM_CLASSES,
        classes=list(CLASS_CODES),
        input_size=recipe.image_size,
        mean=list(spec.mean),
        std=list(spec.std),
        grayscale=recipe.grayscale,
        head_hidden=head_hidden,
        dropout=dropout,
        stage=stage,
        epoch=epoch,
        metrics=metrics,
        run_name=run_name,
        metadata=dataclasses.asdict(recipe.metadata) if recipe.metadata is not None else None,
    )


def epoch_seconds(row: dict[str, Any]) -> float:
    """Wall time an epoch row accounts for: the epoch itself plus any feature cache built before it.

    History from before `cache_seconds` existed counted the cache in `seconds`, so the sum stays true.
    """
    return float(row["seconds"]) + float(row.get("cache_seconds") or 0.0)


def encode_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Split an optimizer state dict into JSON (param groups, scalars) and named tensors (moments, steps)."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for param_id, values in state_dict["state"].items():
        entry: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}/{key}"] = value.detach().cpu().contiguous()
            else:
                entry[key] = value
        per_param[str(param_id)] = entry
    return {"param_groups": state_dict["param_groups"], "state": per_param}, tensors


def decode_optimizer(encoded: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Rebuild the optimizer state dict written by `encode_optimizer` (integer parameter ids restored)."""
    state: dict[int, dict[str, Any]] = {
        int(param_id): dict(values) for param_id, values in encoded["state"].items()
    }
    for name, tensor in tensors.items():
        param_id, key = name.split("/", 1)
        state.setdefault(int(param_id), {})[key] = tensor
    return {"state": state, "param_groups": encoded["param_groups"]}
