"""The main job in one call: split, train, calibrate, evaluate on the held-out test part, report.

Each step is the library function its own verb uses (`make_split`, `train_run`, `evaluate_run`), so `lesionlab
run` gives exactly what `lesionlab train` followed by `lesionlab evaluate RUN` would. The temperature is
fitted on the validation part inside `evaluate_run` (and saved in the run folder); the test part is read only
once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lesionlab.data.readers import read_dataset
from lesionlab.data.readers.samples import SampleTable
from lesionlab.data.split import Split, make_split, read_split
from lesionlab.errors import CheckpointError, ConfigError
from lesionlab.evaluation.evaluate import EvaluationOptions, EvaluationResult, evaluate_run
from lesionlab.evaluation.run_offsets import RunModel, write_run_model
from lesionlab.evaluation.sources import run_data
from lesionlab.tracking import check_available, log_evaluation
from lesionlab.training import distributed
from lesionlab.training.recipe import Recipe, load_recipe, scale_epochs
from lesionlab.training.release import plan_from_validated_run, release_split
from lesionlab.training.runner import subset_table, train_run

VAL_FRACTION = 0.15
TEST_FRACTION = 0.15


@dataclass(frozen=True)
class PipelineOptions:
    """What `lesionlab run` was asked for; `resume=True` continues the run `runs_dir/name` as set up."""

    data: str | None = None
    fmt: str | None = None
    config: str | None = None
    overrides: tuple[str, ...] = ()
    epochs_scale: float | None = None
    subset: int | None = None
    name: str | None = None
    runs_dir: Path = Path("runs")
    tta_views: tuple[str, ...] | None = None
    resume: bool = False
    release: Path | None = None
    """A validated run to refit on train + val (`lesionlab.training.release`) instead of a new recipe."""
    class_offsets: bool = True
    """Choose class offsets on the validation part and write `RUN/model.json` (needs a validation part)."""


@dataclass(frozen=True)
class PipelineResult:
    """The trained run's folder, its test-part evaluation and its `model.json` step (None on the other
    processes of a torchrun run: rank 0 alone evaluates; `run_model` None also where the step was skipped)."""

    run_dir: Path
    evaluation: EvaluationResult | None
    run_model: RunModel | None = None


def new_run_split(
    table: SampleTable,
    subset: int | None,
    seed: int,
    val: float = VAL_FRACTION,
    test: float = TEST_FRACTION,
    group: str = "lesion",
) -> Split:
    """A class-stratified split (lesion-grouped, 70/15/15 by default), of a subset of `table` when asked.

    The split keeps the whole table's fingerprint even for a subset, so it is read back against the dataset
    the run records.
    """
    source = subset_table(table, subset, seed) if subset else table
    made = make_split(source, val, test, seed, group=group)
    return Split(made.parts, table.fingerprint, made.seed, made.group)


def training_split(table: SampleTable, split: str | Path | None, subset: int | None, seed: int) -> Split:
    """The split a new training trains on: a given split file, else a new lesion-grouped split (of a subset
    of about `subset` images when asked), as `lesionlab train`, `lesionlab cv` and `lesionlab.train` make it.
    A subset makes its own split, so the two together are refused."""
    if split is None:
        return new_run_split(table, subset, seed)
    if subset:
        raise ConfigError("a subset (--subset) makes its own split; give a subset or a split file "
                          "(--split), not both")
    return read_split(split, table)


def resolve_recipe(options: PipelineOptions) -> Recipe:
    """The default recipe, then `--config`, then `--set` overrides, then the epoch scale."""
    recipe = load_recipe(options.config, options.overrides)
    return scale_epochs(recipe, options.epochs_scale) if options.epochs_scale is not None else recipe


def run_pipeline(options: PipelineOptions) -> PipelineResult:
    """Split (or reuse the run's split when resuming), train every stage, evaluate the test part, report."""
    if options.resume:
        if not options.name:
            raise ConfigError(
                "--resume continues the run named by --name; pass --name NAME (and --runs-dir)."
            )
        run_dir = options.runs_dir / options.name
        if not (run_dir / "config.yaml").is_file():
            raise CheckpointError(
                f"{run_dir}: no run to resume here (no config.yaml); check --name and "
                f"--runs-dir, or start the run without --resume."
            )
        recipe = load_recipe(run_dir / "config.yaml")
        table, split = run_data(run_dir)
        plan = None
    elif options.release is not None:
        recipe = load_recipe(options.release / "config.yaml")
        plan = plan_from_validated_run(options.release)
        table, validated_split = run_data(options.release)
        split = release_split(validated_split)
        run_dir = options.runs_dir / (options.name or f"{options.release.name}-release")
    else:
        recipe = resolve_recipe(options)
        table = read_dataset(options.data, options.fmt)
        split = new_run_split(table, options.subset, recipe.seed)
        run_dir = options.runs_dir / (options.name or f"{recipe.arch}-{datetime.now():%Y%m%d-%H%M%S}")
        plan = None
    check_available(recipe.tracking)
    train_run(recipe, table, split, run_dir, resume=options.resume, release=plan)
    if not distributed.is_main():
        return PipelineResult(run_dir, None)
    evaluation = evaluate_run(run_dir, EvaluationOptions(split="test", tta_views=options.tta_views))
    log_evaluation(run_dir, recipe.tracking, evaluation.out_dir, evaluation.metrics)
    run_model = None
    if options.class_offsets and split.parts.get("val"):
        run_model = write_run_model(run_dir, options.tta_views)
    return PipelineResult(run_dir, evaluation, run_model)
