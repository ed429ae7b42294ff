"""Evaluation outputs from synthetic predictions: files, metrics recomputable from predictions.csv, a
self-contained HTML report and a Markdown report whose figures exist."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score

from lesionlab.classes import CLASS_CODES
from lesionlab.evaluation.evaluate import variant_probabilities, write_evaluation
from lesionlab.evaluation.metrics import expected_calibration_error
from lesionlab.evaluation.plots import plot_study
from lesionlab.evaluation.predictions import Predictions, read_predictions
from lesionlab.evaluation.summary import data_summary
from lesionlab.views import DEFAULT_VIEWS


def synthetic_view_logits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Imbalanced labels, six noisy views per image, two images per lesion."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(7, size=count, p=[0.05, 0.08, 0.12, 0.03, 0.12, 0.55, 0.05])
    logits = rng.normal(size=(count, 1, 7)) + rng.normal(scale=0.5, size=(count, len(DEFAULT_VIEWS), 7))
    logits[np.arange(count), :, labels] += 2.0
    lesions = [f"HAM_{i // 2:07d}" for i in range(count)]
    return logits * 3.0, labels, lesions


@pytest.fixture(scope="module")
def evaluation_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One written evaluation with all four variants and a two-stage history."""
    out_dir = tmp_path_factory.mktemp("eval") / "ham10000-test"
    logits, labels, lesions = synthetic_view_logits(400, seed=0)
    image_ids = tuple(f"ISIC_{i:07d}" for i in range(400))
    history = out_dir.parent / "history.csv"
    history.write_text(
        "stage,epoch,lr,train_loss,val_loss,val_accuracy,val_balanced_accuracy,val_macro_f1,seconds\n"
        "1,1,1e-3,1.9,1.7,0.55,0.30,0.28,10\n1,2,1e-3,1.5,1.4,0.62,0.38,0.35,10\n"
        "2,1,2e-4,1.2,1.1,0.70,0.49,0.45,30\n2,2,2e-4,1.0,1.0,0.73,0.52,0.50,30\n"
    )
    write_evaluation(
        out_dir,
        {
            name: Predictions(image_ids, tuple(lesions), labels, probabilities, CLASS_CODES)
            for name, probabilities in variant_probabilities(logits, use_tta=True, temperature=2.5).items()
        },
        evaluation={
            "run": "unit-run",
            "dataset": "ham10000",
            "split": "test",
            "variant_description": "average of 6 views, temperature 2.5",
            "calibration_note": "T fitted on the validation part.",
            "training_overlap": {"images": 0, "lesions": 3},
        },
        data=data_summary(
            {"train": [5, 5, 1], "val": [5], "test": labels.tolist()},
            labels.tolist(),
            "ham10000",
            CLASS_CODES,
        ),
        model={
            "arch": "small_cnn",
            "parameters": 1000,
            "trainable_parameters": 200,
            "flops_per_image": 5e6,
            "input_size": 32,
            "mean": [0.5] * 3,
            "std": [0.25] * 3,
            "grayscale": False,
            "stage": 2,
            "epoch": 2,
            "training_seconds": 90.0,
            "classes": list(CLASS_CODES),
        },
        history=history,
    )
    return out_dir


def read_predictions_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True labels, predicted labels and probabilities, parsed independently of lesionlab."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    truth = np.array([CLASS_CODES.index(row["true_class"]) for row in rows])
    predicted = np.array([CLASS_CODES.index(row["predicted_class"]) for row in rows])
    probabilities = np.array([[float(row[f"prob_{code}"]) for code in CLASS_CODES] for row in rows])
    return truth, predicted, probabilities


def test_metrics_json_matches_metrics_recomputed_from_predictions_csv(evaluation_dir: Path) -> None:
    metrics = json.loads((evaluation_dir / "metrics.json").read_text())
    truth, predicted, probabilities = read_predictions_csv(evaluation_dir / "predictions.csv")
    assert np.array_equal(predicted, probabilities.argmax(axis=1))
    assert metrics["samples"] == len(truth) == 400
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, predicted))
    assert metrics["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert metrics["weighted_f1"] == pytest.approx(f1_score(truth, predicted, average="weighted"))
    assert metrics["confusion_matrix"]["counts"] == confusion_matrix(truth, predicted).tolist()
    for index, code in enumerate(CLASS_CODES):
        row = metrics["per_class"][code]
        assert row["recall"] == pytest.approx(np.mean(predicted[truth == index] == index))
        assert row["accuracy"] == pytest.approx(np.mean((truth == index) == (predicted == index)))
        assert row["roc_auc"] == pytest.approx(
            roc_auc_score(truth == index, probabilities[:, index]), abs=1e-4
        )
    assert metrics["ece"] == pytest.approx(expected_calibration_error(truth, probabilities), abs=1e-4)
    interval = metrics["confidence_intervals"]["balanced_accuracy"]
    assert interval["low"] < metrics["balanced_accuracy"] < interval["high"]
    assert metrics["confidence_intervals"]["unit"] == "lesion"
    assert metrics["confidence_intervals"]["clusters"] == 200


def test_variants_compare_plain_tta_and_temperature(evaluation_dir: Path) -> None:
    metrics = json.loads((evaluation_dir / "metrics.json").read_text())
    variants = metrics["variants"]
    assert list(variants) == ["plain", "tta", "temperature", "tta+temperature"]
    assert metrics["evaluation"]["variant"] == "tta+temperature"
    assert variants["temperature"]["accuracy"] == variants["plain"]["accuracy"]
    assert variants["temperature"]["nll"] < variants["plain"]["nll"]
    assert variants["tta+temperature"]["accuracy"] == pytest.approx(metrics["accuracy"])


def test_markdown_report_references_only_existing_figures(evaluation_dir: Path) -> None:
    markdown = (evaluation_dir / "report.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(figures) == 5
    assert all((evaluation_dir / figure).is_file() and figure.endswith(".png") for figure in figures)
    assert "balanced accuracy" in markdown and "+TTA" in markdown and "mel" in markdown
    assert "3 of their lesions were in the run's training part" in markdown


def test_html_report_is_self_contained(evaluation_dir: Path) -> None:
    page = (evaluation_dir / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 5
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    assert "<link" not in page and "url(" not in page


def test_report_answers_malignant_or_benign(evaluation_dir: Path) -> None:
    metrics = json.loads((evaluation_dir / "metrics.json").read_text())
    malignancy = metrics["malignancy"]
    assert {"sensitivity", "specificity", "roc_auc", "melanoma"} <= set(malignancy)
    assert malignancy["threshold_fitted"] is False and "fallback" in malignancy["rule"]
    markdown = (evaluation_dir / "report.md").read_text()
    section = markdown[markdown.index("## Malignant vs benign"):markdown.index("## Per class")]
    assert "melanoma sensitivity at specificity 0.90" in section and "fallback" in section
    assert "(figures/malignancy-roc.png)" in section
    assert (evaluation_dir / "figures" / "malignancy-roc.png").is_file()
    html_page = (evaluation_dir / "report.html").read_text()
    assert "Malignant vs benign" in html_page and "ROC curve, malignant" in html_page


def test_metrics_json_stores_no_absolute_path_of_the_run(evaluation_dir: Path) -> None:
    evaluation = json.loads((evaluation_dir / "metrics.json").read_text())["evaluation"]
    assert "run_dir" not in evaluation and evaluation["run"] == "unit-run"


def test_predictions_csv_reads_back_as_the_primary_variant(evaluation_dir: Path) -> None:
    predictions = read_predictions(evaluation_dir / "predictions.csv")
    truth, predicted, probabilities = read_predictions_csv(evaluation_dir / "predictions.csv")
    assert predictions.class_codes == CLASS_CODES
    assert np.array_equal(predictions.labels, truth) and np.array_equal(predictions.predicted, predicted)
    assert predictions.probabilities == pytest.approx(probabilities)
    assert predictions.lesion_ids[:2] == ("HAM_0000000", "HAM_0000000")


def test_study_figure_is_written(tmp_path: Path) -> None:
    rows = [
        {
            "label": f"run {index}",
            "accuracy": 0.7 + index / 20,
            "balanced_accuracy": 0.5 + index / 20,
            "macro_f1": 0.45 + index / 20,
            **{f"recall_{code}": (None if code == "df" and index == 0 else 0.6) for code in CLASS_CODES},
        }
        for index in range(3)
    ]
    figure = plot_study(rows, "unit study", tmp_path / "study.png")
    assert figure.read_bytes().startswith(b"\x89PNG")
