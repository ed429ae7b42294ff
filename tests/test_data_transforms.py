"""Augmentation presets and evaluation preprocessing deliver pixels, never normalised values: the model's
`PixelInput` holds the one normalisation rule, with the arithmetic the pipelines used before it held it."""

from __future__ import annotations

import re
import tokenize
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

import lesionlab
from lesionlab.data.preprocess_np import preprocess_array
from lesionlab.data.transforms import PRESETS, eval_transform, train_transform
from lesionlab.errors import ConfigError
from lesionlab.models.pixel_input import PixelInput

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZE = 32
SOURCE = Path(lesionlab.__file__).parent


def random_image(seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def as_chw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("grayscale", [False, True])
def test_every_preset_returns_float_pixels_of_the_input_size(preset: str, grayscale: bool) -> None:
    torch.manual_seed(0)
    output = train_transform(preset, SIZE, grayscale)(as_chw(random_image(0)))
    assert output.dtype == torch.float32 and output.shape == (3, SIZE, SIZE)
    assert float(output.min()) >= 0 and float(output.max()) <= 255
    assert torch.equal(output, output.round()), "augmentation runs on uint8: whole pixel values"
    if grayscale:
        assert torch.equal(output[0], output[1]) and torch.equal(output[1], output[2])


def test_the_evaluation_pipeline_hands_on_the_pixels_as_they_are() -> None:
    image = as_chw(random_image(3))
    assert torch.equal(eval_transform(SIZE, False)(image), image.float())


def test_none_preset_is_the_eval_transform() -> None:
    image = as_chw(random_image(1))
    assert torch.equal(train_transform("none", SIZE, False)(image), eval_transform(SIZE, False)(image))


def test_reference_preset_augments() -> None:
    torch.manual_seed(0)
    image = as_chw(random_image(2))
    transform = train_transform("reference", SIZE, False)
    assert not torch.equal(transform(image), transform(image))


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(
        ConfigError, match="unknown augmentation preset 'wild'; choose one of reference, none, strong"
    ):
        train_transform("wild", SIZE, False)


def test_pixel_input_normalises_bit_for_bit_as_the_pipelines_did() -> None:
    """Checkpoints trained when the pipelines normalised (torchvision's ToDtype(scale=True) then Normalize)
    see exactly the input they trained on."""
    before = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(MEAN), std=list(STD))])
    normalise = PixelInput.normalising(torch.nn.Identity(), MEAN, STD)
    for seed in range(5):
        image = as_chw(random_image(seed))
        assert torch.equal(normalise(eval_transform(SIZE, False)(image)[None])[0], before(image))
        assert torch.equal(normalise(image[None])[0], before(image))


def test_the_pipelines_and_the_model_turn_an_image_gray_identically() -> None:
    """Training's pipelines and every deployed model (`PixelInput` with grayscale on) share one luminance
    rule, torchvision's `Grayscale` to within one level on a handful of colours (its float arithmetic rounds
    differently on a few exact halves)."""
    gray_model = PixelInput(torch.nn.Identity(), (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255), grayscale=True)
    for seed in range(5):
        image = as_chw(random_image(seed))
        pipeline_gray = eval_transform(SIZE, True)(image)
        assert torch.equal(gray_model(image[None])[0], pipeline_gray)
        assert torch.equal(gray_model(image[None].float())[0], pipeline_gray)
        torchvision_gray = v2.Grayscale(num_output_channels=3)(image).float()
        assert float((pipeline_gray - torchvision_gray).abs().max()) <= 1


def code_of(path: Path) -> str:
    """A module's code as its tokens joined by spaces, strings and comments left out (docs may describe the
    rule)."""
    with path.open("rb") as handle:
        return " ".join(token.string for token in tokenize.tokenize(handle.readline)
                        if token.type not in (tokenize.STRING, tokenize.COMMENT, tokenize.ENCODING))


def test_the_normalisation_rule_is_written_once() -> None:
    """Only `models/pixel_input.py` divides pixels by 255 or subtracts a mean, and no module normalises with
    torchvision's `Normalize`."""
    rule = re.compile(r"\bNormalize\b|/ 255 |- (self \. )?mean\b")
    holders = sorted(path.relative_to(SOURCE).as_posix() for path in SOURCE.rglob("*.py")
                     if rule.search(code_of(path)))
    assert holders == ["models/pixel_input.py"]


def test_the_grayscale_rule_is_written_once() -> None:
    """Only `models/pixel_input.py` weighs the colour channels; no module uses torchvision's `Grayscale`."""
    rule = re.compile(r"\bGrayscale\b|\brgb_to_grayscale\b|\b0\.587\b")
    holders = sorted(path.relative_to(SOURCE).as_posix() for path in SOURCE.rglob("*.py")
                     if rule.search(code_of(path)))
    assert holders == ["models/pixel_input.py"]


def test_numpy_preprocessing_is_the_resize_alone() -> None:
    for seed in range(3):
        pixels = random_image(seed)
        batch = preprocess_array(pixels, SIZE)
        assert batch.dtype == np.float32 and batch.shape == (1, 3, SIZE, SIZE)
        np.testing.assert_array_equal(batch[0], pixels.transpose(2, 0, 1))


def test_numpy_preprocessing_squashes_other_sizes() -> None:
    batch = preprocess_array(random_image(0, size=50)[:, :40], SIZE)
    assert batch.shape == (1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="uint8 RGB array"):
        preprocess_array(np.zeros((4, 4), np.uint8), SIZE)
