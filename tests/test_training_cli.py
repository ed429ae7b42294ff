"""`lesionlab train` end to end: tiny generated data (fast) and a few hundred real images (integration)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest

from lesionlab.cli import main
from lesionlab.data import dataset as dataset_module
from lesionlab.data.readers import read_dataset
from lesionlab.data.split import read_split
from lesionlab.models.checkpoint import load_run
from lesionlab.training import batches

TINY_ARGS = ("--set", "arch=small_cnn", "--set", "pretrained=none", "--set", "device=cpu",
             "--set", "stage_defaults.batch_size=8", "--image-size", "32", "--workers", "0")
RUN_FILES = {"config.yaml", "split.csv", "history.csv", "run.json", "train.log", "state.json",
             "state.safetensors", "best.safetensors", "best.json", "stage1-best.safetensors",
             "stage1-best.json", "stage2-best.safetensors", "stage2-best.json"}


class RecordingDataset(dataset_module.LesionDataset):
    """Remembers every sample handed to a training or validation dataset."""

    seen: ClassVar[set[str]] = set()

    def __init__(self, samples: list, *args: object, **kwargs: object) -> None:
        RecordingDataset.seen.update(sample.image_id for sample in samples)
        super().__init__(samples, *args, **kwargs)


def test_train_splits_by_lesion_and_never_reads_test(tiny_ham_dataset: Callable[..., Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LESIONLAB_CACHE", str(tmp_path / "cache"))
    RecordingDataset.seen = set()
    monkeypatch.setattr(batches, "LesionDataset", RecordingDataset)
    data = tiny_ham_dataset(images_per_class=10, images_per_lesion=1, size=(32, 32))
    code = main(["train", "--data", str(data), "--runs-dir", str(tmp_path / "runs"), "--name", "tiny",
                 *TINY_ARGS, "--epochs-scale", "0.01"])
    assert code == 0
    run_dir = tmp_path / "runs" / "tiny"
    assert {path.name for path in run_dir.iterdir()} >= RUN_FILES
    split = read_split(run_dir / "split.csv", read_dataset(data))
    assert split.group == "lesion" and split.parts["test"]
    assert RecordingDataset.seen == {s.image_id for part in ("train", "val") for s in split.parts[part]}
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 3
    summary = capsys.readouterr().out
    assert "best epoch" in summary and "bal acc" in summary and str(run_dir) in summary


def test_resume_refuses_recipe_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--resume", str(tmp_path), "--set", "image_size=64"])
    assert code == 2
    assert "--resume keeps the run's own recipe" in capsys.readouterr().err


@pytest.mark.integration
def test_integration_trains_on_real_images(shared_data_dir: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LESIONLAB_CACHE", str(tmp_path / "cache"))
    code = main(["train", "--data", str(shared_data_dir), "--subset", "300", "--image-size", "64",
                 "--runs-dir", str(tmp_path / "runs"), "--name", "real", "--workers", "0",
                 "--set", "stages.0.epochs=1", "--set", "stages.1.epochs=1"])
    assert code == 0
    run_dir = tmp_path / "runs" / "real"
    assert {path.name for path in run_dir.iterdir()} >= RUN_FILES
    run_info = json.loads((run_dir / "run.json").read_text())
    assert run_info["status"] == "finished"
    assert 250 <= sum(run_info["split"][f"{part}_images"] for part in ("train", "val", "test")) <= 350
    split = read_split(run_dir / "split.csv", read_dataset(shared_data_dir))
    assert not ({s.lesion_id for s in split.parts["train"]} & {s.lesion_id for s in split.parts["test"]})
    model, card = load_run(run_dir)
    assert (card.arch, card.input_size, card.stage) == ("mobilenet_v3_small", 64, 2)
    assert not model.training
    assert [line.split(",")[:2] for line in (run_dir / "history.csv").read_text().splitlines()[1:]] == [
        ["1", "1"], ["2", "1"]]
