"""Knowledge distillation: the KD loss, fixed augmented views, the teacher cache and a distilled run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lesionlab.data.dataset import LesionDataset
from lesionlab.data.split import Split, write_split
from lesionlab.data.transforms import train_transform
from lesionlab.errors import ConfigError
from lesionlab.io_utils import atomic_write_json
from lesionlab.training.distill import (
    AugmentedViews,
    DistillationLoss,
    TeacherCache,
    ViewSampler,
    check_teacher,
    mean_teacher_probabilities,
)
from lesionlab.training.recipe import load_recipe
from lesionlab.training.release import release_split
from lesionlab.training.runner import train_run

TINY_STAGES = (
    "stages=["
    "{trainable: head, bn: frozen, feature_cache: {views: 2}, epochs: 2, batch_size: 8, eval_batch_size: 16,"
    " lr: 0.01, scheduler: cosine},"
    "{trainable: all, bn: train, epochs: 2, batch_size: 8, eval_batch_size: 16, lr: 0.001, optimizer: adamw,"
    " scheduler: cosine, image_size: [24, 32]}]"
)


def tiny_recipe(*overrides: str) -> Any:
    """small_cnn at 32 px, deterministic, one process (as in test_training_loop)."""
    return load_recipe(None, ["arch=small_cnn", "pretrained=none", "image_size=32", "workers=0",
                              "channels_last=false", "deterministic=true", "device=cpu", "augment=dermoscopy",
                              TINY_STAGES, *overrides])



def test_kd_loss_mixes_hard_labels_and_the_tempered_teacher_mean() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 7), torch.randint(7, (5,))
    teachers = torch.randn(5, 3, 7)
    hard = nn.CrossEntropyLoss()
    assert torch.allclose(DistillationLoss(hard, 0.0, 2.0)(logits, (labels, teachers)), hard(logits, labels))

    soft = torch.softmax(teachers / 2.0, dim=-1).mean(dim=1)
    assert torch.allclose(mean_teacher_probabilities(teachers, 2.0), soft)
    expected_kd = (soft * (soft.log() - torch.log_softmax(logits / 2.0, dim=-1))).sum(dim=1).mean() * 4.0
    soft_only = DistillationLoss(hard, 1.0, 2.0)(logits, (labels, teachers))
    assert torch.allclose(soft_only, expected_kd, atol=1e-6)

    matching = torch.log(soft) * 2.0  # a student whose tempered softmax equals the teachers' mean
    assert DistillationLoss(hard, 1.0, 2.0)(matching, (labels, teachers)).abs() < 1e-5


def test_a_view_is_fixed_by_seed_image_and_index_at_every_size(
        tiny_split: tuple[Any, Split]) -> None:
    _, split = tiny_split
    base = LesionDataset(split.parts["train"], 32, train_transform("dermoscopy", 32, False))
    views = AugmentedViews(base, seed=3)
    torch.manual_seed(123)
    first = views[(0, 1)][0]
    torch.manual_seed(456)
    assert torch.equal(views[(0, 1)][0], first), "a view does not depend on the global random state"
    assert not torch.equal(views[(0, 2)][0], first)
    assert not torch.equal(AugmentedViews(base, seed=4)[(0, 1)][0], first)

    small = AugmentedViews(base, seed=3, transform=train_transform("dermoscopy", 16, False))
    shrunk = nn.functional.interpolate(first[None], size=16, mode="area")[0]
    same_view = (small[(0, 1)][0] - shrunk).abs().mean()
    other_view = (small[(0, 2)][0] - shrunk).abs().mean()
    assert same_view < 0.5 * other_view, "view 1 at 16 px is view 1 at 32 px, smaller"


def test_view_sampler_keeps_the_item_draws_and_adds_seeded_views() -> None:
    items = [4, 1, 1, 3, 0]
    pairs = list(ViewSampler(items, 8, torch.Generator().manual_seed(0)))
    assert [item for item, _ in pairs] == items
    assert all(0 <= view < 8 for _, view in pairs)
    assert pairs == list(ViewSampler(items, 8, torch.Generator().manual_seed(0)))


def test_teacher_cache_rejects_stale_half_written_and_misshapen_files(tmp_path: Path) -> None:
    key = {"teachers": [{"weights_sha256": "a"}], "views": 2, "images": ["x", "y", "z"]}
    cache = TeacherCache(key, root=tmp_path)
    assert cache.load() is None
    logits = torch.randn(1, 2, 3, 7)
    cache.save(logits)
    assert torch.equal(cache.load(), logits)

    assert TeacherCache({**key, "views": 3}, root=tmp_path).load() is None, "another key, another file"
    stale = TeacherCache(key, root=tmp_path)
    stale.key_json = json.dumps({**key, "teachers": [{"weights_sha256": "b"}]})
    assert stale.load() is None, "a file whose stored key differs is stale"

    cache.path.write_bytes(cache.path.read_bytes()[:40])
    assert cache.load() is None, "a truncated file is not read"
    cache.save(torch.randn(1, 2, 2, 7))
    assert cache.load() is None, "logits of the wrong shape are not used"


def fake_teacher_run(folder: Path, table: Any, split: Split) -> Path:
    """A folder with what `check_teacher` reads of a run: split.csv and run.json's dataset."""
    folder.mkdir(parents=True)
    write_split(folder / "split.csv", split)
    atomic_write_json(folder / "run.json", {"dataset": {"root": str(table.root), "format": table.format}})
    return folder


def test_a_teacher_that_saw_validation_labels_is_refused(tiny_split: tuple[Any, Split],
                                                         tmp_path: Path) -> None:
    table, split = tiny_split
    check_teacher(fake_teacher_run(tmp_path / "same", table, split), split)
    released = fake_teacher_run(tmp_path / "release", table, release_split(split))
    with pytest.raises(ConfigError, match="validation or test part"):
        check_teacher(released, split)


def test_a_distilled_run_trains_caches_teacher_logits_and_resumes_exactly(
        tiny_split: tuple[Any, Split], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_training_loop import history_without_timings, patch_criterion

    table, split = tiny_split
    teacher = train_run(tiny_recipe(), table, split, tmp_path / "runs" / "teacher")
    student_recipe = tiny_recipe(f"teacher={teacher}", "distill.views=3", "distill.alpha=0.7",
                                 "stages.1.mixing={mixup_alpha: 0.2, cutmix_alpha: 1.0, probability: 0.5}")
    student = train_run(student_recipe, table, split, tmp_path / "runs" / "student")

    record = json.loads((student / "run.json").read_text())["distill"]
    assert record["teachers"][0]["run"] == str(teacher) and record["views"] == 3
    cache_file = Path(record["cache"])
    cached = load_file(cache_file)["logits"]
    assert cached.shape == (1, 3, len(split.parts["train"]), 7)

    patch_criterion(monkeypatch, fail_at=12)  # stage 1 trains 2 x 5 batches: this stops inside stage 2
    with pytest.raises(KeyboardInterrupt):
        train_run(student_recipe, table, split, tmp_path / "runs" / "resumed")
    monkeypatch.undo()
    monkeypatch.setenv("LESIONLAB_CACHE", str(cache_file.parents[1]))
    resumed = train_run(student_recipe, table, split, tmp_path / "runs" / "resumed", resume=True)
    assert json.loads((resumed / "run.json").read_text())["distill"]["cache"] == str(cache_file)
    assert history_without_timings(resumed) == history_without_timings(student)
    expected, got = load_file(student / "best.safetensors"), load_file(resumed / "best.safetensors")
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_a_metadata_teacher_scores_each_view_with_its_images_own_fields(
        tiny_split: tuple[Any, Split], tmp_path: Path) -> None:
    from lesionlab.data.metadata import encode
    from lesionlab.training.distill import AugmentedViews, load_teachers

    table, split = tiny_split
    teacher_dir = train_run(tiny_recipe("precision=fp32",
                                        "metadata={fields: [age, sex, site], dropout: 0.0, hidden: 4}"),
                            table, split, tmp_path / "runs" / "teacher")
    student = train_run(tiny_recipe("precision=fp32", f"teacher={teacher_dir}", "distill.views=2",
                                    "stages.1.epochs=1"),
                        table, split, tmp_path / "runs" / "student")
    cached = load_file(json.loads((student / "run.json").read_text())["distill"]["cache"])["logits"]

    teacher = load_teachers([teacher_dir])[0]
    train_set = LesionDataset(split.parts["train"], 32)
    views = AugmentedViews(train_set, 0, train_transform("dermoscopy", teacher.card.input_size, False))
    images = torch.stack([views.view(index, 1) for index in range(len(train_set))])
    fields = torch.stack([encode(sample.metadata, ["age", "sex", "site"]) for sample in train_set.samples])
    with torch.no_grad():
        with_fields, without = teacher.model(images, fields), teacher.model(images)
    assert torch.allclose(cached[0, 1], with_fields, atol=1e-4)
    assert not torch.allclose(cached[0, 1], without, atol=1e-3), "the fields change what the teacher says"
