"""`lesionlab.scoring`: the one rule from view logits to probabilities, and the deployed paths that use it
scoring as the rule they replaced (a temperature folded into the network, each member's views averaged,
members averaged, class offsets after) on a real image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lesionlab.class_offsets import apply_class_offsets, load_class_offsets
from lesionlab.classes import CLASS_CODES
from lesionlab.data.imageio import load_rgb
from lesionlab.evaluation.calibration import load_temperature, temperature_path
from lesionlab.inference import load_predictor
from lesionlab.inference.base import Preprocessing
from lesionlab.models.checkpoint import load_run
from lesionlab.scoring import Scoring, graph_logits, softmax
from lesionlab.views import DEFAULT_VIEWS, apply_view
from test_model_file import offsets_file


def test_scoring_divides_each_member_by_its_temperature_averages_views_then_members_then_shifts() -> None:
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 2, 5))
    offsets = (0.5, -0.5, 0.0, 1.0, -1.0)
    scored = Scoring((None, 2.0), offsets).probabilities([first, second])
    mean = (softmax(first).mean(axis=1) + softmax(second / 2.0).mean(axis=1)) / 2
    assert np.allclose(scored, apply_class_offsets(mean, np.asarray(offsets)), atol=1e-12)
    assert np.allclose(Scoring().probabilities([first[:, :1]]), softmax(first[:, 0]), atol=1e-15)
    with pytest.raises(Exception, match="members"):
        Scoring((None,)).probabilities([first, second])


def test_graph_logits_score_as_the_graph_they_came_from() -> None:
    logits = np.random.default_rng(1).normal(scale=4.0, size=(6, 7))
    for temperature in (None, 0.7, 2.0):
        graph_output = softmax(logits, temperature).astype(np.float32)
        recovered = Scoring((temperature,)).probabilities([graph_logits(graph_output, temperature)[:, None]])
        assert np.allclose(recovered, graph_output, atol=1e-6)


def old_normalisation(pixels: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """What the numpy preprocessing did before the normalisation moved into the models: 0..255 pixels
    scaled to [0, 1], then (x - mean) / std per channel."""
    centre = np.asarray(mean, dtype=np.float32)[:, None, None]
    spread = np.asarray(std, dtype=np.float32)[:, None, None]
    return ((pixels * np.float32(1.0 / 255) - centre) / spread).astype(np.float32)


def old_rule(run_dirs: list[Path], image_path: Path, views: tuple[str, ...],
             offsets: np.ndarray | None) -> np.ndarray:
    """The rule the deployed paths applied before `lesionlab.scoring` and the in-model normalisation: the
    image normalised in numpy, the temperature dividing the logits, softmax per view averaged, members
    averaged, offsets on the mean."""
    members = []
    for run_dir in run_dirs:
        model, card = load_run(run_dir)
        fit = load_temperature(temperature_path(run_dir / "best"), run_dir / "best.safetensors")
        temperature = fit.temperature if fit is not None else 1.0
        pixels = Preprocessing.from_card(card).to_batch(load_rgb(image_path))
        batch = old_normalisation(pixels, card.mean, card.std)
        inputs = [torch.from_numpy(np.ascontiguousarray(apply_view(view, batch))) for view in views]
        with torch.inference_mode():
            per_view = [torch.softmax(model.eval()(view) / temperature, dim=1).numpy()[0] for view in inputs]
        members.append(np.mean(per_view, axis=0))
    mean = np.mean(members, axis=0)
    return mean if offsets is None else apply_class_offsets(mean, offsets)


@pytest.fixture(scope="module")
def image_path(shared_data_dir: Path) -> Path:
    """One real HAM10000 image."""
    return sorted((shared_data_dir / "images").glob("*.jpg"))[1]


def test_predict_scores_as_the_old_rule_on_a_real_image(tiny_run_dir: Path, calibrated_run_dir: Path,
                                                        tiny_onnx_file: Path, image_path: Path,
                                                        tmp_path: Path) -> None:
    image = load_rgb(image_path)
    single = load_predictor(calibrated_run_dir, views=DEFAULT_VIEWS).image_probabilities(image)
    assert np.allclose(single, old_rule([calibrated_run_dir], image_path, DEFAULT_VIEWS, None), atol=1e-5)

    offsets = offsets_file(tmp_path)
    values = load_class_offsets(offsets).as_array()
    scored = load_predictor(tiny_run_dir, views=DEFAULT_VIEWS, ensemble=[calibrated_run_dir],
                            class_offsets=offsets).image_probabilities(image)
    expected = old_rule([tiny_run_dir, calibrated_run_dir], image_path, DEFAULT_VIEWS, values)
    assert np.allclose(scored, expected, atol=1e-5)

    session = ort.InferenceSession(str(tiny_onnx_file), providers=["CPUExecutionProvider"])
    batch = Preprocessing.from_card(load_run(tiny_run_dir)[1]).to_batch(image)
    onnx_probabilities = session.run(None, {session.get_inputs()[0].name: batch})[0][0]
    assert np.allclose(load_predictor(tiny_onnx_file).image_probabilities(image), onnx_probabilities,
                       atol=1e-6)
    assert np.allclose(onnx_probabilities, old_rule([tiny_run_dir], image_path, ("identity",), None),
                       atol=1e-5)
    assert len(onnx_probabilities) == len(CLASS_CODES)


def test_the_normalisation_inside_the_models_gives_the_old_logits(tiny_run_dir: Path,
                                                                  shared_data_dir: Path) -> None:
    from lesionlab.inference.torch_backend import TorchPredictor

    predictor = TorchPredictor.from_path(tiny_run_dir)
    card = predictor.card
    paths = sorted((shared_data_dir / "images").glob("*.jpg"))[:4]
    pixels = np.concatenate([predictor.preprocessing.to_batch(load_rgb(path)) for path in paths])
    assert pixels.min() >= 0 and pixels.max() > 1 and np.array_equal(pixels, np.round(pixels))
    with torch.inference_mode():
        old = predictor.model(torch.from_numpy(old_normalisation(pixels, card.mean, card.std))).numpy()
    assert np.abs(predictor.batch_logits(pixels) - old).max() < 1e-4
    assert np.abs(predictor.batch_logits(pixels.astype(np.uint8)) - old).max() < 1e-4
