"""Augmentation presets produce normalised float tensors; the numpy resize followed by the deployed model's
own normalisation (`PixelInput`) equals eval_transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lesionlab.data.preprocess_np import preprocess_array
from lesionlab.data.transforms import PRESETS, eval_transform, train_transform
from lesionlab.errors import ConfigError
from lesionlab.models.pixel_input import PixelInput

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZE = 32


def random_image(seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def as_chw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("grayscale", [False, True])
def test_every_preset_returns_normalised_float_of_the_input_size(preset: str, grayscale: bool) -> None:
    torch.manual_seed(0)
    output = train_transform(preset, SIZE, grayscale, MEAN, STD)(as_chw(random_image(0)))
    assert output.dtype == torch.float32 and output.shape == (3, SIZE, SIZE)
    assert float(output.min()) > -2.2 and float(output.max()) < 2.7
    if grayscale:
        unnormalised = output * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
        assert torch.allclose(unnormalised[0], unnormalised[1], atol=1e-5)
        assert torch.allclose(unnormalised[1], unnormalised[2], atol=1e-5)


def test_none_preset_is_the_eval_transform() -> None:
    image = as_chw(random_image(1))
    assert torch.equal(
        train_transform("none", SIZE, False, MEAN, STD)(image), eval_transform(SIZE, False, MEAN, STD)(image)
    )


def test_reference_preset_augments() -> None:
    torch.manual_seed(0)
    image = as_chw(random_image(2))
    transform = train_transform("reference", SIZE, False, MEAN, STD)
    assert not torch.equal(transform(image), transform(image))


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(
        ConfigError, match="unknown augmentation preset 'wild'; choose one of reference, none, strong"
    ):
        train_transform("wild", SIZE, False, MEAN, STD)


@pytest.mark.parametrize("grayscale", [False, True])
def test_resized_pixels_through_the_deployed_input_equal_eval_transform(grayscale: bool) -> None:
    transform = eval_transform(SIZE, grayscale, MEAN, STD)
    normalise = PixelInput(torch.nn.Identity(), MEAN, STD, grayscale)
    for seed in range(5):
        pixels = random_image(seed)
        expected = transform(as_chw(pixels)).unsqueeze(0).numpy()
        batch = preprocess_array(pixels, SIZE)
        assert batch.dtype == np.float32 and batch.shape == (1, 3, SIZE, SIZE)
        np.testing.assert_array_equal(batch[0], pixels.transpose(2, 0, 1))
        np.testing.assert_allclose(normalise(torch.from_numpy(batch)).numpy(), expected, atol=1e-5)
        np.testing.assert_array_equal(normalise(torch.from_numpy(batch.astype(np.uint8))).numpy(),
                                      normalise(torch.from_numpy(batch)).numpy())


def test_numpy_preprocessing_squashes_other_sizes() -> None:
    batch = preprocess_array(random_image(0, size=50)[:, :40], SIZE)
    assert batch.shape == (1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="uint8 RGB array"):
        preprocess_array(np.zeros((4, 4), np.uint8), SIZE)
