"""The main job on a tiny generated dataset (no real data or pretrained weights needed): split, train,
calibrate, evaluate, report; plus the split it makes and its argument checks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from lesionlab.cli import main
from lesionlab.data.readers import read_dataset
from lesionlab.data.split import read_split, shared_lesions
from lesionlab.errors import ConfigError
from lesionlab.pipeline import PipelineOptions, new_run_split, run_pipeline

TINY_RECIPE = ("arch=small_cnn", "pretrained=none", "image_size=32", "workers=0", "channels_last=false")


def test_new_run_split_of_a_subset_is_lesion_grouped_and_keeps_the_dataset_fingerprint(
    tiny_ham_dataset: Callable[..., Path],
) -> None:
    table = read_dataset(tiny_ham_dataset(images_per_class=20))
    split = new_run_split(table, subset=70, seed=0)
    assert split.fingerprint == table.fingerprint
    assert shared_lesions(split) == set()
    assert 60 <= sum(len(samples) for samples in split.parts.values()) <= 80


def test_resume_needs_the_run_name() -> None:
    with pytest.raises(ConfigError, match="--name"):
        run_pipeline(PipelineOptions(resume=True))


def test_run_trains_and_evaluates_a_tiny_dataset(
    tiny_ham_dataset: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LESIONLAB_CACHE", str(tmp_path / "cache"))
    data = tiny_ham_dataset(images_per_class=12)
    arguments = [
        "run",
        "--data",
        str(data),
        "--epochs-scale",
        "0.01",
        "--name",
        "tiny",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--tta-views",
        "hflip",
    ]
    for assignment in TINY_RECIPE:
        arguments += ["--set", assignment]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "balanced accuracy (ISIC 2018 metric)" in printed and "recall" in printed
    run_dir = tmp_path / "runs" / "tiny"
    metrics = json.loads((run_dir / "eval" / f"{data.name}-test" / "metrics.json").read_text())
    test_part = read_split(run_dir / "split.csv", read_dataset(data)).parts["test"]
    assert metrics["samples"] == len(test_part)
    assert metrics["evaluation"]["tta_views"] == ["identity", "hflip"]
    temperature = json.loads((run_dir / "best.temperature.json").read_text())
    assert temperature["fitted_on"] == "val"
    threshold = json.loads((run_dir / "best.malignancy.json").read_text())
    assert threshold["fitted_on"] == "val" and threshold["temperature"] == temperature["temperature"]
    assert metrics["malignancy"]["threshold"] == threshold["threshold"]
    assert metrics["malignancy"]["threshold_fitted"] is True
    assert "malignant (akiec, bcc, mel) vs benign" in printed and "run_dir" not in metrics["evaluation"]
    assert metrics["model"]["arch"] == "small_cnn"
