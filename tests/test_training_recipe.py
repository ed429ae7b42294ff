"""Recipes: default.yaml as the one source of defaults, reference configs, `--set` overrides, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import lesionlab
from lesionlab.errors import ConfigError
from lesionlab.training.recipe import (
    DEFAULT_RECIPE,
    FeatureCacheConfig,
    load_recipe,
    recipe_from_dict,
    resolve_config_path,
    scale_epochs,
    shipped_config_names,
)

SAMPLER = [4.0, 4.0, 2.0, 6.0, 2.0, 1.0, 6.0]


def test_default_recipe_is_default_yaml() -> None:
    recipe = load_recipe()
    raw = yaml.safe_load(DEFAULT_RECIPE.read_text())
    assert recipe.arch == raw["arch"] == "mobilenet_v3_small"
    assert recipe.pretrained == "imagenet"
    assert len(recipe.stages) == len(raw["stages"])
    assert recipe.stages[0].trainable == "head" and recipe.stages[0].feature_cache == FeatureCacheConfig(2)
    assert recipe.stages[1].trainable == "all"
    assert recipe.stages[1].batch_size == raw["stage_defaults"]["batch_size"]
    assert (recipe.pretrained_head, recipe.image_size) == (True, 225)
    assert recipe.stages[1].image_size == [161, 193, 225]
    assert (recipe.stages[1].loss, recipe.stages[1].ema_decay) == ("logit-adjusted", 0.998)


def test_baseline_is_the_first_default() -> None:
    """configs/baseline.yaml keeps the recipe the published study was trained with."""
    recipe = load_recipe("baseline")
    assert (recipe.pretrained_head, recipe.image_size, recipe.augment) == (False, 192, "reference")
    head, fine_tune = recipe.stages
    assert head.feature_cache == FeatureCacheConfig(4) and (head.epochs, fine_tune.epochs) == (12, 8)
    assert (fine_tune.lr, fine_tune.loss) == (2e-4, "cross-entropy")
    assert fine_tune.ema_decay is None and fine_tune.image_size is None
    assert fine_tune.loss_weights == "sqrt-inverse" and fine_tune.label_smoothing == 0.1


def test_resolved_recipe_round_trips() -> None:
    recipe = load_recipe("reference-small")
    assert recipe_from_dict(yaml.safe_load(recipe.to_yaml())) == recipe


def test_reference_large_matches_the_reference_table() -> None:
    recipe = load_recipe("reference-large")
    assert (recipe.arch, recipe.pretrained, recipe.head_hidden, recipe.dropout) == (
        "mobilenet_v3_large", "none", 1280, 0.3)
    assert (recipe.augment, recipe.select, recipe.image_size) == ("reference", "reference", 224)
    first, second = recipe.stages
    assert (first.trainable, first.optimizer, first.lr, first.scheduler, first.step_size, first.gamma,
            first.epochs) == ("head", "adam", 5e-4, "step", 4, 0.5, 12)
    assert (second.trainable, second.optimizer, second.lr, second.scheduler, second.step_size, second.gamma,
            second.epochs) == ("all", "adam", 1e-5, "step", 2, 0.5, 6)
    assert first.loss_weights == [3, 2.2, 2, 5, 3, 1, 5]
    assert second.loss_weights == [3, 2.2, 2, 7, 3, 1, 5]
    for stage in recipe.stages:
        assert (stage.batch_size, stage.eval_batch_size, stage.sampler_weights) == (50, 25, SAMPLER)
        assert (stage.weight_decay, stage.label_smoothing, stage.feature_cache) == (0.0, 0.0, None)


def test_reference_small_matches_the_reference_table() -> None:
    recipe = load_recipe("reference-small")
    assert (recipe.arch, recipe.pretrained, recipe.head_hidden, recipe.dropout) == (
        "mobilenet_v3_small", "imagenet", 1024, 0.2)
    first, second = recipe.stages
    assert (first.trainable, first.optimizer, first.lr, first.scheduler, first.step_size, first.gamma,
            first.epochs) == ("head", "adam", 1e-3, "step", 3, 0.5, 15)
    assert (second.trainable, second.optimizer, second.lr, second.scheduler, second.step_size, second.gamma,
            second.epochs) == ("all", "adam", 1e-3 / 16, "step", 3, 0.5, 6)
    assert first.loss_weights == [3, 3, 2, 5, 3, 1, 6]
    assert second.loss_weights == [3, 3, 2, 5, 3, 1, 5]
    for stage in recipe.stages:
        assert (stage.batch_size, stage.eval_batch_size, stage.sampler_weights) == (50, 25, SAMPLER)


def test_overrides_use_dotted_paths_and_yaml_values() -> None:
    recipe = load_recipe("reference-small", [
        "stages.1.epochs=3", "image_size=160", "stage_defaults.eval_batch_size=7",
        "stages.0.feature_cache.views=2", "stages.0.lr=1e-4", "stages.0.sampler_weights=inverse",
        "stages.1.loss_weights=[1, 1, 1, 1, 1, 1, 2]", "weights_dir=null",
    ])
    assert recipe.stages[1].epochs == 3 and recipe.stages[0].epochs == 15
    assert recipe.image_size == 160
    assert all(stage.eval_batch_size == 7 for stage in recipe.stages)
    assert recipe.stages[0].feature_cache == FeatureCacheConfig(views=2)
    assert recipe.stages[0].lr == 1e-4
    assert recipe.stages[0].sampler_weights == "inverse"
    assert recipe.stages[1].loss_weights == [1, 1, 1, 1, 1, 1, 2]


@pytest.mark.parametrize(("override", "named"), [
    ("imge_size=160", "'imge_size'"),
    ("stages.0.lrr=1", "'stages.0.lrr'"),
    ("stages.0.feature_cache.view=2", "'stages.0.feature_cache.view'"),
    ("stage_defaults.epoch=2", "'stage_defaults.epoch'"),
    ("stages.4.epochs=1", "index from 0 to 1"),
    ("stages.0.lr=fast", "'stages.0.lr'"),
    ("stages.0.optimizer=rmsprop", "'stages.0.optimizer'"),
    ("select=best", "'select'"),
    ("image_size", "key=value"),
])
def test_bad_overrides_name_the_key(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_recipe(None, [override])


def test_unknown_key_in_a_file_is_named(tmp_path: Path) -> None:
    recipe_file = tmp_path / "mine.yaml"
    recipe_file.write_text("arch: mobilenet_v3_small\nstages:\n  - trainable: head\n    learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"'stages\.0\.learning_rate'"):
        load_recipe(recipe_file)


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"recipe file not found.*reference-small"):
        load_recipe(tmp_path / "nope.yaml")


def test_configs_ship_inside_the_package_so_any_install_finds_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = Path(lesionlab.__file__).parent
    assert {"default", "best", "reference-small", "study-freeze"} <= set(shipped_config_names())
    monkeypatch.chdir(tmp_path)
    for given in ("reference-small", "configs/reference-small.yaml"):
        assert resolve_config_path(given).parent == package / "configs"


def test_user_stages_take_stage_defaults(tmp_path: Path) -> None:
    recipe_file = tmp_path / "one-stage.yaml"
    recipe_file.write_text("stages:\n  - {trainable: all, epochs: 2}\n")
    recipe = load_recipe(recipe_file)
    default = yaml.safe_load(DEFAULT_RECIPE.read_text())["stage_defaults"]
    assert len(recipe.stages) == 1
    assert (recipe.stages[0].trainable, recipe.stages[0].epochs) == ("all", 2)
    assert recipe.stages[0].lr == float(default["lr"])


def test_epochs_scale_rounds_with_a_floor_of_one() -> None:
    recipe = scale_epochs(load_recipe("reference-large"), 0.3)
    assert [stage.epochs for stage in recipe.stages] == [4, 2]
    assert [stage.epochs for stage in scale_epochs(recipe, 0.01).stages] == [1, 1]
    with pytest.raises(ConfigError):
        scale_epochs(recipe, 0)
