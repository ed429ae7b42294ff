"""Studies: the study file is checked before any training, every run shares one split, finished runs are
skipped on a rerun, ensembles average their members, and the shipped study files hold the reference's runs."""

from __future__ import annotations

import csv
import json
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import class_image
from lesionlab.classes import CLASS_CODES
from lesionlab.cli import main
from lesionlab.data.readers import read_dataset
from lesionlab.data.split import read_split, shared_lesions, write_split
from lesionlab.errors import ConfigError
from lesionlab.evaluation.predictions import read_predictions
from lesionlab.inference import load_predictor
from lesionlab.inference.model_file import read_model_file
from lesionlab.io_utils import file_sha256
from lesionlab.study import (
    Budget,
    current_evaluation,
    load_study,
    prepare_jobs,
    run_recipe,
    run_study,
    study_table,
)
from lesionlab.study.budget import check_budget, recorded_budget
from lesionlab.study.output import best_row
from lesionlab.training import runner
from lesionlab.training.interrupt import TrainingStopped
from lesionlab.training.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
TINY = ["arch=small_cnn", "pretrained=none", "head_hidden=null", "dropout=null", "image_size=32",
        "workers=0", "channels_last=false", "cache=false"]


def write_study(folder: Path, body: dict) -> Path:
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


def tiny_study(folder: Path) -> Path:
    return write_study(folder, {
        "name": "tiny",
        "set": TINY,
        "stages": [{"trainable": "all", "epochs": 1, "batch_size": 16, "feature_cache": None}],
        "runs": [{"name": "a", "set": ["seed=1"]}, {"name": "b", "set": ["seed=2", "stages.0.lr=3.0e-3"]}],
        "ensembles": [{"name": "ab", "members": ["a", "b"]}],
        "evaluate": {"decisions": ["class-offsets", "lesion-mean"]},
    })


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "x"}, "needs a 'runs' list"),
        ({"runs": [{"name": "a"}], "typo": 1}, "unknown key"),
        ({"runs": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"runs": [{"name": "a", "set": ["no_such_key=1"]}]}, "no_such_key"),
        ({"runs": [{"name": "a"}], "ensembles": [{"name": "e", "members": ["a", "zz"]}]}, "members"),
        ({"runs": [{"name": "a"}], "evaluate": {"decisions": ["class-offsets"]}}, "applies to ensembles"),
        ({"runs": [{"name": "a"}], "evaluate": {"decisions": ["vote"]}}, "evaluate.decisions takes"),
        ({"runs": [{"name": "a"}], "evaluate": {"tta": True, "typo": 1}}, "unknown key"),
    ],
)
def test_a_bad_study_file_fails_before_training(tmp_path: Path, body: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_study(write_study(tmp_path, body))


@pytest.mark.parametrize("name", ["study-freeze", "study-large-vs-small", "study-best", "study-recommended"])
def test_shipped_study_files_parse(name: str) -> None:
    study = load_study(REPO / "configs" / f"{name}.yaml")
    assert study.runs


def test_recommended_study_varies_the_training_seed_on_one_split() -> None:
    study = load_study(REPO / "configs" / "study-recommended.yaml")
    seeded = next(run for run in study.runs if run.name == "default-s1")
    assert seeded.overrides == ("seed=1",)
    assert run_recipe(seeded, Budget()).seed == 1
    assert study.split["seed"] == 0


def test_freeze_study_has_the_reference_runs() -> None:
    study = load_study(REPO / "configs" / "study-freeze.yaml")
    plans = {run.name: run_recipe(run, Budget()).stages[0].trainable for run in study.runs}
    assert plans == {
        "without-imagenet": "all", "all-layers": "all", "first-and-last": "first-and-last",
        "last-block": "last-block", "freeze-middle-6": "freeze-middle-6", "beginning": "beginning",
        "middle": "middle", "small-cnn": "all",
    }
    recipes = {run.name: run_recipe(run, Budget()) for run in study.runs}
    assert recipes["without-imagenet"].pretrained == "none"
    assert recipes["all-layers"].pretrained == "imagenet"
    assert recipes["small-cnn"].arch == "small_cnn"


def test_large_vs_small_reports_each_stage() -> None:
    study = load_study(REPO / "configs" / "study-large-vs-small.yaml")
    assert study.stages_separately
    archs = {run.name: run_recipe(run, Budget()).arch for run in study.runs}
    assert archs == {"large": "mobilenet_v3_large", "small": "mobilenet_v3_small"}


def test_budget_scales_epochs_and_size() -> None:
    study = load_study(REPO / "configs" / "study-large-vs-small.yaml")
    recipe = run_recipe(study.runs[1], Budget(image_size=96, epochs_scale=0.5))
    assert recipe.image_size == 96
    assert [stage.epochs for stage in recipe.stages] == [8, 3]


def test_study_overrides_apply_to_every_run_before_its_own_set() -> None:
    study = load_study(REPO / "configs" / "study-recommended.yaml")
    budget = Budget(overrides=("stages.1.mixing=null", "seed=7"))
    recipes = {run.name: run_recipe(run, budget) for run in study.runs}
    mixed_by_its_own_set = recipes.pop("default-mix-all").stages[1].mixing
    assert all(recipe.stages[1].mixing is None for recipe in recipes.values())
    assert mixed_by_its_own_set is not None and mixed_by_its_own_set.probability == 1.0, "its own set wins"
    assert load_recipe("default").stages[1].mixing is not None
    assert recipes["default"].seed == 7
    assert recipes["default-s1"].seed == 1
    assert "every run with stages.1.mixing=null, seed=7" in budget.describe()


def test_study_overrides_are_recorded_and_a_resume_without_them_is_refused(tmp_path: Path) -> None:
    budget = Budget(overrides=("stages.1.mixing=null",))
    check_budget(tmp_path, budget)
    assert recorded_budget(tmp_path) == budget
    check_budget(tmp_path, budget)
    with pytest.raises(ConfigError, match=r"started with budget \(.*every run with stages.1.mixing=null"):
        check_budget(tmp_path, Budget())


def test_study_overrides_reach_the_separate_jobs_commands(
    tiny_ham_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    data = tiny_ham_dataset(images_per_class=4, images_per_lesion=1)
    commands = prepare_jobs(tiny_study(tmp_path), data=data, runs_dir=tmp_path / "runs",
                            budget=Budget(overrides=("stages.0.lr=2.0e-3",)))
    for command, own in zip(commands, ("--set seed=1", "--set seed=2"), strict=True):
        assert command.index("--set stages.0.lr=2.0e-3") < command.index(own)


def test_study_table_marks_the_best_by_validation_never_by_test() -> None:
    rows = [{"label": name, "accuracy": 0.5, "val_balanced_accuracy": val, "balanced_accuracy": test,
             "macro_f1": 0.4} for name, val, test in (("x", 0.3, 0.9), ("y", 0.6, 0.2), ("z", 0.5, 0.5))]
    labels = [line[0] for line in study_table(rows).rows]
    assert labels == ["x", "**best** y", "z"]


@pytest.mark.parametrize("flag", ["lesion_level", "fields_withheld"])
def test_a_lesion_level_or_fields_withheld_row_is_never_marked_best(flag: str) -> None:
    rows = [{"label": name, "accuracy": 0.5, "val_balanced_accuracy": val, "balanced_accuracy": 0.5,
             "macro_f1": 0.4, flag: flagged} for name, val, flagged in (("x", 0.3, False), ("y", 0.9, True))]
    assert [line[0] for line in study_table(rows).rows] == ["**best** x", "y"]


def test_a_metadata_run_is_also_scored_with_its_fields_withheld(
    tiny_ham_dataset: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LESIONLAB_CACHE", str(tmp_path / "cache"))
    data = tiny_ham_dataset(images_per_class=20, images_per_lesion=1)
    config = write_study(tmp_path, {
        "name": "fields",
        "set": [*TINY, "metadata={fields: [age, sex, site], dropout: 0.3, hidden: 8}"],
        "stages": [{"trainable": "all", "epochs": 1, "batch_size": 16, "feature_cache": None}],
        "runs": [{"name": "m", "label": "with metadata"}],
    })
    folder = run_study(config, data=data, runs_dir=tmp_path / "runs")
    rows = json.loads((folder / "study.json").read_text())["rows"]
    assert [(row["run"], row["label"]) for row in rows] == [
        ("m", "with metadata"), ("m-no-metadata", "with metadata, fields withheld")]
    assert rows[best_row(rows)]["run"] == "m"
    for part in ("val", "test"):
        withheld = json.loads((folder / "m" / "eval" / f"{part}-no-metadata" / "metrics.json").read_text())
        assert withheld["evaluation"]["metadata"]["withheld"] is True
        assert withheld["balanced_accuracy"] == pytest.approx(
            rows[1]["val_balanced_accuracy" if part == "val" else "balanced_accuracy"])


def test_a_study_runs_on_one_split_skips_finished_runs_and_averages_an_ensemble(
    tiny_ham_dataset: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LESIONLAB_CACHE", str(tmp_path / "cache"))
    data = tiny_ham_dataset(images_per_class=20, images_per_lesion=1)
    folder = run_study(tiny_study(tmp_path), data=data, runs_dir=tmp_path / "runs")

    table = read_dataset(data)
    split = read_split(folder / "split.csv", table)
    assert shared_lesions(split) == set()
    for run in ("a", "b"):
        assert (folder / run / "split.csv").read_text() == (folder / "split.csv").read_text()
        assert (folder / run / "eval" / "test" / "report.html").is_file()

    with (folder / "study.csv").open(newline="") as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle)}
    variants = ("class-offsets", "lesion-mean", "class-offsets+lesion-mean")
    decisions = [f"ensemble-ab+{rules}" for rules in variants]
    assert set(rows) == {"a", "b", "ensemble-ab", *decisions}
    assert rows["ensemble-ab+lesion-mean"]["lesion_level"] == "True"
    offsets = json.loads((folder / "ensemble-ab+class-offsets" / "metrics.json").read_text())["class_offsets"]
    assert list(offsets) == list(CLASS_CODES)
    assert sum(offsets.values()) == pytest.approx(0.0, abs=1e-3)
    members = [read_predictions(folder / run / "eval" / "test" / "predictions.csv") for run in ("a", "b")]
    mean = np.mean([member.probabilities for member in members], axis=0)
    expected = np.mean(mean.argmax(axis=1) == members[0].labels)
    assert float(rows["ensemble-ab"]["accuracy"]) == pytest.approx(expected)
    assert (folder / "study.png").stat().st_size > 0
    assert "**best**" in (folder / "study.md").read_text()

    study_rows = json.loads((folder / "study.json").read_text())["rows"]
    best = study_rows[best_row(study_rows)]
    compared = [row for row in study_rows if row is not best]
    assert compared and all("val_vs_best" in row for row in compared), "each other row paired with the best"
    for row in compared:
        behind = row["val_balanced_accuracy"] - best["val_balanced_accuracy"]
        assert row["val_vs_best"] == pytest.approx(behind)
        assert row["val_vs_best_low"] <= row["val_vs_best"] <= row["val_vs_best_high"]
    assert "val vs best (paired 95%)" in (folder / "study.md").read_text()
    recorded = read_model_file(folder / "model.json")
    assert [member.ref.path for member in recorded.members] == best.get("members", [best["run"]])
    assert (recorded.class_offsets is not None) == ("class-offsets" in best.get("decisions", ()))
    assert main(["evaluate", str(folder / "model.json")]) == 0
    deployed = json.loads((folder / "eval" / "model-test" / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert deployed[key] == pytest.approx(best[key], abs=1e-12), key
    assert recorded.malignancy is not None and recorded.malignancy.fitted_on == "val"
    fitted = deployed["malignancy"]["threshold_fit"]
    assert fitted["threshold"] == pytest.approx(recorded.malignancy.threshold, abs=1e-9)
    assert read_model_file(folder / "model.json").malignancy.threshold == fitted["threshold"]
    deployed_rule = load_predictor(folder / "model.json").malignancy
    assert deployed_rule.fitted and deployed_rule.threshold == fitted["threshold"]
    image = folder.parent.parent / "image.jpg"
    class_image(3, np.random.default_rng(5)).save(image)
    member_paths = [folder / member.ref.path for member in recorded.members]
    by_flags = load_predictor(member_paths[0], ensemble=member_paths[1:],
                              class_offsets=recorded.class_offsets and folder / recorded.class_offsets.path)
    assert load_predictor(folder / "model.json").predict_file(image).probabilities == pytest.approx(
        by_flags.predict_file(image).probabilities, abs=1e-12)

    trained = (folder / "a" / "best.safetensors").stat().st_mtime_ns
    evaluated = (folder / "a" / "eval" / "test" / "metrics.json").stat().st_mtime_ns
    run_study(tiny_study(tmp_path), data=data, runs_dir=tmp_path / "runs", only=("a",))
    assert (folder / "a" / "best.safetensors").stat().st_mtime_ns == trained
    assert (folder / "a" / "eval" / "test" / "metrics.json").stat().st_mtime_ns == evaluated
    assert json.loads((folder / "study.json").read_text())["rows"][0]["run"] == "a"
    with pytest.raises(ConfigError, match="started with budget"):
        run_study(tiny_study(tmp_path), data=data, runs_dir=tmp_path / "runs", budget=Budget(image_size=48))


def test_a_finished_run_with_another_recipe_or_split_is_refused_not_skipped(
    tiny_ham_dataset: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LESIONLAB_CACHE", str(tmp_path / "cache"))
    data = tiny_ham_dataset(images_per_class=20, images_per_lesion=1)
    folder = run_study(tiny_study(tmp_path), data=data, runs_dir=tmp_path / "runs", only=("a",))
    (tmp_path / "changed").mkdir()
    changed = write_study(tmp_path / "changed", {
        **yaml.safe_load(tiny_study(tmp_path).read_text()),
        "runs": [{"name": "a", "set": ["seed=5"]}, {"name": "b", "set": ["seed=2"]}],
    })
    trained = (folder / "a" / "best.safetensors").stat().st_mtime_ns
    with pytest.raises(ConfigError, match=r"a/config\.yaml: run a was trained with another recipe.*seed"):
        run_study(changed, data=data, runs_dir=tmp_path / "runs", only=("a",))
    assert (folder / "a" / "best.safetensors").stat().st_mtime_ns == trained, "nothing retrained or lost"

    table = read_dataset(data)
    moved = read_split(folder / "a" / "split.csv", table)
    moved.parts["train"].append(moved.parts["val"].pop())
    write_split(folder / "a" / "split.csv", moved)
    with pytest.raises(ConfigError, match=r"a/split\.csv: run a was trained on another split"):
        run_study(tiny_study(tmp_path), data=data, runs_dir=tmp_path / "runs", only=("a",))


def test_an_evaluation_is_reused_only_for_the_same_weights_and_views(tmp_path: Path) -> None:
    weights = tmp_path / "best.safetensors"
    weights.write_bytes(b"weights")
    out_dir = tmp_path / "eval" / "test"
    out_dir.mkdir(parents=True)
    (out_dir / "predictions.csv").write_text("image_id\n", encoding="utf-8")
    (out_dir / "logits.safetensors").write_bytes(b"logits")
    views = ("identity", "hflip")
    record = {"evaluation": {"tta_views": list(views),
                             "temperature": {"checkpoint_sha256": file_sha256(weights)}}}
    (out_dir / "metrics.json").write_text(json.dumps(record), encoding="utf-8")
    assert current_evaluation(out_dir, weights, views) == record
    assert current_evaluation(out_dir, weights, None) is None
    weights.write_bytes(b"retrained")
    assert current_evaluation(out_dir, weights, views) is None


def test_a_run_stopped_before_its_first_epoch_ended_trains_on_the_next_study_command(
    tiny_ham_dataset: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LESIONLAB_CACHE", str(tmp_path / "cache"))
    data = tiny_ham_dataset(images_per_class=20, images_per_lesion=1)
    train_stages = runner.run_stages

    def stopped_in_its_first_epoch(*args: object, **kwargs: object) -> object:
        raise TrainingStopped(signal.SIGTERM)

    monkeypatch.setattr(runner, "run_stages", stopped_in_its_first_epoch)
    with pytest.raises(TrainingStopped):
        run_study(tiny_study(tmp_path), data=data, runs_dir=tmp_path / "runs", only=("a",))
    stopped = tmp_path / "runs" / "study-tiny" / "a"
    assert json.loads((stopped / "run.json").read_text())["status"] == "stopped"
    assert not (stopped / "state.json").exists()

    monkeypatch.setattr(runner, "run_stages", train_stages)
    folder = run_study(tiny_study(tmp_path), data=data, runs_dir=tmp_path / "runs", only=("a",))
    assert json.loads((folder / "a" / "run.json").read_text())["status"] == "finished"
    assert (folder / "a" / "eval" / "test" / "metrics.json").is_file()
