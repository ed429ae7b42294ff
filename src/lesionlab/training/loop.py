"""The stage loop and the epoch loop of a training run, read top to bottom.

`run_stages` builds the model (or restores it from the resume state) and trains the recipe's stages in order,
each from the previous stage's best checkpoint. `train_stage` runs one stage: set up, then for each epoch
train, validate, choose the raw or the averaged weights, checkpoint, commit. Everything else is a call into
its own module: batches and the steps-per-epoch rule (`training.batches`), optimizer, schedule and weight
average (`training.optim`), validation and precision (`training.validation`), the feature cache
(`training.features`), distillation (`training.distill`), ranks (`training.distributed`), where the run
stands and which epoch is best (`training.progress`), and the run's files (`training.rundir`).

All randomness of an epoch (sampler, DataLoader worker seeds, augmentation, dropout) derives from
(seed, stage, epoch) at the start of that epoch, so a run resumed from its last completed epoch continues
exactly as if never interrupted.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from lesionlab.device import to_device
from lesionlab.errors import ConfigError, LesionlabError
from lesionlab.models.checkpoint import load_state
from lesionlab.models.fold import fold_for
from lesionlab.models.freeze import apply_plan, plan_table, resolve_plan, set_train_mode
from lesionlab.models.metadata_model import MetadataSpec, with_metadata
from lesionlab.models.pixel_input import PixelInput
from lesionlab.models.registry import architecture, build_model
from lesionlab.precision import forward_precision, training_forward
from lesionlab.tracking import RunTracker, stage_tracker
from lesionlab.training import distributed
from lesionlab.training.batches import (
    Batch,
    StageData,
    cached_batches,
    image_batches,
    pixel_input,
    steps_per_epoch,
    targets_to_device,
    val_loader,
)
from lesionlab.training.distill import DistillationLoss, ViewPasses
from lesionlab.training.features import (
    FeatureCache,
    extract_features,
    frozen_prefix_forward,
    shared_feature_cache,
)
from lesionlab.training.imbalance import class_counts, loss_class_weights, make_criterion, sampled_prior
from lesionlab.training.interrupt import check as check_stop_request
from lesionlab.training.mixing import BatchMixer, batch_mixer
from lesionlab.training.optim import make_optimizer, make_scheduler, weight_average
from lesionlab.training.progress import (
    RunProgress,
    derive_seed,
    is_better,
    stage_is_complete,
    stage_last_epoch,
    unprefixed,
)
from lesionlab.training.recipe import Recipe, StageConfig
from lesionlab.training.release import ReleasePlan, StageChoice
from lesionlab.training.rundir import RunDirectory, decode_optimizer, model_card
from lesionlab.training.validation import Forward, epoch_scores, stage_precision, validate

log = logging.getLogger(__name__)

FEATURE_CACHE_EPOCH = 0
"""The epoch number whose seed draws a stage's cached feature views (real epochs count from 1)."""
ResumeState = tuple[dict[str, Any], dict[str, torch.Tensor]]
"""The optimizer state and weight-average state of a stage the run resumes inside."""


class DivergedError(LesionlabError):
    """The training loss became NaN or infinite."""


def run_stages(
    recipe: Recipe, data: StageData, run: RunDirectory, resume: bool, release: ReleasePlan | None
) -> RunProgress:
    """Train every stage not yet complete; with `resume`, continue from the run's committed state."""
    torch.manual_seed(recipe.seed)
    if resume and not run.state_tensors.exists():
        log.info("%s never completed an epoch; starting it from its first epoch", run.path)
        resume = False
    model = build_model(
        recipe.arch,
        pretrained="none" if resume else recipe.pretrained,
        head_hidden=recipe.head_hidden,
        dropout=recipe.dropout,
        weights_dir=recipe.weights_dir,
        weights_sha256=recipe.weights_sha256,
        pretrained_head=recipe.pretrained_head,
    )
    if recipe.metadata is not None:
        model = with_metadata(model, MetadataSpec.from_dict(dataclasses.asdict(recipe.metadata), "recipe"))
    progress = RunProgress()
    saved: ResumeState = ({}, {})
    if resume:
        payload, model_state, optimizer_tensors, average_state = run.load_state()
        if distributed.is_main():
            run.recover(payload)
        saved = (decode_optimizer(payload.pop("optimizer"), optimizer_tensors), average_state)
        progress = RunProgress.from_dict(payload)
        model.load_state_dict(model_state, strict=True)
        log.info("resuming %s after stage %d epoch %d", run.path, progress.stage, progress.epoch)
    model.to(data.device)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    model = distributed.sync_batchnorm(model, recipe.sync_bn)
    for stage_index in range(1, len(recipe.stages) + 1):
        choice = release.choice(stage_index) if release is not None else None
        if stage_is_complete(recipe, progress, stage_index, choice):
            continue
        inside = progress.resumes_inside(stage_index)
        if not inside and stage_index > 1:
            model.load_state_dict(load_state(run.stage_best(stage_index - 1)), strict=True)
        with stage_tracker(run.path, recipe, len(progress.history)) as tracker:
            progress = train_stage(
                model, recipe, stage_index, data, run, progress, saved if inside else None, choice, tracker
            )
    return progress


def train_stage(
    model: nn.Module,
    recipe: Recipe,
    stage_index: int,
    data: StageData,
    run: RunDirectory,
    progress: RunProgress,
    resumed: ResumeState | None,
    choice: StageChoice | None,
    tracker: RunTracker | None,
) -> RunProgress:
    """Train one stage from its first epoch, or, given `resumed`, from the epoch after `progress`'s.

    `choice` (a release fit) fixes the epoch and weights to keep instead of selecting them on validation;
    the stage then stops at that epoch, on the schedule of its full length, and may have no validation part.
    Each committed epoch row is also logged to `tracker`, the recipe's trackers for this stage
    (`lesionlab.tracking.stage_tracker`, which `run_stages` opens around the stage), if any.
    """
    stage = recipe.stages[stage_index - 1]
    distributed.check_batch_size(stage.batch_size, f"stages.{stage_index - 1}.batch_size")
    last_epoch = stage_last_epoch(recipe, stage_index, choice)
    spec = architecture(recipe.arch)
    plan = resolve_plan(stage.trainable, spec, stage.bn)
    apply_plan(model, spec, plan)
    table = plan_table(model, spec, plan)
    print(
        f"\nstage {stage_index}/{len(recipe.stages)}: {stage.epochs} epoch(s), {stage.optimizer} "
        f"lr {stage.lr}, scheduler {stage.scheduler}\n{table}"
    )
    log.info("stage %d plan\n%s", stage_index, table)
    if stage.feature_cache is not None and not plan.backbone_frozen():
        raise ConfigError(
            f"stages.{stage_index - 1}.feature_cache needs a frozen backbone: `trainable` must "
            f"not include feature blocks and `bn` must be `frozen` (got {stage.trainable!r}, "
            f"bn {stage.bn!r})."
        )

    counts = class_counts(data.train_set.labels)
    weights = loss_class_weights(stage.loss_weights, counts, stage.loss_beta)
    prior = sampled_prior(counts, stage.sampler_weights) if stage.loss == "logit-adjusted" else None
    criterion: nn.Module = make_criterion(
        None if weights is None else weights.to(data.device),
        stage.label_smoothing,
        prior,
        stage.logit_adjust_tau,
    )
    if data.views is not None:
        criterion = DistillationLoss(criterion, recipe.distill.alpha, recipe.distill.temperature)
    mixer = batch_mixer(stage.mixing, len(counts),
                        recipe.distill.temperature if data.views is not None else None)
    optimizer = make_optimizer(stage, [p for p in model.parameters() if p.requires_grad])
    steps = steps_per_epoch(data, stage)
    scheduler, per_batch = make_scheduler(stage, optimizer, steps)
    average = weight_average(model, stage.ema_decay)
    if choice is not None and choice.weights == "ema" and average is None:
        raise ConfigError(
            f"stage {stage_index}: the validated run kept averaged weights but this recipe has "
            f"no `ema_decay`; refit with the validated run's own recipe."
        )
    if resumed is not None:
        optimizer_state, average_state = resumed
        optimizer.load_state_dict(optimizer_state)
        if average is not None:
            average.load_state_dict(average_state, strict=True)
        if scheduler is not None and progress.scheduler is not None:
            scheduler.load_state_dict(progress.scheduler)
    else:
        progress = dataclasses.replace(progress, stage=stage_index, epoch=0, best=None, scheduler=None)
    first_epoch = progress.epoch + 1

    validation = val_loader(data, stage)
    pixels = pixel_input(model, recipe, data.device)
    if str(stage_index) not in progress.precision:
        progress = dataclasses.replace(
            progress,
            precision={
                **progress.precision,
                str(stage_index): distributed.broadcast_json(lambda: stage_precision(pixels, recipe, data)),
            },
        )
    precision = progress.precision[str(stage_index)]["precision"]
    cache: FeatureCache | None = None
    val_features: Batch | None = None
    cache_seconds = 0.0
    if stage.feature_cache is not None and first_epoch <= last_epoch:
        start = time.perf_counter()
        set_train_mode(model, spec, plan)
        data.train_set.transform = data.augment(stage.epoch_image_size(1, recipe.image_size))
        with forward_precision(precision, data.device):
            cache = shared_feature_cache(
                lambda: stage_feature_cache(pixels, recipe, stage_index, stage, data)
            )
            model.eval()
            val_features = (
                extract_features(
                    pixels,
                    validation,
                    data.device,
                    data.channels_last,
                    "validation features",
                    recipe.forward_backend,
                )
                if len(data.val_set)
                else None
            )
        cache_seconds = time.perf_counter() - start
        log.info(
            "feature cache: %d view(s) of %d images in %.1f s",
            stage.feature_cache.views,
            len(data.train_set),
            cache_seconds,
        )

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
            forward = frozen_prefix_forward(pixels, plan, precision)
            data.train_set.transform = data.augment(image_size)
            batches = image_batches(data, stage, epoch_seed)
        forward = distributed.synchronised(model, training_forward(forward, precision, data.device))
        try:
            train_loss, seen, train_seconds = train_epoch(
                forward,
                batches,
                steps,
                criterion,
                optimizer,
                scheduler if per_batch else None,
                data,
                description,
                average,
                model,
                mixer,
            )
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
                raw = validate(
                    model.classifier if val_features is not None else fold_for(pixels, precision),
                    val_features,
                    validation,
                    data,
                )
                if average is not None:
                    average.eval()
                    averaged = validate(
                        average.module.classifier
                        if val_features is not None
                        else fold_for(pixel_input(average.module, recipe, data.device), precision),
                        val_features,
                        validation,
                        data,
                        prefix="ema_val_",
                    )
        if choice is not None:
            use_average = choice.weights == "ema"
        else:
            use_average = bool(averaged) and is_better(
                recipe.select, {**unprefixed(averaged), "train_loss": 0.0}, {**raw, "train_loss": 0.0}
            )
        chosen, chosen_model = (unprefixed(averaged), average.module) if use_average else (raw, model)
        seconds = time.perf_counter() - epoch_start
        epoch_cache_seconds = cache_seconds if epoch == first_epoch else 0.0
        record = {
            "stage": stage_index,
            "epoch": epoch,
            "lr": lr,
            "image_size": image_size,
            "train_loss": train_loss,
            **raw,
            **averaged,
            "weights": "ema" if use_average else "raw",
            "seconds": round(seconds, 3),
            "cache_seconds": round(epoch_cache_seconds, 3),
            "images_per_s": round(seen / train_seconds, 1) if train_seconds > 0 else 0.0,
        }
        print(
            f"{description} @ {image_size}px: train loss {train_loss:.4f}  "
            f"{epoch_scores(raw, averaged, use_average)}  "
            f"({seconds:.1f} s, {record['images_per_s']:.0f} img/s"
            f"{f'; feature cache {epoch_cache_seconds:.1f} s before it' if epoch_cache_seconds else ''})"
        )
        log.info("epoch %s", record)

        selected = {**record, **chosen}
        metrics = {
            key: value for key, value in selected.items() if (key.startswith("val_") or key == "train_loss")
        }
        best = progress.best
        improved = epoch == choice.epoch if choice is not None else is_better(recipe.select, selected, best)
        if improved:
            best = selected
        progress = dataclasses.replace(
            progress,
            epoch=epoch,
            history=[*progress.history, record],
            best=best,
            stage_bests={**progress.stage_bests, str(stage_index): best},
            scheduler=scheduler.state_dict() if scheduler is not None else None,
            train_seconds=progress.train_seconds + seconds + epoch_cache_seconds,
        )
        if distributed.is_main():
            run.save_epoch(
                stage_index,
                epoch,
                chosen_model,
                model_card(recipe, stage_index, epoch, metrics, run.name),
                improved,
            )
            run.save_state(progress.to_dict(), model, optimizer, average)
            run.write_history(progress.history)
            if tracker is not None:
                tracker.log_epoch(len(progress.history), record)
            run.prune_checkpoints(stage_index, {epoch} | ({best["epoch"]} if best is not None else set()))
        distributed.barrier()
    return progress


def train_epoch(
    forward: Forward,
    batches: Iterable[Batch],
    total: int,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_scheduler: Any,
    data: StageData,
    description: str,
    average: AveragedModel | None = None,
    model: nn.Module | None = None,
    mixer: BatchMixer | None = None,
) -> tuple[float, int, float]:
    """One pass over the training batches, updating `average` from `model` after every step; `mixer`
    (MixUp/CutMix) blends image batches and their labels before the forward pass.

    Returns (mean loss, items seen, seconds).
    """
    loss_sum, seen = 0.0, 0
    start = time.perf_counter()
    bar = tqdm(
        batches,
        total=total,
        desc=description,
        unit="batch",
        leave=False,
        disable=not distributed.show_progress(),
    )
    for batch_index, (inputs, targets) in enumerate(bar, start=1):
        check_stop_request()
        inputs = to_device(inputs, data.device, data.channels_last)
        targets = targets_to_device(targets, data.device)
        labels = targets[0] if isinstance(targets, tuple) else targets
        if mixer is not None:
            inputs, targets = mixer(inputs, targets)
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


def stage_feature_cache(
    model: PixelInput, recipe: Recipe, stage_index: int, stage: StageConfig, data: StageData
) -> FeatureCache:
    """K augmented views of the training set through the frozen backbone, seeded by (seed, stage).

    A distilled run caches the views its teachers scored, with their logits.
    """
    assert stage.feature_cache is not None
    views = stage.feature_cache.views
    passes = ViewPasses(data.views, views) if data.views is not None else None
    cache = FeatureCache.build(
        model,
        data.train_set,
        views,
        stage.eval_batch_size,
        data.workers,
        derive_seed(recipe.seed, stage_index, FEATURE_CACHE_EPOCH),
        data.device,
        data.channels_last,
        passes,
        recipe.forward_backend,
    )
    if data.views is not None and data.views.teacher_logits is not None:
        cache.teacher_logits = data.views.teacher_logits[:, :views]
    return cache
