"""Accuracy and speed levers of a recipe: size schedules, logit-adjusted loss, the ImageNet hidden layer,
the dermoscopy augmentation and the precision of forward-only passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lesionlab.data.transforms import RandomQuarterTurn, train_transform
from lesionlab.errors import ConfigError
from lesionlab.models.pixel_input import PixelInput
from lesionlab.models.registry import build_model
from lesionlab.precision import (
    MIN_TOP1_AGREEMENT,
    check_parity,
    native_bf16,
    parity_from_logits,
    resolve_precision,
)
from lesionlab.training.imbalance import LogitAdjustedCrossEntropy, make_criterion, sampled_prior
from lesionlab.training.recipe import load_recipe

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_size_schedule_shares_the_epochs_in_equal_runs() -> None:
    recipe = load_recipe(None, ["stages.1.image_size=[128,160,192]", "stages.1.epochs=8"])
    assert [recipe.stages[1].epoch_image_size(epoch, 192) for epoch in range(1, 9)] == [
        128, 128, 128, 160, 160, 160, 192, 192]
    assert load_recipe(None, ["stages.1.image_size=null"]).stages[1].epoch_image_size(3, 192) == 192
    assert recipe.stages[1].epoch_image_size(8, 160) == 160, "no epoch trains above the evaluated size"


@pytest.mark.parametrize("override", ["stages.1.image_size=[8,256]", "stages.1.ema_decay=1.5",
                                      "stages.1.loss=focal", "precision=half"])
def test_recipe_rejects_bad_lever_values(override: str) -> None:
    with pytest.raises(ConfigError):
        load_recipe(None, ["image_size=192", override])


def test_sampled_prior_follows_the_sampler() -> None:
    counts = np.array([100.0, 400.0, 0.0, 25.0, 100.0, 1600.0, 25.0])
    assert np.allclose(sampled_prior(counts, "none"), counts / counts.sum())
    root = np.sqrt(counts)
    assert np.allclose(sampled_prior(counts, "sqrt-inverse"), root / root.sum())
    inverse = sampled_prior(counts, "inverse")
    assert np.allclose(inverse[counts > 0], 1 / 6) and inverse[2] == 0


def test_logit_adjusted_loss_is_cross_entropy_on_shifted_logits() -> None:
    prior = np.array([0.5, 0.3, 0.2, 0.0])
    criterion = make_criterion(None, 0.0, prior, tau=1.5)
    assert isinstance(criterion, LogitAdjustedCrossEntropy)
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    shift = torch.as_tensor(1.5 * np.log(np.maximum(prior, 1e-8)), dtype=torch.float32)
    expected = nn.functional.cross_entropy(logits + shift, labels)
    assert torch.allclose(criterion(logits, labels), expected)
    assert torch.isfinite(criterion(logits, labels))


def imagenet_small(weights: Path) -> nn.Module:
    import torchvision

    native = torchvision.models.mobilenet_v3_small()
    native.load_state_dict(torch.load(weights, weights_only=True))
    return native.eval()


def test_pretrained_head_keeps_the_imagenet_hidden_layer(shared_weights_file: Path) -> None:
    native = imagenet_small(shared_weights_file)
    kept = build_model("mobilenet_v3_small", pretrained=str(shared_weights_file), pretrained_head=True)
    fresh = build_model("mobilenet_v3_small", pretrained=str(shared_weights_file))
    assert torch.equal(kept.classifier[0].weight, native.classifier[0].weight)
    assert not torch.equal(fresh.classifier[0].weight, native.classifier[0].weight)
    assert kept.classifier[3].out_features == 7
    with pytest.raises(ConfigError, match="pretrained_head"):
        build_model("mobilenet_v3_small", pretrained=str(shared_weights_file), head_hidden=256,
                    pretrained_head=True)


def test_dermoscopy_preset_crops_from_the_full_input_and_turns_exactly() -> None:
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    transform = train_transform("dermoscopy", 40, False)
    assert transform(image).shape == (3, 40, 40)
    assert not any(type(step).__name__ == "Resize" for step in transform.transforms)
    turned = {tuple(RandomQuarterTurn()(image)[0, 0, :2].tolist()) for _ in range(40)}
    corners = {tuple(torch.rot90(image, k, dims=(-2, -1))[0, 0, :2].tolist()) for k in range(4)}
    assert turned == corners


def test_a_check_on_a_model_that_decides_too_few_images_does_not_pass() -> None:
    """An untrained head (every image a near-tie) gives no evidence that bf16 keeps decisions."""
    labels = np.arange(7).repeat(4)
    undecided = np.random.default_rng(0).normal(0.0, 0.01, (len(labels), 7))
    check = parity_from_logits(undecided, undecided, labels)
    assert check.decided_images == 0 and check.top1_agreement == 1.0
    assert not check.passed
    half = np.where(np.arange(len(labels))[:, None] % 2 == 0, np.eye(7)[labels] * 8.0, undecided)
    assert parity_from_logits(half, half, labels).passed


def test_forced_disagreement_falls_back_to_fp32() -> None:
    labels = np.arange(7).repeat(4)
    confident = np.eye(7)[labels] * 8.0
    flipped = np.eye(7)[(labels + 1) % 7] * 8.0
    check = parity_from_logits(confident, flipped, labels)
    assert not check.passed and check.top1_agreement < MIN_TOP1_AGREEMENT
    agreeing = parity_from_logits(confident, confident + 0.01, labels)
    assert agreeing.passed and agreeing.max_probability_difference < 0.01
    device = torch.device("cpu")
    if native_bf16(device):
        assert resolve_precision("auto", device, lambda: check) == ("fp32", check)
        assert resolve_precision("auto", device, lambda: agreeing) == ("bf16", agreeing)
    else:
        assert resolve_precision("auto", device, lambda: agreeing) == ("fp32", None)
        with pytest.raises(ConfigError, match="native bf16"):
            resolve_precision("bf16", device, lambda: agreeing)
    assert resolve_precision("fp32", device, lambda: pytest.fail("no check for fp32")) == ("fp32", None)


@pytest.mark.integration
def test_bf16_matches_fp32_on_real_images(shared_weights_file: Path, shared_data_dir: Path) -> None:
    """A MobileNetV3-Small with a head fitted to 96 real images: bf16 within the stated parity thresholds.

    The head is a logistic regression on the ImageNet hidden layer's activations, so the model makes real
    7-class decisions (an untrained head decides nothing and would test nothing).
    """
    device = torch.device("cpu")
    if not native_bf16(device):
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 or AMX)")
    from sklearn.linear_model import LogisticRegression

    from lesionlab.data.imageio import load_resized_array
    from lesionlab.data.readers import read_dataset

    table = read_dataset(shared_data_dir)
    samples = [sample for label in range(7) for sample in
               [s for s in table.samples if s.label == label][:14]][:96]
    pixels = torch.from_numpy(np.stack([load_resized_array(sample.path, 160) for sample in samples]))
    images = pixels.permute(0, 3, 1, 2).float()
    labels = torch.tensor([sample.label for sample in samples])
    model = build_model("mobilenet_v3_small", pretrained=str(shared_weights_file), pretrained_head=True)
    model.eval()
    pixel_model = PixelInput.normalising(model, MEAN, STD)
    with torch.inference_mode():
        normalised = pixel_model.normalise(images)
        hidden = model.classifier[:3](torch.flatten(model.avgpool(model.features(normalised)), 1)).numpy()
    fitted = LogisticRegression(C=10.0, max_iter=2000).fit(hidden, labels.numpy())
    with torch.no_grad():
        model.classifier[3].weight.copy_(torch.as_tensor(fitted.coef_, dtype=torch.float32))
        model.classifier[3].bias.copy_(torch.as_tensor(fitted.intercept_, dtype=torch.float32))
    check = check_parity(pixel_model, [(images, labels)], device)
    assert check.decided_images >= 48, check
    assert check.passed, check
