"""The test-time augmentation views, defined once in `lesionlab.views`: on real images each name is the exact
pixel rearrangement numpy and torch call by that name (the meaning the twin numpy and torch tables had), in
both layouts and on both array types, it is undone exactly, and evaluation and prediction get the same
logits from it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from lesionlab.data.dataset import LesionDataset
from lesionlab.data.imageio import load_rgb
from lesionlab.data.readers.samples import Sample
from lesionlab.data.transforms import eval_transform
from lesionlab.errors import ConfigError
from lesionlab.evaluation.inference import InferenceSettings, infer_view_logits
from lesionlab.inference import load_predictor
from lesionlab.models.pixel_input import PixelInput
from lesionlab.views import (
    DEFAULT_VIEWS,
    NHWC,
    VIEW_NAMES,
    apply_view,
    parse_views,
    undo_view,
    view_batch,
)

pytestmark = pytest.mark.integration

# What each name meant in the numpy and torch tables `views.VIEWS` replaced, on the last two axes.
REFERENCE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda batch: batch,
    "hflip": lambda batch: np.flip(batch, axis=-1),
    "vflip": lambda batch: np.flip(batch, axis=-2),
    "rot90": lambda batch: np.rot90(batch, 1, axes=(-2, -1)),
    "rot180": lambda batch: np.rot90(batch, 2, axes=(-2, -1)),
    "rot270": lambda batch: np.rot90(batch, 3, axes=(-2, -1)),
    "transpose": lambda batch: np.swapaxes(batch, -2, -1),
}
TORCH_REFERENCE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda batch: batch,
    "hflip": lambda batch: torch.flip(batch, dims=(-1,)),
    "vflip": lambda batch: torch.flip(batch, dims=(-2,)),
    "rot90": lambda batch: torch.rot90(batch, 1, dims=(-2, -1)),
    "rot180": lambda batch: torch.rot90(batch, 2, dims=(-2, -1)),
    "rot270": lambda batch: torch.rot90(batch, 3, dims=(-2, -1)),
    "transpose": lambda batch: batch.transpose(-2, -1),
}


@pytest.fixture(scope="module")
def image_paths(shared_data_dir: Path) -> list[Path]:
    """Two real HAM10000 JPEGs."""
    return sorted((shared_data_dir / "images").glob("ISIC_*.jpg"))[:2]


@pytest.fixture(scope="module")
def real_batch(image_paths: list[Path]) -> np.ndarray:
    """The two images squashed to 64x64 (not square-symmetric), uint8 NCHW."""
    from lesionlab.data.imageio import load_resized_array

    return np.stack([load_resized_array(path, 64).transpose(2, 0, 1) for path in image_paths])


def test_each_view_is_the_rearrangement_its_name_means_on_real_images(real_batch: np.ndarray) -> None:
    assert set(REFERENCE) == set(VIEW_NAMES)
    channels_last = np.ascontiguousarray(real_batch.transpose(0, 2, 3, 1))
    tensor = torch.from_numpy(real_batch)
    for name in VIEW_NAMES:
        expected = REFERENCE[name](real_batch)
        assert np.array_equal(apply_view(name, real_batch), expected), name
        assert np.array_equal(apply_view(name, channels_last, NHWC), expected.transpose(0, 2, 3, 1)), name
        assert torch.equal(apply_view(name, tensor), TORCH_REFERENCE[name](tensor)), name
        assert np.array_equal(undo_view(name, apply_view(name, real_batch)), real_batch), name
        heat = real_batch[:, 0].astype(np.float32)
        assert np.array_equal(undo_view(name, REFERENCE[name](heat)), heat), name
    assert not np.array_equal(apply_view("rot90", real_batch), apply_view("rot270", real_batch))
    stacked = view_batch(real_batch, ("identity", "rot90"))
    assert stacked.shape == (4, *real_batch.shape[1:]) and stacked.flags.c_contiguous
    assert parse_views(None) == DEFAULT_VIEWS
    assert parse_views("rot90, hflip,rot90") == ("identity", "rot90", "hflip")
    with pytest.raises(ConfigError, match="unknown TTA view"):
        parse_views("rot45")


def test_evaluation_and_prediction_get_the_same_view_logits(
    tiny_run_dir: Path, image_paths: list[Path]
) -> None:
    predictor = load_predictor(tiny_run_dir, views=DEFAULT_VIEWS)
    card = predictor.card
    samples = [Sample(path.stem, str(path), 0, None, "test", None) for path in image_paths]
    dataset = LesionDataset(
        samples,
        card.input_size,
        transform=eval_transform(card.input_size, card.grayscale),
    )
    settings = InferenceSettings(torch.device("cpu"), batch_size=2, workers=0, channels_last=False)
    evaluated = infer_view_logits(PixelInput.normalising(predictor.model, card.mean, card.std), dataset,
                                  settings, DEFAULT_VIEWS)
    predicted = np.concatenate([predictor.view_logits(load_rgb(path)) for path in image_paths])
    assert predicted.shape == evaluated.shape == (2, len(DEFAULT_VIEWS), len(card.classes))
    assert np.abs(predicted - evaluated).max() < 1e-3
    assert np.abs(evaluated[:, 1:] - evaluated[:, :1]).max() > 1e-3, "the views must change the logits"
