"""Models by name: reference heads, block layout, and offline ImageNet weights with checksums."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from lesionlab.errors import ConfigError, WeightsError
from lesionlab.models.registry import ARCHITECTURES, build_model, pooled_features
from lesionlab.models.weights import WEIGHTS_ENV, sha256_prefix_in_name

SHARED_SMALL_WEIGHTS = (Path(__file__).resolve().parents[1] / ".." / "shared" / "weights"
                        / "mobilenet_v3_small-imagenet-tfhub-63144c2d.pth")


def layer_shapes(head: nn.Module) -> list[tuple[str, object]]:
    """Describe a head as (layer type, size or dropout) pairs."""
    shapes: list[tuple[str, object]] = []
    for layer in head:
        if isinstance(layer, nn.Linear):
            shapes.append(("Linear", (layer.in_features, layer.out_features)))
        elif isinstance(layer, nn.Dropout):
            shapes.append(("Dropout", layer.p))
        else:
            shapes.append((type(layer).__name__, None))
    return shapes


def test_reference_heads() -> None:
    large = build_model("mobilenet_v3_large", pretrained="none")
    small = build_model("mobilenet_v3_small", pretrained="none")
    assert layer_shapes(large.classifier) == [("Linear", (960, 1280)), ("Hardswish", None), ("Dropout", 0.3),
                                              ("Linear", (1280, 7))]
    assert layer_shapes(small.classifier) == [("Linear", (576, 1024)), ("Hardswish", None), ("Dropout", 0.2),
                                              ("Linear", (1024, 7))]


def test_head_size_and_dropout_are_configurable() -> None:
    model = build_model("mobilenet_v3_small", num_classes=3, pretrained="none", head_hidden=64, dropout=0.5)
    assert layer_shapes(model.classifier) == [("Linear", (576, 64)), ("Hardswish", None), ("Dropout", 0.5),
                                              ("Linear", (64, 3))]
    linear = build_model("mobilenet_v3_small", pretrained="none", head_hidden=0, dropout=0.1)
    assert layer_shapes(linear.classifier) == [("Dropout", 0.1), ("Linear", (576, 7))]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_has_the_declared_layout(arch: str) -> None:
    spec = ARCHITECTURES[arch]
    model = build_model(arch, pretrained="none").eval()
    images = torch.randn(2, 3, 64, 64)
    assert len(model.features) == spec.feature_blocks
    assert pooled_features(model, images).shape == (2, spec.feature_width)
    assert model(images).shape == (2, 7)
    module_names = {name for name, _ in model.named_modules()}
    assert set(spec.blocks) <= module_names


def test_unknown_arch_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="resnet50"):
        build_model("resnet50", pretrained="none")


def test_shared_small_weights_load_strictly(caplog: pytest.LogCaptureFixture) -> None:
    if not SHARED_SMALL_WEIGHTS.is_file():
        pytest.skip(f"{SHARED_SMALL_WEIGHTS} is absent; the shared weights folder is not mounted")
    reference = torch.load(SHARED_SMALL_WEIGHTS, map_location="cpu", weights_only=True)
    with caplog.at_level(logging.INFO, logger="lesionlab.models.registry"):
        model = build_model("mobilenet_v3_small", pretrained=str(SHARED_SMALL_WEIGHTS))
    loaded = model.state_dict()
    backbone_keys = [key for key in reference if not key.startswith("classifier.")]
    assert all(torch.equal(loaded[key], reference[key]) for key in backbone_keys)
    assert model.classifier[3].out_features == 7
    assert "classifier.3.weight" in caplog.text


def test_imagenet_is_found_in_the_weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not SHARED_SMALL_WEIGHTS.is_file():
        pytest.skip(f"{SHARED_SMALL_WEIGHTS} is absent; the shared weights folder is not mounted")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr("lesionlab.models.weights.DEFAULT_SHARED_WEIGHTS", tmp_path / "no-shared")
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(SHARED_SMALL_WEIGHTS, folder / SHARED_SMALL_WEIGHTS.name)
    model = build_model("mobilenet_v3_small", pretrained="imagenet", weights_dir=folder)
    reference = torch.load(SHARED_SMALL_WEIGHTS, map_location="cpu", weights_only=True)
    assert torch.equal(model.features[0][0].weight, reference["features.0.0.weight"])


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    state = build_model("mobilenet_v3_small", pretrained="none").state_dict()
    state.pop("classifier.3.weight")
    bad = tmp_path / "mobilenet_v3_small-deadbeef.pth"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match=r"mobilenet_v3_small-deadbeef\.pth: sha256 .* does not match"):
        build_model("mobilenet_v3_small", pretrained=str(bad))


def test_configured_sha256_overrides_the_name(tmp_path: Path) -> None:
    weights = tmp_path / "small.pth"
    torch.save(build_model("mobilenet_v3_small", pretrained="none").state_dict(), weights)
    with pytest.raises(WeightsError, match="does not match"):
        build_model("mobilenet_v3_small", pretrained=str(weights), weights_sha256="0" * 64)


def test_missing_weights_say_which_file_where_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "env-weights"))
    monkeypatch.setattr("lesionlab.models.weights.DEFAULT_SHARED_WEIGHTS", tmp_path / "no-shared")
    with pytest.raises(WeightsError) as caught:
        build_model("mobilenet_v3_small", pretrained="imagenet", weights_dir=tmp_path / "recipe-weights")
    message = str(caught.value)
    assert "mobilenet_v3_small-047dcff4.pth" in message
    assert str(tmp_path / "recipe-weights") in message and str(tmp_path / "env-weights") in message
    assert str(tmp_path / "hub" / "hub" / "checkpoints") in message
    assert "pretrained: /path/to/" in message and WEIGHTS_ENV in message


def test_large_says_it_has_no_imagenet_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(WeightsError, match=r"No ImageNet weights for MobileNetV3-Large.*pretrained: none"):
        build_model("mobilenet_v3_large", pretrained="imagenet")


def test_wrong_architecture_file_is_refused(tmp_path: Path) -> None:
    weights = tmp_path / "other.pth"
    torch.save(build_model("small_cnn", pretrained="none").state_dict(), weights)
    with pytest.raises(WeightsError, match="does not fit mobilenet_v3_small"):
        build_model("mobilenet_v3_small", pretrained=str(weights))


def test_small_cnn_takes_no_pretrained_weights() -> None:
    with pytest.raises(WeightsError, match="pretrained: none"):
        build_model("small_cnn", pretrained="imagenet")


def test_sha256_prefix_follows_torch_hub_names() -> None:
    assert sha256_prefix_in_name(Path("mobilenet_v3_small-imagenet-tfhub-63144c2d.pth")) == "63144c2d"
    assert sha256_prefix_in_name(Path("mobilenet_v3_small-047dcff4.pth")) == "047dcff4"
    assert sha256_prefix_in_name(Path("my-weights.pth")) is None
