"""One training stage, read top to bottom: set up, then for each epoch train, validate, checkpoint, commit.

`train_stage` is the whole story of a stage; the helpers above it are the small pieces it calls. All
randomness of an epoch (sampler, DataLoader worker seeds, augmentation, dropout) derives from
(seed, stage, epoch) at the start of that epoch, so a run resumed from its last completed epoch continues
exactly as if never interrupted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, default_collate
from tqdm import tqdm

from lesionlab.classes import CLASS_CODES, NUM_CLASSES
from lesionlab.data.dataset import ImageTransform, LesionDataset
from lesionlab.device import to_device
from lesionlab.errors import ConfigError, LesionlabError
from lesionlab.evaluation.metrics import headline_metrics
from lesionlab.models.checkpoint import ModelCard, load_state, save_checkpoint
from lesionlab.models.fold import fold_for
from lesionlab.models.freeze import FreezePlan, apply_plan, plan_table, resolve_plan, set_train_mode
from lesionlab.models.registry import Architecture, architecture, head_config
from lesionlab.precision import (
    PARITY_IMAGES,
    ParityCheck,
    check_parity,
    forward_precision,
    resolve_precision,
    training_forward,
)
from lesionlab.tracking import RunTracker, open_stage_tracker
from lesionlab.training import distributed
from lesionlab.training.distill import AugmentedViews, DistillationLoss, ViewPasses, ViewSampler
from lesionlab.training.features import (
    FeatureCache,
    extract_features,
    frozen_prefix_forward,
    shared_feature_cache,
)
from lesionlab.training.imbalance import (
    class_counts,
    loss_class_weights,
    make_criterion,
    make_sampler,
    sampled_prior,
)
from lesionlab.training.interrupt import check as check_stop_request
from lesionlab.training.recipe import Recipe, StageConfig
from lesionlab.training.release import StageChoice
from lesionlab.training.rundir import RunDirectory

log = logging.getLogger(__name__)

Targets = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
"""Labels, or (labels, teacher logits) when distilling."""
Batch = tuple[torch.Tensor, Targets]
Forward = Callable[[torch.Tensor], torch.Tensor]
FEATURE_CACHE_EPOCH = 0


class DivergedError(LesionlabError):
    """The training loss became NaN or infinite."""


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


@dataclass
class StageData:
    """What a stage trains and validates on, and how batches are produced."""

    train_set: LesionDataset
    val_set: LesionDataset
    workers: int
    device: torch.device
    channels_last: bool
    augment: Callable[[int], ImageTransform]
    """The training transform at a given output size (progressive resizing swaps it per epoch)."""
    views: AugmentedViews | None = None
    """When distilling: the fixed augmented views of `train_set`, with their teachers' logits."""
    view_count: int = 0


def derive_seed(seed: int, stage: int, epoch: int) -> int:
    """A 63-bit seed that depends only on (seed, stage, epoch), so resumed epochs replay identically."""
    digest = hashlib.sha256(f"lesionlab/{seed}/{stage}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def score(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro F1 as `evaluate` defines them, named as history columns."""
    headline = headline_metrics(labels, predictions)
    return {f"val_{name}": headline[name] for name in ("accuracy", "balanced_accuracy", "macro_f1")}


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


def make_optimizer(stage: StageConfig, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (with Nesterov momentum) over the trainable parameters."""
    if not parameters:
        raise ConfigError(f"trainable plan {stage.trainable!r} leaves no parameter to train; include "
                          f"`head` or some blocks.")
    if stage.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=stage.lr, weight_decay=stage.weight_decay)
    if stage.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=stage.lr, weight_decay=stage.weight_decay)
    return torch.optim.SGD(parameters, lr=stage.lr, momentum=stage.momentum, nesterov=stage.momentum > 0,
                           weight_decay=stage.weight_decay)


def make_scheduler(stage: StageConfig, optimizer: torch.optim.Optimizer,
                   steps_per_epoch: int) -> tuple[torch.optim.lr_scheduler.LRScheduler | None, bool]:
    """The stage's learning-rate schedule and whether it steps per batch (onecycle) or per epoch."""
    schedulers = torch.optim.lr_scheduler
    if stage.scheduler == "step":
        return schedulers.StepLR(optimizer, step_size=stage.step_size, gamma=stage.gamma), False
    if stage.scheduler == "cosine":
        return schedulers.CosineAnnealingLR(optimizer, T_max=stage.epochs), False
    if stage.scheduler == "onecycle":
        return schedulers.OneCycleLR(optimizer, max_lr=stage.lr, epochs=stage.epochs,
                                     steps_per_epoch=steps_per_epoch), True
    return None, False


def epoch_draws(data: StageData, stage: StageConfig) -> int:
    """How many training items one epoch draws (the sampler may oversample)."""
    sampler = make_sampler(data.train_set.labels, stage.sampler_weights, torch.Generator())
    return len(data.train_set) if sampler is None else sampler.num_samples


def batch_count(draws: int, batch_size: int) -> int:
    """Batches per epoch; a last partial batch is dropped when a full one exists (BatchNorm needs >1 item)."""
    return draws // batch_size if draws > batch_size else 1


def image_batches(data: StageData, stage: StageConfig, epoch_seed: int) -> DataLoader:
    """A seeded DataLoader over augmented training images."""
    generator = torch.Generator().manual_seed(epoch_seed)
    sampler = make_sampler(data.train_set.labels, stage.sampler_weights, generator)
    draws = len(data.train_set) if sampler is None else sampler.num_samples
    loader_seed = torch.Generator().manual_seed(epoch_seed + 1)
    if distributed.active():
        return rank_image_batches(data, stage, sampler, generator, epoch_seed)
    if data.views is not None:
        items = sampler if sampler is not None else torch.randperm(len(data.train_set), generator=generator)
        return DataLoader(data.views, batch_size=stage.batch_size,
                          sampler=ViewSampler(items, data.view_count, generator), generator=loader_seed,
                          num_workers=data.workers, drop_last=draws > stage.batch_size,
                          pin_memory=data.device.type == "cuda")
    return DataLoader(data.train_set, batch_size=stage.batch_size, sampler=sampler, shuffle=sampler is None,
                      generator=loader_seed, num_workers=data.workers,
                      drop_last=draws > stage.batch_size, pin_memory=data.device.type == "cuda")


def rank_image_batches(data: StageData, stage: StageConfig, sampler: Any, generator: torch.Generator,
                       epoch_seed: int) -> DataLoader:
    """This rank's slice of every global batch of the epoch's one global draw (`distributed.RankBatches`).

    The draw is the weighted sampler's (or a permutation from the same generator), as in one process; each
    rank's workers get their own augmentation seeds.
    """
    items = sampler if sampler is not None else torch.randperm(len(data.train_set), generator=generator)
    dataset: Any = data.train_set
    if data.views is not None:
        dataset, items = data.views, ViewSampler(items, data.view_count, generator)
    stream = list(items)
    batches = distributed.RankBatches(stream, stage.batch_size, drop_last=len(stream) > stage.batch_size)
    return DataLoader(dataset, batch_sampler=batches, num_workers=data.workers,
                      generator=torch.Generator().manual_seed(distributed.rank_seed(epoch_seed + 1)),
                      pin_memory=data.device.type == "cuda")


def cached_batches(cache: FeatureCache, data: StageData, stage: StageConfig,
                   epoch_seed: int) -> Iterator[Batch]:
    """Batches of cached features in sampler order (same sampler and seed as the image path)."""
    generator = torch.Generator().manual_seed(epoch_seed)
    sampler = make_sampler(data.train_set.labels, stage.sampler_weights, generator)
    order = (torch.tensor(list(sampler), dtype=torch.long) if sampler is not None
             else torch.randperm(len(data.train_set), generator=generator))
    return distributed.local_batches(
        cache.batches(order, stage.batch_size, generator, drop_last=len(order) > stage.batch_size))


def val_loader(data: StageData, stage: StageConfig) -> DataLoader:
    """Validation images in file order, no augmentation; workers persist across the stage's epochs."""
    return DataLoader(distributed.local_subset(data.val_set), batch_size=stage.eval_batch_size, shuffle=False,
                      num_workers=data.workers,
                      persistent_workers=data.workers > 0, pin_memory=data.device.type == "cuda")


def weight_average(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of the weights and BatchNorm statistics, or None without `ema_decay`.

    Averaging the last few hundred steps of a short, noisy fine-tune usually generalises better than its
    last step; `train_stage` validates both each epoch and lets the selection rule choose.
    """
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def train_epoch(forward: Forward, batches: Iterable[Batch], total: int, criterion: nn.Module,
                optimizer: torch.optim.Optimizer, batch_scheduler: Any, data: StageData,
                description: str, average: AveragedModel | None = None,
                model: nn.Module | None = None) -> tuple[float, int, float]:
    """One pass over the training batches, updating `average` from `model` after every step.

    Returns (mean loss, items seen, seconds).
    """
    loss_sum, seen = 0.0, 0
    start = time.perf_counter()
    bar = tqdm(batches, total=total, desc=description, unit="batch", leave=False,
               disable=not distributed.show_progress())
    for batch_index, (inputs, targets) in enumerate(bar, start=1):
        check_stop_request()
        inputs = to_device(inputs, data.device, data.channels_last)
        targets = targets_to_device(targets, data.device)
        labels = targets[0] if isinstance(targets, tuple) else targets
        loss = criterion(forward(inputs), targets)
        if not torch.isfinite(loss):
            raise DivergedError(f"batch {batch_index}: training loss is {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None and model is not None:
            average.update_parameters(model)
        if batch_scheduler is not None:
            batch_scheduler.step()
        loss_sum += loss.item() * len(labels)
        seen += len(labels)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
    bar.close()
    return loss_sum / max(seen, 1), seen, time.perf_counter() - start


def targets_to_device(targets: Targets | list[torch.Tensor], device: torch.device) -> Targets:
    """Labels, or (labels, teacher logits), on the training device (a DataLoader collates pairs as lists)."""
    if isinstance(targets, (tuple, list)):
        labels, teacher_logits = targets
        return labels.to(device, non_blocking=True), teacher_logits.to(device, non_blocking=True)
    return targets.to(device, non_blocking=True)


@torch.inference_mode()
def evaluate(forward: Forward, batches: Iterable[Batch],
             data: StageData) -> tuple[float, np.ndarray, np.ndarray]:
    """Unweighted cross-entropy, labels and predictions over the validation set."""
    loss_sum, labels_seen, predictions = 0.0, [], []
    for inputs, labels in batches:
        logits = forward(to_device(inputs, data.device, data.channels_last)).float().cpu()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        labels_seen.append(labels.numpy())
        predictions.append(logits.argmax(dim=1).numpy())
    truth = np.concatenate(labels_seen)
    return loss_sum / max(len(truth), 1), truth, np.concatenate(predictions)


def epoch_scores(raw: dict[str, float], averaged: dict[str, float], use_average: bool) -> str:
    """The validation part of an epoch's progress line (a release fit has no validation part)."""
    if not raw:
        return "(no validation part: release fit)"
    line = (f"val loss {raw['val_loss']:.4f}  acc {raw['val_accuracy']:.4f}  "
            f"bal acc {raw['val_balanced_accuracy']:.4f}  macro F1 {raw['val_macro_f1']:.4f}")
    if averaged:
        kept = " (kept)" if use_average else ""
        line += f"  | EMA bal acc {averaged['ema_val_balanced_accuracy']:.4f}{kept}"
    return line


def unprefixed(averaged: dict[str, float]) -> dict[str, float]:
    """`ema_val_*` scores under the `val_*` names the selection rule reads."""
    return {key[len("ema_"):]: value for key, value in averaged.items()}


def model_card(recipe: Recipe, spec: Architecture, stage: int, epoch: int, metrics: dict[str, float],
               run_name: str) -> ModelCard:
    """The card saved beside every checkpoint of this run."""
    head_hidden, dropout = head_config(recipe.arch, recipe.head_hidden, recipe.dropout)
    return ModelCard(
        arch=recipe.arch, num_classes=NUM_CLASSES, classes=list(CLASS_CODES), input_size=recipe.image_size,
        mean=list(spec.mean), std=list(spec.std), grayscale=recipe.grayscale,
        head_hidden=head_hidden, dropout=dropout,
        stage=stage, epoch=epoch, metrics=metrics, run_name=run_name,
        metadata=dataclasses.asdict(recipe.metadata) if recipe.metadata is not None else None,
    )


def validate(forward: Forward, val_features: Batch | None, validation: DataLoader, data: StageData,
             prefix: str = "val_") -> dict[str, float]:
    """Validation loss and scores of one set of weights, on cached features when the stage has them."""
    if val_features is not None:
        val_loss, truth, predictions = evaluate(forward, [val_features], data)
    else:
        val_loss, truth, predictions = evaluate(forward, validation, data)
    val_loss, truth, predictions = distributed.gather_evaluation(val_loss, truth, predictions)
    scores = {"val_loss": val_loss, **score(truth, predictions)}
    return {f"{prefix}{key[len('val_'):]}": value for key, value in scores.items()}


def train_stage(model: nn.Module, recipe: Recipe, stage_index: int, data: StageData, run: RunDirectory,
                progress: RunProgress, optimizer_state: dict[str, Any] | None,
                average_state: dict[str, torch.Tensor] | None = None,
                choice: StageChoice | None = None) -> RunProgress:
    """Train one stage from its first epoch, or from `progress` when resuming inside it.

    `choice` (a release fit) fixes the epoch and weights to keep instead of selecting them on validation;
    the stage then stops at that epoch, on the schedule of its full length, and may have no validation part.
    Each committed epoch row is also logged to the recipe's trackers (`lesionlab.tracking`), if any.
    """
    tracker = open_stage_tracker(run.path, recipe, len(progress.history))
    try:
        progress = _train_stage(model, recipe, stage_index, data, run, progress, optimizer_state,
                                average_state, choice, tracker)
    except BaseException as error:
        if tracker is not None:
            tracker.close("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    if tracker is not None:
        tracker.close()
    return progress


def _train_stage(model: nn.Module, recipe: Recipe, stage_index: int, data: StageData, run: RunDirectory,
                 progress: RunProgress, optimizer_state: dict[str, Any] | None,
                 average_state: dict[str, torch.Tensor] | None, choice: StageChoice | None,
                 tracker: RunTracker | None) -> RunProgress:
    stage = recipe.stages[stage_index - 1]
    distributed.check_batch_size(stage.batch_size, f"stages.{stage_index - 1}.batch_size")
    last_epoch = stage_last_epoch(recipe, stage_index, choice)
    spec = architecture(recipe.arch)
    plan: FreezePlan = resolve_plan(stage.trainable, spec, stage.bn)
    apply_plan(model, spec, plan)
    table = plan_table(model, spec, plan)
    print(f"\nstage {stage_index}/{len(recipe.stages)}: {stage.epochs} epoch(s), {stage.optimizer} "
          f"lr {stage.lr}, scheduler {stage.scheduler}\n{table}")
    log.info("stage %d plan\n%s", stage_index, table)
    if stage.feature_cache is not None and not plan.backbone_frozen():
        raise ConfigError(f"stages.{stage_index - 1}.feature_cache needs a frozen backbone: `trainable` must "
                          f"not include feature blocks and `bn` must be `frozen` (got {stage.trainable!r}, "
                          f"bn {stage.bn!r}).")

    counts = class_counts(data.train_set.labels)
    weights = loss_class_weights(stage.loss_weights, counts, stage.loss_beta)
    prior = sampled_prior(counts, stage.sampler_weights) if stage.loss == "logit-adjusted" else None
    criterion: nn.Module = make_criterion(None if weights is None else weights.to(data.device),
                                          stage.label_smoothing, prior, stage.logit_adjust_tau)
    if data.views is not None:
        criterion = DistillationLoss(criterion, recipe.distill.alpha, recipe.distill.temperature)
    optimizer = make_optimizer(stage, [p for p in model.parameters() if p.requires_grad])
    steps = batch_count(epoch_draws(data, stage), stage.batch_size)
    scheduler, per_batch = make_scheduler(stage, optimizer, steps)
    resuming = progress.stage == stage_index and progress.epoch > 0
    average = weight_average(model, stage.ema_decay)
    if choice is not None and choice.weights == "ema" and average is None:
        raise ConfigError(f"stage {stage_index}: the validated run kept averaged weights but this recipe has "
                          f"no `ema_decay`; refit with the validated run's own recipe.")
    if resuming:
        optimizer.load_state_dict(optimizer_state or {})
        if average is not None:
            average.load_state_dict(average_state or {}, strict=True)
        if scheduler is not None and progress.scheduler is not None:
            scheduler.load_state_dict(progress.scheduler)
    else:
        progress = dataclasses.replace(progress, stage=stage_index, epoch=0, best=None, scheduler=None)
    first_epoch = progress.epoch + 1

    validation = val_loader(data, stage)
    if str(stage_index) not in progress.precision:
        progress = dataclasses.replace(progress, precision={
            **progress.precision,
            str(stage_index): distributed.broadcast_json(lambda: stage_precision(model, recipe, data))})
    precision = progress.precision[str(stage_index)]["precision"]
    cache: FeatureCache | None = None
    val_features: Batch | None = None
    extra_seconds = 0.0
    if stage.feature_cache is not None and first_epoch <= last_epoch:
        start = time.perf_counter()
        set_train_mode(model, spec, plan)
        data.train_set.transform = data.augment(stage.epoch_image_size(1, recipe.image_size))
        with forward_precision(precision, data.device):
            cache = shared_feature_cache(
                lambda: build_stage_feature_cache(model, recipe, stage_index, stage, data))
            model.eval()
            val_features = (extract_features(model, validation, data.device, data.channels_last,
                                             "validation features") if len(data.val_set) else None)
        extra_seconds = time.perf_counter() - start
        log.info("feature cache: %d view(s) of %d images in %.1f s", stage.feature_cache.views,
                 len(data.train_set), extra_seconds)

    for epoch in range(first_epoch, last_epoch + 1):
        epoch_start = time.perf_counter()
        epoch_seed = derive_seed(recipe.seed, stage_index, epoch)
        torch.manual_seed(distributed.rank_seed(epoch_seed))
        set_train_mode(model, spec, plan)
        lr = optimizer.param_groups[0]["lr"]
        image_size = stage.epoch_image_size(epoch, recipe.image_size)
        description = f"stage {stage_index} epoch {epoch}/{stage.epochs}"
        if cache is not None:
            forward: Forward = model.classifier
            batches: Iterable[Batch] = cached_batches(cache, data, stage, epoch_seed)
        else:
            forward = frozen_prefix_forward(model, plan, precision)
            data.train_set.transform = data.augment(image_size)
            batches = image_batches(data, stage, epoch_seed)
        forward = distributed.synchronised(model, training_forward(forward, precision, data.device))
        try:
            train_loss, seen, train_seconds = train_epoch(forward, batches, steps, criterion, optimizer,
                                                          scheduler if per_batch else None, data, description,
                                                          average, model)
        except DivergedError as error:
            raise DivergedError(
                f"stage {stage_index} epoch {epoch}, {error}: the run stopped. The last good state is "
                f"kept in {run.state_tensors} (last completed epoch: stage {progress.stage} epoch "
                f"{progress.epoch}). Lower the learning rate (e.g. --set stages.{stage_index - 1}.lr="
                f"{stage.lr / 10:g}) and start a new run, or check the data."
            ) from None
        train_loss, seen = distributed.mean_over_ranks(train_loss, seen)
        distributed.sync_buffers(model, average)
        if scheduler is not None and not per_batch:
            scheduler.step()

        model.eval()
        raw: dict[str, float] = {}
        averaged: dict[str, float] = {}
        if len(data.val_set):
            with forward_precision(precision, data.device):
                raw = validate(model.classifier if val_features is not None else fold_for(model, precision),
                               val_features, validation, data)
                if average is not None:
                    average.eval()
                    averaged = validate(average.module.classifier if val_features is not None
                                        else fold_for(average.module, precision), val_features, validation,
                                        data, prefix="ema_val_")
        if choice is not None:
            use_average = choice.weights == "ema"
        else:
            use_average = bool(averaged) and is_better(
                recipe.select, {**unprefixed(averaged), "train_loss": 0.0}, {**raw, "train_loss": 0.0})
        chosen, chosen_model = (unprefixed(averaged), average.module) if use_average else (raw, model)
        seconds = time.perf_counter() - epoch_start
        cache_seconds = extra_seconds if epoch == first_epoch else 0.0
        record = {"stage": stage_index, "epoch": epoch, "lr": lr, "image_size": image_size,
                  "train_loss": train_loss, **raw, **averaged, "weights": "ema" if use_average else "raw",
                  "seconds": round(seconds, 3), "cache_seconds": round(cache_seconds, 3),
                  "images_per_s": round(seen / train_seconds, 1) if train_seconds > 0 else 0.0}
        print(f"{description} @ {image_size}px: train loss {train_loss:.4f}  "
              f"{epoch_scores(raw, averaged, use_average)}  "
              f"({seconds:.1f} s, {record['images_per_s']:.0f} img/s"
              f"{f'; feature cache {cache_seconds:.1f} s before it' if cache_seconds else ''})")
        log.info("epoch %s", record)

        selected = {**record, **chosen}
        metrics = {key: value for key, value in selected.items()
                   if (key.startswith("val_") or key == "train_loss")}
        card = model_card(recipe, spec, stage_index, epoch, metrics, run.name)
        best = progress.best
        improved = epoch == choice.epoch if choice is not None else is_better(recipe.select, selected, best)
        if improved:
            best = selected
        progress = dataclasses.replace(
            progress, epoch=epoch, history=[*progress.history, record], best=best,
            stage_bests={**progress.stage_bests, str(stage_index): best},
            scheduler=scheduler.state_dict() if scheduler is not None else None,
            train_seconds=progress.train_seconds + seconds + cache_seconds,
        )
        if distributed.is_main():
            save_checkpoint(run.epoch_stem(stage_index, epoch), chosen_model, card)
            if improved:
                save_checkpoint(run.stage_best(stage_index), chosen_model, card)
                save_checkpoint(run.best, chosen_model, card)
            run.save_state(progress.to_dict(), model, optimizer, average)
            run.write_history(progress.history)
            if tracker is not None:
                tracker.log_epoch(len(progress.history), record)
            run.prune_checkpoints(stage_index, {epoch} | ({best["epoch"]} if best is not None else set()))
        distributed.barrier()
    return progress


def stage_precision(model: nn.Module, recipe: Recipe, data: StageData) -> dict[str, Any]:
    """Resolve the recipe's `precision` for a stage, checking parity on validation images when `auto`.

    A release fit has no validation part; its check uses training images (it measures arithmetic, not skill).
    """
    images_of = data.val_set if len(data.val_set) else data.train_set

    def parity() -> ParityCheck:
        model.eval()
        spread = np.linspace(0, len(images_of) - 1, min(PARITY_IMAGES, len(images_of))).astype(int)
        images = default_collate([images_of[int(index)][0] for index in spread])
        labels = torch.as_tensor([images_of.labels[int(index)] for index in spread])
        inputs = to_device(images, data.device, data.channels_last)
        return check_parity(model, [(inputs, labels)], data.device)

    precision, check = resolve_precision(recipe.precision, data.device, parity)
    if check is not None:
        log.info("bf16 parity on %d validation images: %s", check.images, check.to_dict())
        print(f"precision auto: bf16 top-1 agreement {check.top1_agreement:.3f}, largest probability "
              f"difference {check.max_probability_difference:.4f}, balanced accuracy fp32 "
              f"{check.balanced_accuracy_fp32:.3f} / bf16 {check.balanced_accuracy_bf16:.3f} -> {precision}")
    return {"choice": recipe.precision, "precision": precision,
            "parity": check.to_dict() if check is not None else None}


def build_stage_feature_cache(model: nn.Module, recipe: Recipe, stage_index: int, stage: StageConfig,
                              data: StageData) -> FeatureCache:
    """K augmented views of the training set through the frozen backbone, seeded by (seed, stage)."""
    assert stage.feature_cache is not None
    views = stage.feature_cache.views
    passes = ViewPasses(data.views, views) if data.views is not None else None
    cache = FeatureCache.build(model, data.train_set, views, stage.eval_batch_size, data.workers,
                               derive_seed(recipe.seed, stage_index, FEATURE_CACHE_EPOCH), data.device,
                               data.channels_last, passes)
    if data.views is not None and data.views.teacher_logits is not None:
        cache.teacher_logits = data.views.teacher_logits[:, :views]
    return cache


def load_stage_start(model: nn.Module, run: RunDirectory, previous_stage: int) -> None:
    """Stage k starts from stage k-1's best checkpoint, as in the reference."""
    model.load_state_dict(load_state(run.stage_best(previous_stage)), strict=True)


def stage_last_epoch(recipe: Recipe, stage_index: int, choice: StageChoice | None = None) -> int:
    """The last epoch a stage trains: all of them, or a release fit's chosen one."""
    epochs = recipe.stages[stage_index - 1].epochs
    if choice is None:
        return epochs
    if not 1 <= choice.epoch <= epochs:
        raise ConfigError(f"stage {stage_index}: the release plan keeps epoch {choice.epoch}, but the "
                          f"recipe's stage has {epochs} epochs; refit with the validated run's own recipe.")
    return choice.epoch


def stage_is_complete(recipe: Recipe, progress: RunProgress, stage_index: int,
                      choice: StageChoice | None = None) -> bool:
    """Whether `progress` already covers every epoch a stage trains."""
    if progress.stage > stage_index:
        return True
    return progress.stage == stage_index and progress.epoch >= stage_last_epoch(recipe, stage_index, choice)
