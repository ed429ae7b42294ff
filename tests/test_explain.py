"""Grad-CAM maps that can be trusted: views turned back before averaging, maps aligned with the photo, a
legend on every overlay, and the sanity checks (mirror, randomised weights, occlusion) on generated and real
images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from lesionlab.classes import CLASS_CODES
from lesionlab.data.imageio import load_rgb
from lesionlab.explain import (
    LEGEND_WIDTH,
    TITLE_HEIGHT,
    annotate,
    class_heatmaps,
    colourise,
    explanation_title,
    overlay_on_image,
    view_averaged_heatmap,
)
from lesionlab.explain_checks import (
    flip_check,
    hot_spot,
    map_correlation,
    occlusion_drops,
    randomised_copy,
    region_masks,
)
from lesionlab.inference import Prediction, load_predictor
from lesionlab.models.registry import build_model
from lesionlab.views import apply_view, view_batch

SIZE = 64
CLASS = 6  # a class whose map, for this seeded model and input, is not symmetric
MIRROR_VIEWS = ("identity", "hflip")


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    """A randomly initialised small CNN (seeded), enough to produce non-trivial maps in milliseconds."""
    torch.manual_seed(0)
    return build_model("small_cnn", pretrained="none").eval().requires_grad_(True)


@pytest.fixture(scope="module")
def asymmetric_batch() -> np.ndarray:
    """One 64x64 input with a bright blob off-centre, so a map and its mirror image differ."""
    rng = np.random.default_rng(0)
    batch = rng.normal(0.0, 0.3, size=(1, 3, SIZE, SIZE)).astype(np.float32)
    batch[:, :, 8:32, 4:28] += 2.0
    return batch


def test_averaged_map_of_a_mirrored_input_is_the_mirrored_map(small_model: torch.nn.Module,
                                                              asymmetric_batch: np.ndarray) -> None:
    mirrored = np.ascontiguousarray(apply_view("hflip", asymmetric_batch))
    original = view_averaged_heatmap(small_model, "small_cnn", asymmetric_batch, CLASS, MIRROR_VIEWS)
    of_mirror = view_averaged_heatmap(small_model, "small_cnn", mirrored, CLASS, MIRROR_VIEWS)
    assert np.abs(of_mirror - np.fliplr(original)).max() < 1e-4
    assert map_correlation(original, np.fliplr(original)) < 0.99, "the test image must not be symmetric"


def test_averaging_without_turning_views_back_would_be_caught(small_model: torch.nn.Module,
                                                              asymmetric_batch: np.ndarray) -> None:
    maps = class_heatmaps(small_model, "small_cnn", view_batch(asymmetric_batch, MIRROR_VIEWS), CLASS)
    naive = maps.mean(axis=0) / maps.mean(axis=0).max()
    correct = view_averaged_heatmap(small_model, "small_cnn", asymmetric_batch, CLASS, MIRROR_VIEWS)
    assert np.abs(naive - correct).max() > 0.05


def test_single_view_map_is_the_plain_grad_cam(small_model: torch.nn.Module,
                                               asymmetric_batch: np.ndarray) -> None:
    plain = class_heatmaps(small_model, "small_cnn", asymmetric_batch, CLASS)[0]
    single = view_averaged_heatmap(small_model, "small_cnn", asymmetric_batch, CLASS)
    assert np.allclose(single, plain / plain.max())


def test_overlay_keeps_the_map_where_it_is_on_a_non_square_photo() -> None:
    heatmap = np.zeros((SIZE, SIZE), dtype=np.float32)
    heatmap[: SIZE // 4, : SIZE // 4] = 1.0  # top-left sixteenth of the squashed input
    photo = Image.new("RGB", (200, 100), (128, 128, 128))
    overlay = overlay_on_image(photo, heatmap).astype(int)
    assert overlay.shape == (100, 200, 3)
    hot, cold = overlay[10, 20], overlay[90, 180]  # inside the top-left quarter of each side; far corner
    assert hot[0] > hot[2] and cold[2] > cold[0]
    assert overlay[10, 60, 0] < hot[0], "the hot region ends a quarter of the way across the wide side"


def test_annotated_overlay_has_a_colour_bar_and_a_title() -> None:
    overlay = np.full((90, 120, 3), 128, dtype=np.uint8)
    figure = annotate(overlay, "Grad-CAM for mel (Melanoma), p = 0.812")
    assert figure.shape == (90 + TITLE_HEIGHT, 120 + LEGEND_WIDTH, 3)
    assert (figure[:TITLE_HEIGHT, :120] < 100).any(), "the title is written in the band above"
    bar_column = figure[TITLE_HEIGHT:, 120 + 10].astype(int)
    top, bottom = bar_column[0], bar_column[-1]
    expected_top, expected_bottom = (np.round(colourise(np.array([1.0, 0.0])) * 255)).astype(int)
    assert np.abs(top - expected_top).max() <= 3 and np.abs(bottom - expected_bottom).max() <= 3


def test_title_names_the_class_and_its_probability() -> None:
    probabilities = np.array([0.05, 0.05, 0.05, 0.05, 0.6, 0.15, 0.05])
    prediction = Prediction.from_probabilities(CLASS_CODES, probabilities)
    assert explanation_title(prediction) == "Grad-CAM for mel (Melanoma), p = 0.600"


def test_randomised_copy_replaces_every_learned_weight(small_model: torch.nn.Module) -> None:
    before = {name: value.clone() for name, value in small_model.state_dict().items()}
    random_model = randomised_copy(small_model, seed=1)
    for name, value in small_model.state_dict().items():
        assert torch.equal(value, before[name]), "the original model is left untouched"
    changed = [name for name, value in random_model.state_dict().items()
               if value.is_floating_point() and not torch.equal(value, before[name])]
    weights = [name for name in before if name.endswith("weight") and before[name].dim() > 1]
    assert set(weights) <= set(changed)


def test_occlusion_finds_the_region_a_model_relies_on() -> None:
    def corner_model(batch: np.ndarray) -> np.ndarray:
        """Class 1 is as likely as the top-left corner is bright."""
        evidence = batch[:, :, :8, :8].mean(axis=(1, 2, 3))
        positive = 1.0 / (1.0 + np.exp(-evidence))
        return np.stack([1.0 - positive, positive], axis=1)

    batch = np.zeros((1, 3, SIZE, SIZE), dtype=np.float32)
    batch[:, :, :8, :8] = 3.0
    drops = occlusion_drops(corner_model, batch, class_index=1)
    assert drops["top-left"] > 0.2
    assert all(abs(drops[name]) < 1e-6 for name in ("top-right", "bottom-left", "bottom-right", "centre"))


def test_regions_and_hot_spot() -> None:
    masks = region_masks(8)
    assert masks["top-left"][:2, :2].all() and masks["top-left"].sum() == 4
    assert masks["centre"][3:5, 3:5].all() and masks["centre"].sum() == 4
    heatmap = np.zeros((4, 4))
    heatmap[0, 3] = 1.0
    assert hot_spot(heatmap) == (0.875, 0.125)


def test_map_correlation() -> None:
    a = np.arange(16.0).reshape(4, 4)
    assert map_correlation(a, a) == pytest.approx(1.0)
    assert map_correlation(a, -a) == pytest.approx(-1.0)
    assert map_correlation(a, np.ones((4, 4))) == 0.0


@pytest.fixture(scope="module")
def real_photo(shared_data_dir: Path) -> Image.Image:
    """A real HAM10000 image (ISIC_0024313, a melanoma) as predictors see it."""
    return load_rgb(shared_data_dir / "images" / "ISIC_0024313.jpg")


@pytest.mark.integration
def test_real_map_of_a_mirrored_photo_is_the_mirrored_map(tiny_run_dir: Path,
                                                          real_photo: Image.Image) -> None:
    predictor = load_predictor(tiny_run_dir, views=MIRROR_VIEWS)
    original = predictor.explain(real_photo)
    mirrored = predictor.explain(ImageOps.mirror(real_photo))
    assert mirrored.prediction.top_class == original.prediction.top_class
    assert np.abs(mirrored.heatmap - np.fliplr(original.heatmap)).max() < 0.02
    assert map_correlation(mirrored.heatmap, np.fliplr(original.heatmap)) > 0.999


@pytest.mark.integration
def test_real_map_of_a_randomised_model_differs(tiny_run_dir: Path, real_photo: Image.Image) -> None:
    predictor = load_predictor(tiny_run_dir)
    batch = predictor.preprocessing.to_batch(real_photo)
    trained = predictor.pixel_model.requires_grad_(True)
    class_index = int(np.argmax(predictor.predict_batch(batch)[0]))
    trained_map = view_averaged_heatmap(trained, predictor.card.arch, batch, class_index)
    random_map = view_averaged_heatmap(randomised_copy(trained).requires_grad_(True), predictor.card.arch,
                                       batch, class_index)
    assert map_correlation(trained_map, random_map) < 0.5


@pytest.mark.integration
def test_real_flip_check_reports_both_correlations(tiny_run_dir: Path, real_photo: Image.Image) -> None:
    predictor = load_predictor(tiny_run_dir)
    batch = predictor.preprocessing.to_batch(real_photo)
    model = predictor.pixel_model.requires_grad_(True)
    check = flip_check(model, predictor.card.arch, batch, 4, MIRROR_VIEWS)
    assert check.follows == pytest.approx(1.0, abs=1e-4)
    assert -1.0 <= check.stays <= 1.0
