"""Augmentation presets and evaluation preprocessing, as torchvision transforms v2 on uint8 CHW tensors.

Inputs are already squashed to `size x size` by the loader (cache or on the fly); every pipeline optionally
turns the image gray (repeated to 3 channels, as the reference fed grayscale to ImageNet models), applies its
augmentations on uint8, then hands the pixels on as float32 0..255, what every deployed engine takes too.
Normalising them is the model's (`models.pixel_input.PixelInput`), so the rule lives in one place.

Presets:
- `reference`: the reference's augmentation: RandomRotation(20), ColorJitter(brightness=0.3, contrast=0.3),
  horizontal and vertical flips.
- `none`: no augmentation.
- `strong`: for dermoscopy, where a lesion has no "up": RandomResizedCrop(scale 0.6..1), both flips, any
  rotation (RandomRotation(180), bilinear), ColorJitter(0.2, 0.2, 0.2, 0.05) for differences between
  dermatoscopes.
- `dermoscopy`: what `strong` aims at, at a fraction of its cost on a CPU: RandomResizedCrop(scale 0.4..1,
  aspect 3/4..4/3) straight from the cached pixels (so the lesion moves about the frame and the dark
  vignette corners are often cropped away), the 8 flips and 90-degree rotations (exact, no interpolation),
  and ColorJitter(brightness 0.2, contrast 0.2, saturation 0.15). Arbitrary-angle rotation and hue jitter
  are left out: on 2 cores they made data loading, not the network, the bottleneck.

A preset that starts with a RandomResizedCrop produces the output size itself, so its crop is taken from the
full-size input rather than from an already shrunk copy (this matters when a progressive-resizing schedule
trains below the cached size).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from lesionlab.errors import ConfigError
from lesionlab.models.pixel_input import luminance


def _reference(size: int) -> list[v2.Transform]:
    return [
        v2.RandomRotation(degrees=20),
        v2.ColorJitter(brightness=0.3, contrast=0.3),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomVerticalFlip(p=0.5),
    ]


def _none(size: int) -> list[v2.Transform]:
    return []


def _strong(size: int) -> list[v2.Transform]:
    return [
        v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomVerticalFlip(p=0.5),
        v2.RandomRotation(degrees=180, interpolation=v2.InterpolationMode.BILINEAR),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05),
    ]


class RandomQuarterTurn(v2.Transform):
    """Rotate by 0, 90, 180 or 270 degrees, uniformly: exact on square images, unlike RandomRotation."""

    def make_params(self, flat_inputs: list[object]) -> dict[str, int]:
        return {"turns": int(torch.randint(4, ()).item())}

    def transform(self, inpt: torch.Tensor, params: dict[str, int]) -> torch.Tensor:
        return torch.rot90(inpt, params["turns"], dims=(-2, -1)) if params["turns"] else inpt


class Luminance(v2.Transform):
    """The grayscale mode as a pipeline step: the model's own rule (`models.pixel_input.luminance`)."""

    def transform(self, inpt: torch.Tensor, params: dict[str, object]) -> torch.Tensor:
        return luminance(inpt).contiguous()


def _dermoscopy(size: int) -> list[v2.Transform]:
    return [
        v2.RandomResizedCrop(size, scale=(0.4, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
        v2.RandomHorizontalFlip(p=0.5),
        RandomQuarterTurn(),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.15),
    ]


PRESETS: dict[str, Callable[[int], list[v2.Transform]]] = {
    "reference": _reference,
    "none": _none,
    "strong": _strong,
    "dermoscopy": _dermoscopy,
}


def _input_steps(size: int, grayscale: bool) -> list[v2.Transform]:
    """Make sure of the size (a no-op for loader output) and apply the grayscale mode."""
    steps: list[v2.Transform] = [v2.Resize((size, size), antialias=True)]
    if grayscale:
        steps.append(Luminance())
    return steps


PIXELS = v2.ToDtype(torch.float32, scale=False)
"""The last step of every pipeline: the pixels 0..255 as float32, unscaled (the model normalises them)."""


def train_transform(preset: str, size: int, grayscale: bool) -> v2.Compose:
    """The training pipeline for one preset (`PRESETS`)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown augmentation preset '{preset}'; choose one of {', '.join(PRESETS)}")
    augmentations = PRESETS[preset](size)
    sizes_itself = bool(augmentations) and isinstance(augmentations[0], v2.RandomResizedCrop)
    input_steps = _input_steps(size, grayscale)[1:] if sizes_itself else _input_steps(size, grayscale)
    return v2.Compose([*input_steps, *augmentations, PIXELS])


def eval_transform(size: int, grayscale: bool) -> v2.Compose:
    """The deterministic pipeline for validation and testing."""
    return v2.Compose([*_input_steps(size, grayscale), PIXELS])
