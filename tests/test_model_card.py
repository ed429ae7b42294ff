"""MODEL_CARD.md is made from a run's records: its figures are the metrics files', never typed in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lesionlab.classes import CLASS_CODES
from lesionlab.model_card import CARD_NAME, write_model_card


def interval(estimate: float) -> dict[str, float]:
    return {"estimate": estimate, "low": estimate - 0.05, "high": estimate + 0.04}


def metrics(run: str, split: str, balanced: float) -> dict[str, Any]:
    """The part of a metrics.json the card reads."""
    return {
        "evaluation": {"run": run, "checkpoint": "best", "dataset": "ham10000", "split": split,
                       "own_split": True, "tta_views": None,
                       "temperature": {"temperature": 0.822, "fitted_on": "val", "samples": 1502,
                                       "nll_before": 0.768, "nll_after": 0.748}},
        "samples": 1501, "roc_auc_macro": 0.915, "ece": 0.043, "ece_bins": 15, "nll": 0.788,
        "per_class": {code: {"recall": 0.5 + index / 100, "support": 10 + index}
                      for index, code in enumerate(CLASS_CODES)},
        "confidence_intervals": {"accuracy": interval(0.724), "balanced_accuracy": interval(balanced),
                                 "macro_f1": interval(0.587)},
        "malignancy": {"sensitivity": interval(0.901), "specificity": interval(0.685),
                       "roc_auc": interval(0.881),
                       "melanoma": {"sensitivity_at_specificity": {"0.80": interval(0.766),
                                                                    "0.90": interval(0.569)}}},
    }


def make_run(folder: Path) -> Path:
    run = folder / "demo"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({
        "name": "demo", "status": "finished", "ended": "2026-12-02T12:51:42+00:00", "train_seconds": 900.6,
        "versions": {"lesionlab": "0.1.0", "torch": "2.14.1"}, "host": {"cpus": 2},
        "dataset": {"format": "ham10000", "images": 10015, "fingerprint": "ba01ab95fa71513c2acf"},
        "split": {"seed": 0, "group": "lesion", "train_images": 7012, "val_images": 1502,
                  "test_images": 1501},
    }))
    (run / "config.yaml").write_text(
        "arch: mobilenet_v3_small\npretrained: imagenet\nimage_size: 224\naugment: dermoscopy\nseed: 0\n"
        "select: balanced_accuracy\nstages:\n- {trainable: head, epochs: 3, optimizer: adam, lr: 0.001,"
        " batch_size: 64, loss: logit-adjusted, image_size: null, ema_decay: null}\n")
    (run / "best.json").write_text(json.dumps({"stage": 1, "epoch": 2,
                                               "metrics": {"val_balanced_accuracy": 0.7339}}))
    return run


def add_evaluation(run: Path, folder: str, payload: dict[str, Any]) -> None:
    (run / "eval" / folder).mkdir(parents=True)
    (run / "eval" / folder / "metrics.json").write_text(json.dumps(payload))


def test_an_unevaluated_run_says_so_and_states_the_fallback(tmp_path: Path) -> None:
    card = write_model_card(make_run(tmp_path)).read_text()
    assert (tmp_path / "demo" / CARD_NAME).is_file()
    assert "must not be used for clinical decisions" in card
    assert "Not evaluated yet" in card
    assert "falls back to a malignant probability of 0.5" in card
    assert "train 7012, val 1502, test 1501" in card and "grouped by lesion" in card
    assert "Stage 1: trains `head`, 3 epochs" in card
    assert "stage 1 epoch 2 (val balanced accuracy 0.734)" in card


def test_the_card_carries_the_evaluations_figures_val_first(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    add_evaluation(run, "ham10000-test", metrics("demo", "test", 0.658))
    add_evaluation(run, "ham10000-val", metrics("demo", "val", 0.747))
    add_evaluation(run, "ensemble-x-test", metrics("another-run", "test", 0.111))
    (run / "best.malignancy.json").write_text(json.dumps({
        "threshold": 0.27025, "target_sensitivity": 0.9, "fitted_on": "val", "samples": 1502,
        "malignant_samples": 293, "sensitivity": 0.901, "specificity": 0.7006}))
    card = write_model_card(run).read_text()
    assert card.index("| ham10000-val (1501 images, single view) | 0.724") < card.index("| ham10000-test")
    assert "0.747 (0.697–0.787)" in card and "0.658 (0.608–0.698)" in card
    assert "0.111" not in card  # another run's evaluation stays off this run's card
    assert "at least **0.270**" in card and "293 malignant images of the val part" in card
    assert "0.766 (0.716–0.806)" in card  # melanoma sensitivity at specificity 0.80
    assert "temperature of 0.822" in card and "expected calibration error 0.043" in card
    assert "0.560 (16)" in card  # mel's recall and support, from per_class


def scored_with_fields(run: str, split: str, balanced: float, withheld: bool) -> dict[str, Any]:
    """A metadata model's metrics, as `lesionlab evaluate` records them with and without `--no-metadata`."""
    payload = metrics(run, split, balanced)
    payload["evaluation"]["metadata"] = {"fields": ["age", "sex", "site"], "withheld": withheld}
    return payload


def test_a_metadata_model_names_its_fields_and_pairs_figures_with_and_without(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    card = json.loads((run / "best.json").read_text())
    card["metadata"] = {"fields": ["age", "sex", "site"], "dropout": 0.3, "hidden": 32}
    (run / "best.json").write_text(json.dumps(card))
    add_evaluation(run, "ham10000-test", scored_with_fields("demo", "test", 0.700, withheld=False))
    add_evaluation(run, "ham10000-test-no-metadata", scored_with_fields("demo", "test", 0.680, withheld=True))
    add_evaluation(run, "ham10000-val", scored_with_fields("demo", "val", 0.750, withheld=False))
    text = write_model_card(run).read_text()
    assert "Inputs: the image and the patient's age, sex, site" in text
    assert "## Patient metadata" in text and "with probability 0.3" in text
    row = "| ham10000-test (1501 images, single view) | 0.700 (0.650–0.740) | 0.680 (0.630–0.720) | +0.020 |"
    assert row in text
    assert "| ham10000-test (1501 images, single view), fields withheld | 0.724" in text
    assert "Not yet scored both ways: ham10000-val (1501 images, single view)" in text


def test_an_image_only_model_has_no_metadata_section(tmp_path: Path) -> None:
    text = write_model_card(make_run(tmp_path)).read_text()
    assert "Inputs: the image only." in text and "## Patient metadata" not in text
