"""Lesion-grouped K-fold cross-validation (`lesionlab cv`): folds that share no lesion and leave the test part
alone, every train + val image scored once out of fold, the fold ensemble scored as its model file deploys
it, and reruns that continue the same folds or refuse to change them."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import lesionlab
from lesionlab.classes import CLASS_CODES
from lesionlab.cli import main
from lesionlab.crossval import CrossValidationResult
from lesionlab.data.readers import read_dataset
from lesionlab.data.readers.samples import Sample
from lesionlab.data.split import Split, fold_splits, make_split
from lesionlab.errors import USER_ERROR, ConfigError
from lesionlab.evaluation.metrics import compute_metrics
from lesionlab.evaluation.predictions import Predictions, read_predictions, write_predictions
from lesionlab.evaluation.view_logits import LOGITS_FILE, ensemble_probabilities, read_view_logits
from lesionlab.tables import format_table

TINY = ["arch=small_cnn", "pretrained=none", "head_hidden=null", "dropout=null", "image_size=32",
        "workers=0", "channels_last=false", "cache=false", "stages=[{trainable: all, epochs: 1, "
        "batch_size: 16, feature_cache: null, lr: 0.003, optimizer: adam}]"]


def generated_split(lesions_per_class: int = 30, seed: int = 0) -> Split:
    """Lesions of 1-3 images each; every third lesion in the test part, 20 in val, the rest in train."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for label in range(7):
        for lesion in range(lesions_per_class):
            part = "test" if lesion % 3 == 2 else "val" if lesion < 3 else "train"
            parts[part] += [Sample(f"img_{label}_{lesion}_{shot}", "unused.jpg", label,
                                   f"les_{label}_{lesion}", "generated")
                            for shot in range(int(rng.integers(1, 4)))]
    return Split(parts, "fingerprint", seed, "lesion")


def test_folds_share_no_lesion_cover_train_and_val_once_and_keep_the_test_part() -> None:
    split = generated_split()
    folds = fold_splits(split, 5, seed=3)
    pool = {s.image_id for part in ("train", "val") for s in split.parts[part]}
    held_out = Counter(s.image_id for fold in folds for s in fold.parts["val"])
    assert set(held_out) == pool and set(held_out.values()) == {1}, "every train + val image held out once"
    for fold in folds:
        assert fold.parts["test"] == split.parts["test"]
        assert {s.image_id for s in fold.parts["train"]} == pool - {s.image_id for s in fold.parts["val"]}
        trained_lesions = {s.lesion_id for s in fold.parts["train"]}
        assert trained_lesions.isdisjoint({s.lesion_id for s in fold.parts["val"]})
        shares = np.bincount([s.label for s in fold.parts["val"]], minlength=7) / len(fold.parts["val"])
        whole = np.bincount([s.label for part in ("train", "val") for s in split.parts[part]], minlength=7)
        assert np.abs(shares - whole / whole.sum()).max() < 0.05, "class-stratified"
    assert [f.parts["val"] for f in fold_splits(split, 5, seed=3)] == [f.parts["val"] for f in folds]
    with pytest.raises(ConfigError, match="at least 2 folds"):
        fold_splits(split, 1, seed=0)


def test_a_cross_validation_trains_its_folds_scores_out_of_fold_and_deploys_the_fold_ensemble(
    tiny_ham_dataset: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LESIONLAB_CACHE", str(tmp_path / "cache"))
    data = tiny_ham_dataset(images_per_class=16, images_per_lesion=2)
    runs = tmp_path / "runs"

    def cv(*extra: str, folds: int = 2) -> list[str]:
        return ["cv", "--data", str(data), "--runs-dir", str(runs), "--name", "cv", "--folds", str(folds),
                *(word for item in TINY for word in ("--set", item)), *extra]

    command = cv()
    assert main([*command, "--fold", "0"]) == 0
    assert "fold(s) 1 still to train" in capsys.readouterr().out
    folder = runs / "cv"
    assert not (folder / "model.json").exists()
    trained = (folder / "fold-0" / "best.safetensors").stat().st_mtime_ns

    result = lesionlab.cross_validate(out=folder, data=data, overrides=TINY, folds=2)  # the Python API
    assert (folder / "fold-0" / "best.safetensors").stat().st_mtime_ns == trained, "a finished fold is kept"

    table = read_dataset(data)
    whole = make_split(table, 0.15, 0.15, seed=0)
    pooled = {s.image_id for part in ("train", "val") for s in whole.parts[part]}
    out_of_fold = read_predictions(folder / "out-of-fold" / "predictions.csv")
    assert sorted(out_of_fold.image_ids) == sorted(pooled), "every train + val image scored once"
    for fold in (0, 1):
        held = read_predictions(folder / f"fold-{fold}" / "eval" / "val" / "predictions.csv")
        rows = [out_of_fold.image_ids.index(image) for image in held.image_ids]
        assert out_of_fold.probabilities[rows] == pytest.approx(held.probabilities, abs=1e-6)

    logits = [read_view_logits(folder / f"fold-{fold}" / "eval" / "test" / LOGITS_FILE) for fold in (0, 1)]
    ensemble = read_predictions(folder / "test" / "predictions.csv")
    assert sorted(ensemble.image_ids) == sorted(s.image_id for s in whole.parts["test"])
    expected = ensemble_probabilities(logits, ["fold-0", "fold-1"])
    assert ensemble.probabilities == pytest.approx(expected, abs=1e-6)
    metrics = json.loads((folder / "test" / "metrics.json").read_text())
    assert metrics["malignancy"]["threshold_fit"]["fitted_on"] == "out-of-fold"
    assert (folder / "out-of-fold" / "figures" / "confusion-matrix.png").stat().st_size > 0
    record = json.loads((folder / "cv.json").read_text())
    assert record["results"]["out-of-fold"]["samples"] == len(pooled) == result.out_of_fold["samples"]
    assert result.test["balanced_accuracy"] == metrics["balanced_accuracy"]

    assert main(["evaluate", str(folder / "model.json")]) == 0
    deployed = json.loads((folder / "eval" / "model-test" / "metrics.json").read_text())
    assert deployed["balanced_accuracy"] == pytest.approx(metrics["balanced_accuracy"], abs=1e-12)
    assert deployed["malignancy"]["threshold"] == pytest.approx(metrics["malignancy"]["threshold"])
    assert main(["evaluate", str(folder / "model.json"), "--split", "val"]) == USER_ERROR
    assert "validated on different parts" in capsys.readouterr().err

    assert main([*command, "--compare", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "Out of fold (choose by this)" in printed and "95% interval (paired)" in printed
    assert re.search(r"balanced accuracy +(\S+) +\1 +\+0\.000 +\+0\.000 to \+0\.000", printed)
    other = tmp_path / "other"
    write_predictions(other / "out-of-fold" / "predictions.csv", Predictions(
        out_of_fold.image_ids[1:], out_of_fold.lesion_ids[1:], out_of_fold.labels[1:],
        out_of_fold.probabilities[1:], out_of_fold.class_codes))
    assert main([*command, "--compare", str(other)]) == USER_ERROR
    assert "not this cross-validation's" in capsys.readouterr().err

    assert main(cv(folds=3)) == USER_ERROR
    assert "started with 2 folds, not 3" in capsys.readouterr().err
    assert main(cv("--set", "seed=4")) == USER_ERROR
    assert "fold-0/config.yaml: run fold-0 was trained with another recipe" in capsys.readouterr().err


def test_the_summary_table_shows_a_class_a_part_lacks_as_a_dash() -> None:
    labels = np.array([0, 1, 2, 3, 4, 5, 0, 1])  # no vasc
    probabilities = np.eye(7)[labels] * 0.9 + 0.1 / 7
    predictions = Predictions(tuple(f"i{n}" for n in range(8)), (None,) * 8, labels, probabilities,
                              CLASS_CODES)
    metrics = compute_metrics(predictions)
    result = CrossValidationResult(Path("cv"), ({"val": metrics, "test": metrics},), metrics, metrics)
    text = format_table(result.table())
    assert "rec vasc" in text and text.splitlines()[-1].rstrip().endswith("—")
