"""Experiment tracking: a tiny run logged to TensorBoard and MLflow reads back with history.csv's values."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lesionlab.cli import build_parser, main
from lesionlab.commands._common import recipe_overrides
from lesionlab.data.split import Split
from lesionlab.errors import ConfigError
from lesionlab.tracking import check_available, log_evaluation, open_tracker
from lesionlab.training.recipe import Recipe, TrackingConfig, load_recipe
from lesionlab.training.runner import train_run

TWO_STAGES = (
    "stages=["
    "{trainable: head, bn: frozen, feature_cache: {views: 2}, epochs: 2, batch_size: 8, eval_batch_size: 16},"
    "{trainable: all, bn: train, epochs: 1, batch_size: 8, eval_batch_size: 16, lr: 0.001}]"
)


def tiny_recipe(*overrides: str) -> Recipe:
    """small_cnn at 32 px on one process: three epochs in about a second."""
    return load_recipe(None, ["arch=small_cnn", "pretrained=none", "image_size=32", "workers=0",
                              "channels_last=false", "device=cpu", TWO_STAGES, *overrides])


def history(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "history.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_tracking_is_off_by_default_and_the_flags_are_recipe_shortcuts() -> None:
    assert load_recipe().tracking == TrackingConfig(tensorboard=False, mlflow=False)
    assert open_tracker(Path("unused"), TrackingConfig(False, False), 1) is None
    args = build_parser().parse_args(["train", "--tensorboard", "--mlflow"])
    recipe = load_recipe(None, recipe_overrides(args))
    assert recipe.tracking == TrackingConfig(tensorboard=True, mlflow=True)
    plain = build_parser().parse_args(["train"])
    assert load_recipe(None, recipe_overrides(plain)).tracking == TrackingConfig(False, False)


def test_a_missing_package_is_refused_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow` raise ImportError
    with pytest.raises(ConfigError, match=r"tracking\.mlflow.*--mlflow.*lesionlab\[tracking\]"):
        check_available(TrackingConfig(tensorboard=False, mlflow=True))
    check_available(TrackingConfig(tensorboard=False, mlflow=False))


def test_a_tiny_run_logs_its_params_epochs_and_figures_to_both(
        tiny_split: tuple[Any, Split], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    tracking_client = pytest.importorskip("mlflow.tracking")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    table, split = tiny_split
    run_dir = train_run(tiny_recipe("tracking.tensorboard=true", "tracking.mlflow=true"), table, split,
                        tmp_path / "runs" / "tracked")
    rows = history(run_dir)
    assert len(rows) == 3

    figures = tmp_path / "eval" / "demo-test" / "figures"
    figures.mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(figures / "confusion-matrix.png")
    log_evaluation(run_dir, TrackingConfig(True, True), figures.parent,
                   {"balanced_accuracy": 0.625, "accuracy": 0.75})

    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"),
                                                size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    for column in ("train_loss", "val_balanced_accuracy", "lr", "images_per_s"):
        logged = [(event.step, event.value) for event in events.Scalars(column)]
        assert logged == [(step, pytest.approx(float(row[column]), rel=1e-6))
                          for step, row in enumerate(rows, start=1)], column
    assert events.Scalars("eval/demo-test/balanced_accuracy")[0].value == pytest.approx(0.625)
    assert "eval/demo-test/confusion-matrix" in events.Tags()["images"]
    assert "recipe" in "".join(events.Tags()["tensors"])

    recorded = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["tracking"]["mlflow"]
    assert recorded["tracking_uri"] == (tmp_path / "runs" / "mlruns").resolve().as_uri()
    client = tracking_client.MlflowClient(tracking_uri=recorded["tracking_uri"])
    run = client.get_run(recorded["run_id"])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.params["stages.0.epochs"] == "2" and run.data.params["arch"] == "small_cnn"
    for column in ("train_loss", "val_macro_f1", "val_loss"):
        logged = sorted((metric.step, metric.value) for metric in client.get_metric_history(run.info.run_id,
                                                                                             column))
        assert logged == [(step, pytest.approx(float(row[column]), rel=1e-6))
                          for step, row in enumerate(rows, start=1)], column
    assert run.data.metrics["eval/demo-test/balanced_accuracy"] == pytest.approx(0.625)
    artifacts = [item.path for item in client.list_artifacts(run.info.run_id, "eval/demo-test")]
    assert artifacts == ["eval/demo-test/confusion-matrix.png"]


def test_evaluate_logs_to_the_trackers_the_run_trained_with_and_those_its_flags_add(
        tiny_split: tuple[Any, Split], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run trained with TensorBoard on, evaluated with `--mlflow`: the evaluation's figures reach both,
    under `eval/<its folder>/`, with the values of its metrics.json."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    tracking_client = pytest.importorskip("mlflow.tracking")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    table, split = tiny_split
    run_dir = train_run(tiny_recipe("tracking.tensorboard=true"), table, split, tmp_path / "runs" / "tracked")
    assert main(["evaluate", str(run_dir), "--split", "val", "--mlflow"]) == 0
    (out_dir,) = (run_dir / "eval").iterdir()
    folder = f"eval/{out_dir.name}"
    expected = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))["balanced_accuracy"]

    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"),
                                                size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert events.Scalars(f"{folder}/balanced_accuracy")[0].value == pytest.approx(expected)
    assert any(tag.startswith(f"{folder}/") for tag in events.Tags()["images"])
    recorded = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["tracking"]["mlflow"]
    client = tracking_client.MlflowClient(tracking_uri=recorded["tracking_uri"])
    run = client.get_run(recorded["run_id"])
    assert run.data.metrics[f"{folder}/balanced_accuracy"] == pytest.approx(expected)
    assert client.list_artifacts(run.info.run_id, folder)


def test_evaluate_refuses_tracking_flags_for_an_ensemble(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    assert main(["evaluate", str(tmp_path / "a"), "--ensemble", str(tmp_path / "b"), "--mlflow"]) == 2
    assert "log into one run's trackers" in capsys.readouterr().err
