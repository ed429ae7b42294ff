"""`model.json`: one file in place of `--ensemble ... --tta --class-offsets ...`, scored exactly as the flag
line scores, and refused (naming the file and the member) when a member is missing or changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import lesionlab
from lesionlab.class_offsets import CLASS_OFFSETS_FILE, ClassOffsets, save_class_offsets
from lesionlab.classes import CLASS_CODES
from lesionlab.cli import main
from lesionlab.errors import CheckpointError, ConfigError
from lesionlab.evaluation.calibration import TemperatureFit, save_temperature
from lesionlab.inference import load_predictor
from lesionlab.inference.model_file import (
    FORMAT,
    VERSION,
    read_model_file,
    record_threshold,
    write_model_file,
)
from lesionlab.io_utils import file_sha256
from lesionlab.malignancy import ThresholdFit
from lesionlab.serve.app import create_app


@pytest.fixture(scope="module")
def image_path(shared_data_dir: Path) -> Path:
    """One real HAM10000 image."""
    return sorted((shared_data_dir / "images").glob("*.jpg"))[0]


def offsets_file(folder: Path) -> Path:
    """Class offsets for the two tiny members that favour `df`, so their effect on the decision is certain."""
    values = np.array([8.0 if code == "df" else 0.0 for code in CLASS_CODES])
    record = ClassOffsets(CLASS_CODES, tuple((values - values.mean()).tolist()), "val",
                          ("tiny-run", "tiny-run"), 100)
    return save_class_offsets(folder / "ensemble-ab+class-offsets" / CLASS_OFFSETS_FILE, record)


def copy_run(source: Path, target: Path) -> Path:
    """A private copy of a session-scoped run directory, to change or delete."""
    shutil.copytree(source, target)
    return target


def test_model_file_scores_as_the_flag_line_in_predict_load_and_serve(
        tiny_run_dir: Path, calibrated_run_dir: Path, image_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    offsets = offsets_file(tmp_path)
    flags = ["--ensemble", str(calibrated_run_dir), "--tta", "--class-offsets", str(offsets)]
    model = lesionlab.load(tiny_run_dir, tta=True, ensemble=[calibrated_run_dir], class_offsets=offsets)
    written = model.save(tmp_path / "deploy" / "model.json")

    payload = json.loads(written.read_text(encoding="utf-8"))
    assert (payload["format"], payload["version"]) == (FORMAT, VERSION)
    assert [member["sha256"] for member in payload["members"]] == [
        file_sha256(run / "best.safetensors") for run in (tiny_run_dir, calibrated_run_dir)]
    assert [member["temperature"] for member in payload["members"]] == [None, 2.0]
    assert payload["views"] == list(model.predictor.views) and len(payload["views"]) > 1
    assert payload["class_offsets"]["sha256"] == file_sha256(offsets)
    assert read_model_file(written).to_dict() == payload

    assert main(["predict", str(tiny_run_dir), str(image_path), "--json", *flags]) == 0
    by_flags = json.loads(capsys.readouterr().out)
    assert main(["predict", str(written), str(image_path), "--json"]) == 0
    by_file = json.loads(capsys.readouterr().out)
    assert by_file == by_flags
    assert by_file["predictions"][0]["top_class"] == "df"

    reloaded = lesionlab.load(written)
    assert reloaded.predict(image_path).probabilities == model.predict(image_path).probabilities
    assert reloaded.members == (tiny_run_dir, calibrated_run_dir) and reloaded.class_offsets == offsets

    client = TestClient(create_app(load_predictor(written)))
    files = {"file": ("lesion.jpg", image_path.read_bytes(), "image/jpeg")}
    served = client.post("/predict", files=files).json()
    assert served["probabilities"] == pytest.approx(by_flags["predictions"][0]["probabilities"], abs=1e-12)


def test_paths_are_relative_so_a_folder_can_move(tiny_run_dir: Path, image_path: Path,
                                                 tmp_path: Path) -> None:
    folder = tmp_path / "bundle"
    copy_run(tiny_run_dir, folder / "member")
    lesionlab.load(folder / "member").save(folder / "model.json")
    assert read_model_file(folder / "model.json").members[0].ref.path == "member"
    moved = folder.rename(tmp_path / "moved")
    expected = lesionlab.load(tiny_run_dir).predict(image_path).probabilities
    assert lesionlab.load(moved / "model.json").predict(image_path).probabilities == expected


def test_missing_or_changed_members_are_refused(tiny_run_dir: Path, tmp_path: Path) -> None:
    member = copy_run(tiny_run_dir, tmp_path / "member")
    model_file = lesionlab.load(member).save(tmp_path / "model.json")

    save_temperature(member / "best.temperature.json",
                     TemperatureFit(1.5, "val", 100, 1.0, 0.9, file_sha256(member / "best.safetensors")))
    with pytest.raises(CheckpointError, match=r"model\.json: .*member now applies temperature 1\.5"):
        load_predictor(model_file)
    (member / "best.temperature.json").unlink()

    weights = member / "best.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    with pytest.raises(CheckpointError, match=r"model\.json: member has changed"):
        load_predictor(model_file)

    shutil.rmtree(member)
    with pytest.raises(CheckpointError, match=r"model\.json: member is missing"):
        lesionlab.load(model_file)


def test_changed_offsets_and_extra_flags_are_refused(tiny_run_dir: Path, calibrated_run_dir: Path,
                                                     tmp_path: Path) -> None:
    offsets = offsets_file(tmp_path)
    model = lesionlab.load(tiny_run_dir, ensemble=[calibrated_run_dir], class_offsets=offsets)
    model_file = model.save(tmp_path / "model.json")
    with pytest.raises(ConfigError, match="names its members"):
        load_predictor(model_file, ensemble=[calibrated_run_dir])
    offsets.write_text(offsets.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"class-offsets\.json has changed"):
        load_predictor(model_file)


def test_the_fitted_threshold_travels_in_the_model_file(
        tiny_run_dir: Path, calibrated_run_dir: Path, image_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    members = [(tiny_run_dir, None), (calibrated_run_dir, 2.0)]
    without = write_model_file(tmp_path / "plain.json", members, ("identity",))
    fallback = load_predictor(without).malignancy
    assert not fallback.fitted and fallback.threshold == 0.5 and "evaluate MODEL.json" in fallback.description
    fit = ThresholdFit(threshold=0.125, target_sensitivity=0.9, fitted_on="val", samples=200,
                       malignant_samples=40, sensitivity=0.925, specificity=0.5, temperature=None,
                       checkpoint_sha256="ensemble")
    written = record_threshold(without, fit)
    assert json.loads(written.read_text())["malignancy_threshold"]["target_sensitivity"] == 0.9
    assert read_model_file(written).malignancy == fit
    rule = load_predictor(written).malignancy
    assert rule.fitted and rule.threshold == 0.125
    assert lesionlab.load(written).predict(image_path).to_dict()["malignant_threshold"] == 0.125
    assert main(["predict", str(written), str(image_path), "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)["predictions"][0]
    assert predicted["malignant_threshold"] == 0.125 and predicted["malignant_threshold_fitted"] is True
    health = TestClient(create_app(load_predictor(written))).get("/health").json()
    assert health["malignant_threshold"] == 0.125 and health["malignant_threshold_fitted"] is True

    version_one = json.loads(without.read_text())
    version_one["version"] = 1
    del version_one["malignancy_threshold"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(version_one))
    assert read_model_file(old).malignancy is None and not load_predictor(old).malignancy.fitted


def test_a_loaded_model_file_saves_every_field_it_holds(
        tiny_run_dir: Path, calibrated_run_dir: Path, tmp_path: Path) -> None:
    """`lesionlab.load(model.json).save()` writes back the members, their temperatures, the views, the class
    offsets and the malignancy threshold: nothing the file held is lost."""
    offsets = offsets_file(tmp_path)
    first = lesionlab.load(tiny_run_dir, tta=True, ensemble=[calibrated_run_dir],
                           class_offsets=offsets).save(tmp_path / "first.json")
    fit = ThresholdFit(threshold=0.125, target_sensitivity=0.9, fitted_on="val", samples=200,
                       malignant_samples=40, sensitivity=0.925, specificity=0.5, temperature=None,
                       checkpoint_sha256="ensemble")
    record_threshold(first, fit)
    recorded = json.loads(first.read_text())
    assert recorded["malignancy_threshold"] is not None and recorded["class_offsets"] is not None
    assert len(recorded["views"]) > 1 and any(member["temperature"] for member in recorded["members"])

    again = lesionlab.load(first).save(tmp_path / "again.json")
    assert json.loads(again.read_text()) == recorded
    reloaded = lesionlab.load(again)
    assert reloaded.malignancy == fit and reloaded.predictor.malignancy.threshold == 0.125


def test_malformed_model_files_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"format": "other"}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"model\.json: not a lesionlab model file"):
        load_predictor(path)
    path.write_text(json.dumps({"format": FORMAT, "version": VERSION + 1}), encoding="utf-8")
    with pytest.raises(ConfigError, match="reads versions 1, 2"):
        load_predictor(path)
    path.write_text(json.dumps({"format": FORMAT, "version": VERSION, "members": [{"path": "x"}],
                                "views": []}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"members\[0\]: needs 'path' and 'sha256'"):
        load_predictor(path)
    with pytest.raises(CheckpointError, match="model file not found"):
        load_predictor(tmp_path / "absent.json")


def test_export_writes_one_graph_that_predicts_as_the_model_file(
        tiny_run_dir: Path, calibrated_run_dir: Path, shared_data_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    offsets = offsets_file(tmp_path)
    model_file = lesionlab.load(tiny_run_dir, tta=True, ensemble=[calibrated_run_dir],
                                class_offsets=offsets).save(tmp_path / "deploy" / "model.json")
    assert main(["export", str(model_file), "--max-images", "6"]) == 0
    printed = capsys.readouterr().out
    exported = tmp_path / "deploy" / "model.onnx"
    assert exported.is_file() and sorted(path.name for path in exported.parent.iterdir()) == [
        "model.json", "model.onnx"]
    rows = [line for line in printed.splitlines() if line.startswith(("onnxruntime fp32", "openvino fp32"))]
    assert len(rows) == 2 and all("100.0%" in row for row in rows)

    images = sorted((shared_data_dir / "images").glob("ISIC_*.jpg"))[:4]
    arguments = [str(path) for path in images]
    assert main(["predict", str(model_file), *arguments, "--json"]) == 0
    by_file = json.loads(capsys.readouterr().out)["predictions"]
    assert main(["predict", str(exported), *arguments, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    by_graph = document["predictions"]
    for expected, actual in zip(by_file, by_graph, strict=True):
        assert actual["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
        assert actual["top_class"] == expected["top_class"]
    assert "inside the graph: mean of 2 member(s)" in document["calibration"]
    assert "class offsets" in document["calibration"]
    assert not load_predictor(exported).calibrated

    assert main(["predict", str(exported), arguments[0], "--tta"]) == 2
    assert "averages its views inside the graph" in capsys.readouterr().err
    assert main(["export", str(model_file), "--int8"]) == 2
    assert "--int8 quantizes one run's model" in capsys.readouterr().err


def test_export_bench_and_evaluate_refuse_members_that_are_not_runs(
        tiny_onnx_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_file = lesionlab.load(tiny_onnx_file).save(tmp_path / "model.json")
    for verb, message in (("export", "is an exported file"),
                          ("bench", "bench works on run directories"),
                          ("evaluate", "is an exported file")):
        assert main([verb, str(model_file)]) == 2
        error = capsys.readouterr().err
        assert "model.json: " in error and message in error
    assert main(["evaluate", str(model_file), "--tta"]) == 2
    assert "names its members" in capsys.readouterr().err
