"""The last step of `lesionlab run`: class offsets chosen on the validation part (kept only where they beat
the plain decisions out of fold), `RUN/model.json`, and the model file's test figures, which must be the
run's own TTA probabilities shifted by the saved offsets."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import class_image
from lesionlab.class_offsets import CLASS_OFFSETS_FILE, apply_class_offsets, load_class_offsets
from lesionlab.classes import CLASS_CODES
from lesionlab.cli import main
from lesionlab.evaluation import run_offsets
from lesionlab.evaluation.metrics import balanced_accuracy
from lesionlab.evaluation.predictions import Predictions, read_predictions
from lesionlab.evaluation.run_offsets import OFFSETS_CHOICE_FILE, OffsetsChoice, choose_offsets
from lesionlab.inference.model_file import MODEL_FILE_NAME, read_model_file
from test_pipeline import TINY_RECIPE


def generated_predictions(bias: float, per_class: int = 40, seed: int = 0) -> Predictions:
    """Noisy but informative probabilities for `per_class` images of each class, one lesion each, with
    `bias` subtracted from the df logit so the model under-predicts df by that much."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASS_CODES)), per_class)
    logits = 2.0 * np.eye(len(CLASS_CODES))[labels] + rng.normal(0.0, 1.0, (len(labels), len(CLASS_CODES)))
    logits[:, CLASS_CODES.index("df")] -= bias
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ids = tuple(f"ISIC_{index:07d}" for index in range(len(labels)))
    return Predictions(ids, tuple(f"HAM_{index:07d}" for index in range(len(labels))), labels, probabilities,
                       CLASS_CODES)


def test_offsets_are_kept_where_they_correct_a_lean_out_of_fold() -> None:
    choice = choose_offsets(generated_predictions(bias=3.0))
    assert choice.kept and choice.out_of_fold_mean > choice.plain + 0.05
    assert len(choice.out_of_fold) == len(run_offsets.CHOICE_FOLD_SEEDS)
    assert max(choice.offsets, key=choice.offsets.get) == "df"
    assert sum(choice.offsets.values()) == pytest.approx(0.0, abs=1e-5)
    assert "kept" in choice.describe() and "not kept" not in choice.describe()


def test_offsets_are_dropped_where_the_decisions_are_already_balanced() -> None:
    predictions = generated_predictions(bias=0.0)
    separable = predictions.with_probabilities(0.9 * np.eye(len(CLASS_CODES))[predictions.labels] + 0.1 / 7)
    choice = choose_offsets(separable)
    assert choice.plain == 1.0 and not choice.kept
    assert "not kept" in choice.describe()
    record = choice.to_dict()
    assert record["out_of_fold_mean"] == pytest.approx(np.mean(record["out_of_fold"]))


def always_keep(validation: Predictions) -> OffsetsChoice:
    """The real choice, kept whatever it measured: the tiny run's validation part is too small to decide,
    and the kept branch is what is under test."""
    return dataclasses.replace(choose_offsets(validation), kept=True)


def tiny_run(data: Path, runs_dir: Path, *extra: str) -> int:
    """`lesionlab run` on a tiny generated dataset with the TTA view hflip."""
    arguments = ["run", "--data", str(data), "--epochs-scale", "0.01", "--name", "tiny", "--runs-dir",
                 str(runs_dir), "--tta-views", "hflip", *extra]
    for assignment in TINY_RECIPE:
        arguments += ["--set", assignment]
    return main(arguments)


def test_run_writes_a_model_file_whose_offsets_score_the_test_part(
    tiny_ham_dataset: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LESIONLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(run_offsets, "choose_offsets", always_keep)
    data = tiny_ham_dataset(images_per_class=12)
    assert tiny_run(data, tmp_path / "runs") == 0
    printed = capsys.readouterr().out
    run_dir = tmp_path / "runs" / "tiny"
    choice = json.loads((run_dir / OFFSETS_CHOICE_FILE).read_text())
    assert choice["kept"] and "class offsets fitted on validation" in printed
    offsets = load_class_offsets(run_dir / CLASS_OFFSETS_FILE)
    assert offsets.members == ("tiny",) and offsets.fitted_on == "val"
    model = read_model_file(run_dir / MODEL_FILE_NAME)
    assert model.views == ("identity", "hflip") and model.class_offsets is not None
    assert model.malignancy is not None and model.malignancy.fitted_on == "val"
    assert f"model to deploy: {run_dir / MODEL_FILE_NAME}" in printed
    plain = read_predictions(run_dir / "eval" / f"{data.name}-test" / "predictions.csv")
    shifted = apply_class_offsets(plain.probabilities, offsets.as_array())
    scored = json.loads((run_dir / "eval" / "model-test" / "metrics.json").read_text())
    assert scored["balanced_accuracy"] == pytest.approx(
        balanced_accuracy(plain.labels, shifted.argmax(axis=1)))
    assert main(["evaluate", str(run_dir / MODEL_FILE_NAME), "--split", "test"]) == 0
    again = json.loads((run_dir / "eval" / "model-test" / "metrics.json").read_text())
    assert again["balanced_accuracy"] == scored["balanced_accuracy"]

    other = tmp_path / "other"
    for index, code in enumerate(CLASS_CODES * 2):
        (other / code).mkdir(parents=True, exist_ok=True)
        image = class_image(CLASS_CODES.index(code), np.random.default_rng(index))
        image.save(other / code / f"x{index}.png")
    written = (run_dir / MODEL_FILE_NAME).read_bytes()
    assert main(["evaluate", str(run_dir / MODEL_FILE_NAME), "--data", str(other)]) == 0
    elsewhere = json.loads((run_dir / "eval" / "model-all" / "metrics.json").read_text())
    assert elsewhere["malignancy"]["threshold"] == pytest.approx(model.malignancy.threshold)
    assert elsewhere["malignancy"]["threshold_fit"]["fitted_on"] == "val"
    assert (run_dir / MODEL_FILE_NAME).read_bytes() == written, "other data refits nothing"


def test_run_without_class_offsets_writes_no_model_file(
    tiny_ham_dataset: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LESIONLAB_CACHE", str(tmp_path / "cache"))
    assert tiny_run(tiny_ham_dataset(images_per_class=12), tmp_path / "runs", "--no-class-offsets") == 0
    run_dir = tmp_path / "runs" / "tiny"
    assert not (run_dir / MODEL_FILE_NAME).exists() and not (run_dir / OFFSETS_CHOICE_FILE).exists()
