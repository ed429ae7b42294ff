"""A study trained as separate jobs: `--jobs` prints one `lesionlab train` per run on the study's split, and
`--collect` builds the table and ensembles from the finished runs, refusing by name a run that is missing,
unfinished, or trained with another recipe or split."""

from __future__ import annotations

import csv
import json
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from lesionlab.cli import main
from lesionlab.data.readers import read_dataset
from lesionlab.data.split import read_split, write_split
from lesionlab.errors import ConfigError
from lesionlab.study import collect_study, prepare_jobs

TINY = ["arch=small_cnn", "pretrained=none", "head_hidden=null", "dropout=null", "image_size=32",
        "workers=0", "channels_last=false", "cache=false"]


def study_file(folder: Path, seed_b: int = 2) -> Path:
    path = folder / f"study-{seed_b}.yaml"
    path.write_text(yaml.safe_dump({
        "name": "jobs",
        "set": TINY,
        "stages": [{"trainable": "all", "epochs": 1, "batch_size": 16, "feature_cache": None, "lr": 0.003,
                    "optimizer": "adam", "label_smoothing": 0.0}],  # an override longer than a YAML line
        "runs": [{"name": "a", "set": ["seed=1"]}, {"name": "b", "set": [f"seed={seed_b}"]}],
        "ensembles": [{"name": "ab", "members": ["a", "b"]}],
    }), encoding="utf-8")
    return path


def test_runs_trained_as_separate_jobs_are_collected_into_one_study(
    tiny_ham_dataset: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LESIONLAB_CACHE", str(tmp_path / "cache"))
    data = tiny_ham_dataset(images_per_class=20, images_per_lesion=1)
    config, runs = study_file(tmp_path), tmp_path / "runs"
    folder = runs / "study-jobs"

    commands = prepare_jobs(config, data=data, runs_dir=runs)
    assert (folder / "split.csv").is_file() and (folder / "budget.json").is_file()
    assert [shlex.split(command)[-1] for command in commands] == ["a", "b"]
    assert not any("\n" in command for command in commands), "one line per job"
    with pytest.raises(ConfigError, match=r"a: not trained(.|\n)*b: not trained"):
        collect_study(config, data=data, runs_dir=runs)

    assert main(shlex.split(commands[0])[1:]) == 0
    with pytest.raises(ConfigError, match="b: not trained") as refused:
        collect_study(config, data=data, runs_dir=runs)
    assert "a:" not in str(refused.value)

    assert main(shlex.split(commands[1])[1:]) == 0
    run_json = folder / "b" / "run.json"
    finished = run_json.read_text(encoding="utf-8")
    run_json.write_text(json.dumps({**json.loads(finished), "status": "failed"}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"b: failed, not finished.*--resume"):
        collect_study(config, data=data, runs_dir=runs)
    run_json.write_text(finished, encoding="utf-8")

    assert collect_study(config, data=data, runs_dir=runs) == folder
    with (folder / "study.csv").open(newline="") as handle:
        assert [row["run"] for row in csv.DictReader(handle)] == ["a", "b", "ensemble-ab"]
    assert (folder / "study.md").read_text(encoding="utf-8").startswith("# Study jobs")

    with pytest.raises(ConfigError, match=r"b/config\.yaml: run b was trained with another recipe.*seed"):
        collect_study(study_file(tmp_path, seed_b=3), data=data, runs_dir=runs)

    table = read_dataset(data)
    moved = read_split(folder / "b" / "split.csv", table)
    moved.parts["train"].append(moved.parts["val"].pop())
    write_split(folder / "b" / "split.csv", moved)
    with pytest.raises(ConfigError, match=r"b/split\.csv: run b was trained on another split"):
        collect_study(config, data=data, runs_dir=runs)


def test_collect_needs_the_study_folder_the_jobs_were_prepared_in(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no study split here.*--jobs"):
        collect_study(study_file(tmp_path), runs_dir=tmp_path / "runs")
