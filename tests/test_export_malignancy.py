"""An exported model carries its run's malignancy threshold, so predict and serve from the file flag alike."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lesionlab.errors import CheckpointError
from lesionlab.evaluation.calibration import file_sha256
from lesionlab.export import export_onnx
from lesionlab.inference.onnx_backend import OnnxPredictor
from lesionlab.inference.onnx_metadata import MALIGNANCY_KEY, malignancy_from_metadata, metadata_for
from lesionlab.inference.openvino_backend import OpenVinoPredictor
from lesionlab.inference.torch_backend import TorchPredictor
from lesionlab.malignancy import (
    FALLBACK_RULE,
    FALLBACK_THRESHOLD,
    MalignancyRule,
    ThresholdFit,
    save_threshold,
)
from lesionlab.models.checkpoint import read_card


def fit(temperature: float | None, digest: str = "ab" * 32) -> ThresholdFit:
    return ThresholdFit(0.27, 0.9, "val", 1502, 293, 0.901, 0.70, temperature, digest)


def test_the_metadata_round_trips_a_fitted_threshold(tiny_run_dir: Path) -> None:
    card = read_card(tiny_run_dir / "best.json")
    metadata = metadata_for(card, "fp32", 2.0, MalignancyRule(0.27, fit(2.0)))
    rule = malignancy_from_metadata(metadata, "model.onnx", 2.0)
    assert rule.fitted and rule.threshold == 0.27 and rule.fit == fit(2.0)


def test_files_without_a_fit_or_fitted_under_another_temperature_fall_back(tiny_run_dir: Path) -> None:
    card = read_card(tiny_run_dir / "best.json")
    unfitted = malignancy_from_metadata(metadata_for(card, "fp32", None, FALLBACK_RULE), "m.onnx", None)
    assert (unfitted.fitted, unfitted.threshold) == (False, FALLBACK_THRESHOLD)
    assert "carries no threshold" in unfitted.description
    older = malignancy_from_metadata({}, "m.onnx", None)  # exported before the key existed
    assert not older.fitted
    mismatch = malignancy_from_metadata(metadata_for(card, "fp32", 1.5, MalignancyRule(0.27, fit(2.0))),
                                        "m.onnx", 1.5)
    assert not mismatch.fitted and "temperature 2.0" in mismatch.description


def test_damaged_threshold_metadata_names_the_file(tiny_run_dir: Path) -> None:
    with pytest.raises(CheckpointError, match=r"bad\.onnx.*re-export"):
        malignancy_from_metadata({MALIGNANCY_KEY: "{not json"}, "bad.onnx", None)


def test_an_exported_file_flags_as_its_run_does(tmp_path: Path, calibrated_run_dir: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(calibrated_run_dir, run_dir)
    save_threshold(run_dir / "best.malignancy.json", fit(2.0, file_sha256(run_dir / "best.safetensors")))
    reference = TorchPredictor.from_path(run_dir)
    assert reference.malignancy.fitted
    path = export_onnx(reference.model, reference.card, tmp_path / "model.onnx",
                       reference.temperature, reference.malignancy)
    for predictor in (OnnxPredictor(path), OpenVinoPredictor(path)):
        assert predictor.malignancy == reference.malignancy
        assert predictor.malignancy.description == reference.malignancy.description
