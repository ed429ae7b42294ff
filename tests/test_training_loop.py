"""The stage loop and run directory on tiny generated data: selection rules, NaN stop, exact resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from lesionlab.data.split import Split
from lesionlab.errors import LesionlabError
from lesionlab.models.checkpoint import load_run
from lesionlab.training import loop
from lesionlab.training.progress import derive_seed, is_better
from lesionlab.training.recipe import Recipe, load_recipe
from lesionlab.training.rundir import TIMING_COLUMNS
from lesionlab.training.runner import summary_rows, train_run

TINY_STAGES = (
    "stages=["
    "{trainable: head, bn: frozen, feature_cache: {views: 2}, epochs: 2, batch_size: 8, eval_batch_size: 16,"
    " lr: 0.01, scheduler: cosine},"
    "{trainable: all, bn: train, epochs: 2, batch_size: 8, eval_batch_size: 16, lr: 0.001, optimizer: adamw,"
    " scheduler: step, step_size: 1}]"
)
REAL_MAKE_CRITERION = loop.make_criterion


def tiny_recipe(*overrides: str) -> Recipe:
    """small_cnn at 32 px, deterministic, one process: fast enough to train several times per test."""
    return load_recipe(None, ["arch=small_cnn", "pretrained=none", "image_size=32", "workers=0",
                              "channels_last=false", "deterministic=true", "device=cpu", TINY_STAGES,
                              *overrides])



class CountingCriterion(torch.nn.Module):
    """Wraps the loop's criterion to interrupt (or poison) the run at a chosen training batch."""

    calls = 0

    def __init__(self, inner: torch.nn.Module, fail_at: int | None, failure: str) -> None:
        super().__init__()
        self.inner = inner
        self.fail_at = fail_at
        self.failure = failure

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        CountingCriterion.calls += 1
        if CountingCriterion.calls == self.fail_at:
            if self.failure == "interrupt":
                raise KeyboardInterrupt
            return self.inner(logits, labels) * float("nan")
        return self.inner(logits, labels)


def patch_criterion(monkeypatch: pytest.MonkeyPatch, fail_at: int | None, failure: str = "interrupt") -> None:
    CountingCriterion.calls = 0
    monkeypatch.setattr(loop, "make_criterion", lambda *args, **kwargs: CountingCriterion(
        REAL_MAKE_CRITERION(*args, **kwargs), fail_at, failure))


def history_without_timings(run_dir: Path) -> list[dict[str, Any]]:
    state = json.loads((run_dir / "state.json").read_text())
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in state["history"]]


def test_seeds_depend_only_on_seed_stage_epoch() -> None:
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, 1, 2), derive_seed(0, 2, 1), derive_seed(1, 1, 2), derive_seed(0, 1, 3)}) == 4


def test_selection_rules() -> None:
    best = {"val_accuracy": 0.8, "val_balanced_accuracy": 0.5, "val_macro_f1": 0.4, "train_loss": 0.5}
    tie_lower_loss = {**best, "train_loss": 0.4}
    assert is_better("reference", tie_lower_loss, best)
    assert not is_better("reference", {**best, "train_loss": 0.6}, best)
    assert not is_better("balanced_accuracy", tie_lower_loss, best)
    assert is_better("balanced_accuracy", {**best, "val_balanced_accuracy": 0.6, "val_accuracy": 0.1}, best)
    assert is_better("macro_f1", {**best, "val_macro_f1": 0.41}, best)
    assert is_better("accuracy", best, None)


def test_run_directory_is_complete(tiny_split: tuple[Any, Split], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    table, split = tiny_split
    patch_criterion(monkeypatch, None)
    run_dir = train_run(tiny_recipe(), table, split, tmp_path / "runs" / "complete")
    names = {path.relative_to(run_dir).as_posix() for path in run_dir.rglob("*") if path.is_file()}
    assert {"config.yaml", "split.csv", "history.csv", "run.json", "train.log", "state.json",
            "state.safetensors", "best.safetensors", "best.json", "stage1-best.safetensors",
            "stage1-best.json", "stage2-best.safetensors", "stage2-best.json", "MODEL_CARD.md"} <= names
    checkpoints = {name for name in names if name.startswith("checkpoints/")}
    stage2_best = json.loads((run_dir / "stage2-best.json").read_text())["epoch"]
    kept = {"checkpoints/stage1-e002", "checkpoints/stage2-e002", f"checkpoints/stage2-e{stage2_best:03d}",
            f"checkpoints/stage1-e{json.loads((run_dir / 'stage1-best.json').read_text())['epoch']:03d}"}
    assert checkpoints == {f"{stem}.{suffix}" for stem in kept for suffix in ("safetensors", "json")}
    history = (run_dir / "history.csv").read_text().splitlines()
    assert history[0] == ("stage,epoch,lr,image_size,train_loss,val_loss,val_accuracy,val_balanced_accuracy,"
                          "val_macro_f1,ema_val_loss,ema_val_accuracy,ema_val_balanced_accuracy,"
                          "ema_val_macro_f1,weights,seconds,cache_seconds,images_per_s")
    assert [line.split(",")[:2] for line in history[1:]] == [["1", "1"], ["1", "2"], ["2", "1"], ["2", "2"]]
    rows = json.loads((run_dir / "state.json").read_text())["history"]
    # Only stage 1 builds a feature cache, and only before its first epoch; its time is not the epoch's.
    assert rows[0]["cache_seconds"] > 0
    assert [row["cache_seconds"] for row in rows[1:]] == [0.0, 0.0, 0.0]
    assert summary_rows(run_dir)[0]["seconds"] == pytest.approx(rows[0]["seconds"] + rows[0]["cache_seconds"]
                                                                + rows[1]["seconds"])
    run_info = json.loads((run_dir / "run.json").read_text())
    assert run_info["status"] == "finished" and run_info["train_seconds"] > 0
    assert run_info["started"] <= run_info["ended"]
    model, card = load_run(run_dir)
    assert (card.arch, card.input_size, card.stage, card.run_name) == ("small_cnn", 32, 2, "complete")
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 7)


def test_existing_run_is_not_overwritten(tiny_split: tuple[Any, Split], tmp_path: Path) -> None:
    table, split = tiny_split
    run_dir = tmp_path / "runs" / "once"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("arch: small_cnn\n")
    with pytest.raises(LesionlabError, match="--resume"):
        train_run(tiny_recipe(), table, split, run_dir)
    assert (run_dir / "config.yaml").read_text() == "arch: small_cnn\n"


def test_nan_loss_stops_and_keeps_the_last_good_state(tiny_split: tuple[Any, Split], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    table, split = tiny_split
    patch_criterion(monkeypatch, fail_at=7, failure="nan")
    run_dir = tmp_path / "runs" / "diverged"
    with pytest.raises(LesionlabError, match=r"stage 1 epoch 2, batch \d+: training loss is nan"):
        train_run(tiny_recipe(), table, split, run_dir)
    state = json.loads((run_dir / "state.json").read_text())
    assert (state["stage"], state["epoch"]) == (1, 1)
    assert (run_dir / "checkpoints" / "stage1-e001.safetensors").is_file()
    assert json.loads((run_dir / "best.json").read_text())["epoch"] == 1
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"


def assert_same_final_run(straight: Path, resumed: Path) -> None:
    """Identical checkpoints, final state (weights and optimizer) and history, timings aside."""
    for stem in ("best", "stage1-best", "stage2-best", "state"):
        name = f"{stem}.safetensors"
        expected, actual = load_file(straight / name), load_file(resumed / name)
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[key], actual[key]) for key in expected), name
    assert history_without_timings(straight) == history_without_timings(resumed)


def test_resume_ends_with_identical_weights(tiny_split: tuple[Any, Split], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted in stage 1's first epoch (no state yet), mid stage 1, and mid stage 2, then resumed."""
    table, split = tiny_split
    recipe = tiny_recipe()
    patch_criterion(monkeypatch, None)
    straight = train_run(recipe, table, split, tmp_path / "runs" / "straight")
    calls = CountingCriterion.calls

    for where in (0.1, 0.4, 0.85):
        interrupted = tmp_path / "runs" / f"interrupted-{where}"
        patch_criterion(monkeypatch, fail_at=int(calls * where))
        with pytest.raises(KeyboardInterrupt):
            train_run(recipe, table, split, interrupted)
        state_file = interrupted / "state.json"
        stopped_at = json.loads(state_file.read_text()) if state_file.exists() else {"stage": 0, "epoch": 0}
        assert (stopped_at["stage"], stopped_at["epoch"]) != (2, 2)
        patch_criterion(monkeypatch, None)
        train_run(recipe, table, split, interrupted, resume=True)
        assert_same_final_run(straight, interrupted)
        sessions = json.loads((interrupted / "run.json").read_text())["sessions"]
        assert len(sessions) == 2 and "error" in sessions[0]


def test_resume_with_weight_average_and_size_schedule_ends_identical(
        tiny_split: tuple[Any, Split], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The moving average of the weights is part of the resume state, as is the progressive-size schedule."""
    table, split = tiny_split
    recipe = tiny_recipe("stages.1.ema_decay=0.9", "stages.1.loss=logit-adjusted",
                         "stages.1.image_size=[16,32]", "stages.1.epochs=3")
    patch_criterion(monkeypatch, None)
    straight = train_run(recipe, table, split, tmp_path / "runs" / "straight")
    history = json.loads((straight / "state.json").read_text())["history"]
    assert [row["image_size"] for row in history if row["stage"] == 2] == [16, 16, 32]
    assert all(row["ema_val_balanced_accuracy"] is not None for row in history if row["stage"] == 2)
    assert {row["weights"] for row in history if row["stage"] == 2} <= {"raw", "ema"}

    interrupted = tmp_path / "runs" / "interrupted"
    patch_criterion(monkeypatch, fail_at=int(CountingCriterion.calls * 0.9))
    with pytest.raises(KeyboardInterrupt):
        train_run(recipe, table, split, interrupted)
    stopped_at = json.loads((interrupted / "state.json").read_text())
    assert stopped_at["stage"] == 2 and 1 <= stopped_at["epoch"] < 3
    patch_criterion(monkeypatch, None)
    train_run(recipe, table, split, interrupted, resume=True)
    assert_same_final_run(straight, interrupted)


def test_release_fit_keeps_the_validated_choices_and_never_scores_training_images(
        tiny_split: tuple[Any, Split], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Train + val, each stage stopping at the validated epoch; evaluation refuses the parts trained on."""
    from lesionlab.errors import DataError
    from lesionlab.evaluation.evaluate import EvaluationOptions, evaluate_run
    from lesionlab.training.release import plan_from_validated_run, release_split

    table, split = tiny_split
    split = Split({**split.parts, "test": split.parts["val"][:4], "val": split.parts["val"][4:]},
                  split.fingerprint, split.seed, split.group)
    recipe = tiny_recipe("stages.1.ema_decay=0.9", "stages.1.epochs=3")
    validated = train_run(recipe, table, split, tmp_path / "runs" / "validated")
    plan = plan_from_validated_run(validated)
    refit = train_run(recipe, table, release_split(split), tmp_path / "runs" / "refit", release=plan)

    history = json.loads((refit / "state.json").read_text())["history"]
    for stage, choice in plan.stages.items():
        rows = [row for row in history if str(row["stage"]) == stage]
        assert [row["epoch"] for row in rows] == list(range(1, choice.epoch + 1))
        assert rows[-1]["weights"] == choice.weights and "val_balanced_accuracy" not in rows[-1]
    assert json.loads((refit / "run.json").read_text())["release"] == plan.to_dict()
    assert json.loads((refit / "best.json").read_text())["epoch"] == plan.stages["2"].epoch

    with pytest.raises(DataError, match="trained on"):
        evaluate_run(validated, EvaluationOptions(split="train"))
    with pytest.raises(DataError, match="trained on"):
        evaluate_run(refit, EvaluationOptions(split="all"))
    result = evaluate_run(refit, EvaluationOptions(split="test", out_dir=tmp_path / "eval"))
    assert result.metrics["evaluation"]["temperature"] is None
