"""MixUp and CutMix on training batches: label probabilities that match the pixels, the stage's probability,
the recipe checks that keep mixing away from batches it cannot mix, and a tiny run that trains with it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lesionlab.cli import main
from lesionlab.errors import ConfigError
from lesionlab.training import loop
from lesionlab.training.mixing import BatchMixer, batch_mixer
from lesionlab.training.recipe import MixingConfig, load_recipe
from test_pipeline import TINY_RECIPE

MIXING = "stages.1.mixing={mixup_alpha: 0.2, cutmix_alpha: 1.0, probability: 0.5}"


def constant_images(count: int = 8, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is filled with the value i, labelled i % 7, so any pixel says which image it came from."""
    images = torch.arange(count, dtype=torch.float32).view(count, 1, 1, 1).expand(count, 3, size, size)
    return images.contiguous(), torch.arange(count) % 7


def test_no_mixing_config_gives_no_mixer() -> None:
    assert batch_mixer(None, 7) is None


def test_cutmix_labels_weigh_each_image_by_its_share_of_the_pixels() -> None:
    torch.manual_seed(0)
    images, labels = constant_images()
    mixed, soft = batch_mixer(MixingConfig(0.0, 1.0, 1.0), 7)(images, labels)
    assert soft.shape == (8, 7) and torch.allclose(soft.sum(dim=1), torch.ones(8))
    for index in range(8):
        own = (mixed[index] == index).float().mean()
        assert soft[index, labels[index]] >= own - 1e-6, "the image's own label weighs its own pixels"
        assert set(mixed[index].unique().tolist()) <= {float(index), float((index - 1) % 8)}


def test_mixup_blends_pixels_and_labels_in_one_proportion() -> None:
    torch.manual_seed(1)
    images, labels = constant_images()
    mixed, soft = batch_mixer(MixingConfig(0.4, 0.0, 1.0), 7)(images, labels)
    weight = soft[1, labels[1]]
    assert torch.allclose(mixed[1], weight * images[1] + (1 - weight) * images[0])


def test_batches_are_mixed_with_the_stage_probability() -> None:
    torch.manual_seed(2)
    images, labels = constant_images()
    mixer = batch_mixer(MixingConfig(0.2, 1.0, 0.3), 7)
    mixed = sum(mixer(images, labels)[1].dim() == 2 for _ in range(400))
    assert 80 <= mixed <= 160


@pytest.mark.parametrize("override, message", [
    ("stages.1.mixing={mixup_alpha: 0, cutmix_alpha: 0, probability: 0.5}", "one of them above 0"),
    ("stages.1.mixing={mixup_alpha: 0.2, cutmix_alpha: 1.0, probability: 0}", "probability"),
    ("stages.0.mixing={mixup_alpha: 0.2, cutmix_alpha: 1.0, probability: 0.5}", "feature_cache"),
])
def test_recipe_refuses_bad_mixing(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_recipe(None, [override])


def test_fields_and_teacher_probabilities_are_blended_as_the_labels() -> None:
    torch.manual_seed(3)
    images, labels = constant_images()
    fields = torch.rand(8, 5)
    teacher = torch.randn(8, 2, 7)
    temperature = 2.0
    mixer = batch_mixer(MixingConfig(0.4, 0.0, 1.0), 7, temperature)
    (mixed_images, mixed_fields), (soft, mixed_teacher) = mixer((images, fields), (labels, teacher))
    weight = soft[1, labels[1]]
    assert torch.allclose(mixed_images[1], weight * images[1] + (1 - weight) * images[0])
    assert torch.allclose(mixed_fields[1], weight * fields[1] + (1 - weight) * fields[0], atol=1e-6)
    tempered = torch.softmax(teacher / temperature, dim=-1)
    blended = weight * tempered[1] + (1 - weight) * tempered[0]
    assert torch.allclose(torch.softmax(mixed_teacher[1] / temperature, dim=-1), blended, atol=1e-6)
    assert mixed_teacher.shape == teacher.shape


@pytest.mark.parametrize("extra", [(), ("metadata={fields: [age, sex, site], dropout: 0.3, hidden: 8}",)])
def test_a_tiny_run_mixes_its_image_batches(tiny_ham_dataset: Callable[..., Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, extra: tuple[str, ...]) -> None:
    monkeypatch.setenv("LESIONLAB_CACHE", str(tmp_path / "cache"))
    mixed_batches: list[int] = []

    def counting_mixer(mixing: MixingConfig | None, num_classes: int,
                       temperature: float | None = None) -> BatchMixer | None:
        inner = batch_mixer(mixing, num_classes, temperature)
        if inner is None:
            return None

        def apply(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            images, targets = inner(images, labels)
            mixed_batches.append(int(targets.dim() == 2))
            return images, targets

        return apply

    monkeypatch.setattr(loop, "batch_mixer", counting_mixer)
    arguments = ["run", "--no-class-offsets", "--data", str(tiny_ham_dataset(images_per_class=12)),
                 "--name", "mixed", "--runs-dir", str(tmp_path / "runs"), "--epochs-scale", "0.1",
                 "--set", MIXING]
    for assignment in (*TINY_RECIPE, "stages.1.mixing.probability=1.0", *extra):
        arguments += ["--set", assignment]
    assert main(arguments) == 0
    assert mixed_batches and all(mixed_batches), "every stage-2 batch was mixed, no stage-1 feature batch"
