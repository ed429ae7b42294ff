"""Checkpoints: safetensors + JSON card round-trip, and clear errors for damaged files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lesionlab.classes import CLASS_CODES
from lesionlab.errors import CheckpointError
from lesionlab.models.checkpoint import ModelCard, load_checkpoint, load_run, read_card, save_checkpoint
from lesionlab.models.registry import build_model


def small_card(**changes: object) -> ModelCard:
    """A card for a linear-head small CNN."""
    fields: dict[str, object] = dict(
        arch="small_cnn", num_classes=7, classes=list(CLASS_CODES), input_size=32, mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25], grayscale=False, head_hidden=0, dropout=0.2, stage=1, epoch=3,
        metrics={"val_balanced_accuracy": 0.5}, run_name="unit",
    )
    fields.update(changes)
    return ModelCard(**fields)


def test_round_trip_restores_weights_and_card(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", pretrained="none")
    card = small_card()
    weights = save_checkpoint(tmp_path / "stage1-e003", model, card)
    assert weights == tmp_path / "stage1-e003.safetensors"
    assert json.loads((tmp_path / "stage1-e003.json").read_text())["arch"] == "small_cnn"

    loaded, loaded_card = load_checkpoint(weights)
    assert loaded_card == card
    assert not loaded.training
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(images), model.eval()(images))
    assert read_card(tmp_path / "stage1-e003.json") == card


def test_mobilenet_round_trip_keeps_a_custom_head(tmp_path: Path) -> None:
    model = build_model("mobilenet_v3_small", pretrained="none", head_hidden=32, dropout=0.1)
    card = small_card(arch="mobilenet_v3_small", head_hidden=32, dropout=0.1)
    save_checkpoint(tmp_path / "best", model, card)
    loaded, _ = load_run(tmp_path)
    assert loaded.classifier[0].out_features == 32
    expected = model.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in loaded.state_dict().items())


def test_truncated_weights_name_the_file(tmp_path: Path) -> None:
    weights = save_checkpoint(tmp_path / "best", build_model("small_cnn", pretrained="none"), small_card())
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"best\.safetensors: unreadable safetensors file"):
        load_checkpoint(weights)


def test_card_that_does_not_match_the_weights(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "best", build_model("small_cnn", pretrained="none"), small_card())
    card_path = tmp_path / "best.json"
    payload = json.loads(card_path.read_text())
    payload["num_classes"] = 3
    card_path.write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="do not match the small_cnn"):
        load_checkpoint(tmp_path / "best")


def test_missing_or_incomplete_card(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "best", build_model("small_cnn", pretrained="none"), small_card())
    card_path = tmp_path / "best.json"
    card_path.write_text(json.dumps({"arch": "small_cnn"}))
    with pytest.raises(CheckpointError, match="lacks classes"):
        load_checkpoint(tmp_path / "best.safetensors")
    card_path.unlink()
    with pytest.raises(CheckpointError, match=r"best\.json: model card not found"):
        load_checkpoint(tmp_path / "best.safetensors")


def test_run_without_best_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no best\.safetensors"):
        load_run(tmp_path)
