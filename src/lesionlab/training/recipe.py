"""Training recipes: YAML files read into dataclasses, with `--set key=value` overrides by dotted path.

`configs/default.yaml` *is* the default: every recipe is that file, then the chosen recipe file merged over
it, then the overrides. The dataclasses below carry no default values of their own, so the YAML file and the
code cannot drift apart. `stage_defaults` (a mapping) fills the keys a stage leaves out; a recipe's `stages:`
list replaces the default one as a whole. List indices in dotted paths are 0-based (`stages.1` is the second
stage).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lesionlab.errors import ConfigError
from lesionlab.forward_backend import check_backend_choice
from lesionlab.precision import PRECISIONS

# Shipped inside the package so a wheel install finds them too; `configs/` at the repository root links here.
CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_RECIPE = CONFIGS_DIR / "default.yaml"
STAGE_DEFAULTS_KEY = "stage_defaults"
SELECT_RULES: tuple[str, ...] = ("balanced_accuracy", "accuracy", "macro_f1", "reference")
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")
SCHEDULERS: tuple[str, ...] = ("step", "cosine", "onecycle", "none")
SAMPLER_RULES: tuple[str, ...] = ("none", "inverse", "sqrt-inverse")
LOSS_RULES: tuple[str, ...] = ("none", "inverse", "sqrt-inverse", "effective-number")
LOSSES: tuple[str, ...] = ("cross-entropy", "logit-adjusted")


@dataclass
class FeatureCacheConfig:
    """Cache `views` augmented views of every training image as backbone features, reused every epoch."""

    views: int


@dataclass
class MixingConfig:
    """MixUp and CutMix on training batches (`lesionlab.training.mixing`): each batch is mixed with
    `probability`, by one of the two drawn at random where both alphas are above 0."""

    mixup_alpha: float
    """Beta(alpha, alpha) draws the mixing weight of whole images; 0 turns MixUp off."""
    cutmix_alpha: float
    """Beta(alpha, alpha) draws the area of the pasted box; 0 turns CutMix off."""
    probability: float


@dataclass
class DistillConfig:
    """How a student learns from its `teacher` runs (`lesionlab.training.distill`)."""

    alpha: float
    """Weight of the soft (teacher) term; the hard-label loss gets 1 - alpha."""
    temperature: float
    views: int
    """Fixed augmented views per training image, each with its cached teacher logits."""


@dataclass
class MetadataConfig:
    """An optional patient-metadata branch fused with the image features (`models.metadata_model`)."""

    fields: list[str]
    """Which of age, sex, site the model reads."""
    dropout: float
    """Training probability that each field of an image is replaced by its missing encoding."""
    hidden: int
    """Width of the metadata MLP's output, concatenated with the pooled image features."""


@dataclass
class TrackingConfig:
    """Where a run's parameters, epoch metrics and figures are also logged (`lesionlab.tracking`); off
    by default."""

    tensorboard: bool
    """Event files in `<run>/tensorboard/` (`--tensorboard`)."""
    mlflow: bool
    """A run in the local MLflow store `<runs dir>/mlruns/`, or `$MLFLOW_TRACKING_URI` (`--mlflow`)."""


@dataclass
class StageConfig:
    """One training stage: what trains, how it is optimised, and how classes are balanced."""

    trainable: str
    bn: str
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    scheduler: str
    step_size: int
    gamma: float
    epochs: int
    batch_size: int
    eval_batch_size: int
    sampler_weights: list[float] | str
    loss_weights: list[float] | str
    loss_beta: float
    label_smoothing: float
    loss: str
    logit_adjust_tau: float
    ema_decay: float | None
    image_size: int | list[int] | None
    feature_cache: FeatureCacheConfig | None
    mixing: MixingConfig | None

    def epoch_image_size(self, epoch: int, final_size: int) -> int:
        """The training image size of a 1-based epoch: a schedule's sizes share the epochs in equal runs.

        `image_size: [128, 160, 192]` over 9 epochs trains epochs 1-3 at 128, 4-6 at 160 and 7-9 at 192
        (progressive resizing: cheap small images first, the full size last so the model ends where it is
        evaluated); `null` is the recipe's `image_size` throughout. No epoch trains above `final_size` (the
        size cached and evaluated): `--image-size 128` on the default trains every epoch at 128.
        """
        if self.image_size is None:
            return final_size
        if isinstance(self.image_size, int):
            return min(self.image_size, final_size)
        runs = len(self.image_size)
        return min(self.image_size[min(runs - 1, (epoch - 1) * runs // self.epochs)], final_size)


@dataclass
class Recipe:
    """A whole training run: model, data handling, and the ordered stages."""

    arch: str
    pretrained: str
    pretrained_head: bool
    weights_dir: str | None
    weights_sha256: str | None
    head_hidden: int | None
    dropout: float | None
    image_size: int
    grayscale: bool
    augment: str
    seed: int
    select: str
    workers: int
    cache: bool
    threads: int | None
    channels_last: bool
    deterministic: bool
    device: str
    sync_bn: bool
    precision: str
    forward_backend: str
    teacher: list[str] | str | None
    distill: DistillConfig
    metadata: MetadataConfig | None
    tracking: TrackingConfig
    stages: list[StageConfig]

    def teacher_runs(self) -> list[str]:
        """The teacher run directories (`teacher:` may name one or a list); empty without distillation."""
        if self.teacher is None:
            return []
        return [self.teacher] if isinstance(self.teacher, str) else list(self.teacher)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (stages fully expanded) that `recipe_from_dict` reads back to an equal recipe."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The resolved recipe as YAML, as written to a run's `config.yaml`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(expected: Any) -> str:
    return getattr(expected, "__name__", str(expected).replace("typing.", ""))


def _coerce(value: Any, expected: Any, key: str) -> Any:
    """Check/convert one value against a field's type; YAML's `1e-3` (a string to PyYAML) becomes a float."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(expected)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"recipe key {key!r}: {value!r} is not a valid {_type_name(expected)}")
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, list):
            raise ConfigError(f"recipe key {key!r}: expected a list, got {value!r}")
        return [_coerce(item, item_type, f"{key}.{index}") for index, item in enumerate(value)]
    if dataclasses.is_dataclass(expected):
        return _build(expected, value, key)
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif expected is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"recipe key {key!r}: expected {_type_name(expected)}, got {value!r}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Build a dataclass from a mapping: every field required, no unknown keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe key {prefix!r}: expected a mapping, got {raw!r}")
    hints = _field_types(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise ConfigError(f"unknown recipe key {_join(prefix, unknown[0])!r}; known keys here: "
                          f"{', '.join(hints)}")
    missing = [name for name in hints if name not in raw]
    if missing:
        raise ConfigError(f"recipe key {_join(prefix, missing[0])!r} is missing (configs/default.yaml "
                          f"defines every key; was it removed?)")
    return cls(**{name: _coerce(raw[name], hints[name], _join(prefix, name)) for name in hints})


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _check_choice(value: Any, choices: Sequence[str], key: str) -> None:
    if isinstance(value, str) and value not in choices:
        raise ConfigError(f"recipe key {key!r}: {value!r} is not one of {', '.join(choices)}")


def _validate(recipe: Recipe) -> None:
    """Checks that types alone cannot express: choices, positive sizes, at least one stage."""
    _check_choice(recipe.select, SELECT_RULES, "select")
    _check_choice(recipe.precision, PRECISIONS, "precision")
    if isinstance(recipe.forward_backend, str) and isinstance(recipe.precision, str):
        check_backend_choice(recipe.forward_backend, recipe.precision)
    if recipe.image_size < 16:
        raise ConfigError(f"recipe key 'image_size': {recipe.image_size} is too small (use 16 or more)")
    if not recipe.stages:
        raise ConfigError("recipe key 'stages': at least one stage is needed")
    if not 0.0 <= recipe.distill.alpha <= 1.0:
        raise ConfigError(f"recipe key 'distill.alpha': {recipe.distill.alpha} must be in [0, 1]")
    if recipe.distill.temperature <= 0:
        raise ConfigError(f"recipe key 'distill.temperature': {recipe.distill.temperature} must be positive")
    if recipe.distill.views < 1:
        raise ConfigError("recipe key 'distill.views' must be at least 1")
    if isinstance(recipe.teacher, list) and not recipe.teacher:
        raise ConfigError("recipe key 'teacher': an empty list; name at least one run directory, or null")
    if recipe.metadata is not None:
        _validate_metadata(recipe.metadata)
        if recipe.teacher_runs():
            raise ConfigError("recipe keys 'metadata' and 'teacher': a metadata model cannot be distilled "
                              "yet; set one of them to null")
    for index, stage in enumerate(recipe.stages):
        key = f"stages.{index}"
        _check_choice(stage.optimizer, OPTIMIZERS, f"{key}.optimizer")
        _check_choice(stage.scheduler, SCHEDULERS, f"{key}.scheduler")
        _check_choice(stage.sampler_weights, SAMPLER_RULES, f"{key}.sampler_weights")
        _check_choice(stage.loss_weights, LOSS_RULES, f"{key}.loss_weights")
        _check_choice(stage.loss, LOSSES, f"{key}.loss")
        if stage.ema_decay is not None and not 0.0 < stage.ema_decay < 1.0:
            raise ConfigError(f"recipe key '{key}.ema_decay': {stage.ema_decay} must be in (0, 1), e.g. "
                              f"0.998, or null for no weight averaging")
        sizes = [stage.image_size] if isinstance(stage.image_size, int) else stage.image_size or []
        if not all(size >= 16 for size in sizes):
            raise ConfigError(f"recipe key '{key}.image_size': {stage.image_size}: every size must be 16 or "
                              f"more")
        for name in ("epochs", "batch_size", "eval_batch_size", "step_size"):
            if getattr(stage, name) < 1:
                raise ConfigError(f"recipe key '{key}.{name}' must be at least 1")
        if stage.lr <= 0:
            raise ConfigError(f"recipe key '{key}.lr' must be positive")
        if stage.feature_cache is not None and stage.feature_cache.views < 1:
            raise ConfigError(f"recipe key '{key}.feature_cache.views' must be at least 1")
        if stage.mixing is not None:
            _validate_mixing(stage, stage.mixing, key)
        if (recipe.teacher_runs() and stage.feature_cache is not None
                and stage.feature_cache.views > recipe.distill.views):
            raise ConfigError(f"recipe key '{key}.feature_cache.views': {stage.feature_cache.views} cached "
                              f"views, but a distilled run has only distill.views = {recipe.distill.views} "
                              f"views with teacher logits; use at most that many.")


def _validate_mixing(stage: StageConfig, mixing: MixingConfig, key: str) -> None:
    """Alphas and probability in range; mixing blends images, so a stage on cached features cannot mix."""
    if mixing.mixup_alpha < 0 or mixing.cutmix_alpha < 0 or mixing.mixup_alpha + mixing.cutmix_alpha == 0:
        raise ConfigError(f"recipe key '{key}.mixing': alphas must be 0 or more and one of them above 0 (got "
                          f"mixup_alpha {mixing.mixup_alpha}, cutmix_alpha {mixing.cutmix_alpha}); or set "
                          f"mixing to null")
    if not 0.0 < mixing.probability <= 1.0:
        raise ConfigError(f"recipe key '{key}.mixing.probability': {mixing.probability} must be in (0, 1]")
    if stage.feature_cache is not None:
        raise ConfigError(f"recipe key '{key}.mixing' blends images, and this stage trains on cached "
                          f"features ('{key}.feature_cache'); set one of them to null")


def _validate_metadata(metadata: MetadataConfig) -> None:
    from lesionlab.data.metadata import check_fields

    check_fields(metadata.fields, "recipe key 'metadata.fields'")
    if not 0.0 <= metadata.dropout <= 1.0:
        raise ConfigError(f"recipe key 'metadata.dropout': {metadata.dropout} must be in [0, 1]")
    if metadata.hidden < 1:
        raise ConfigError("recipe key 'metadata.hidden' must be at least 1")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: recipe file not found; pass an existing --config file or one of the "
                          f"shipped names: {', '.join(shipped_config_names())}.") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error}); fix the file.") from error
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping of keys to values.")
    return raw


def shipped_config_names() -> list[str]:
    """The recipes and studies that come with lesionlab, by the name that selects them."""
    return sorted(path.stem for path in CONFIGS_DIR.glob("*.yaml"))


def resolve_config_path(config: str | os.PathLike[str]) -> Path:
    """A recipe path as given, or a bare name such as `reference-small` looked up in `configs/`."""
    path = Path(config).expanduser()
    if path.exists():
        return path
    named = CONFIGS_DIR / f"{path.name}.yaml" if path.suffix == "" else CONFIGS_DIR / path.name
    return named if named.exists() else path


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; lists and scalars in `update` replace those in `base`."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _known_keys_at(path: list[str]) -> set[str] | None:
    """Field names allowed at a dotted path, or None where any index/key is allowed (inside lists)."""
    if not path:
        return {*_field_types(Recipe), STAGE_DEFAULTS_KEY}
    if path[0] in ("stages", STAGE_DEFAULTS_KEY):
        depth = 1 if path[0] == STAGE_DEFAULTS_KEY else 2
        if len(path) < depth:
            return None
        rest = path[depth:]
        if not rest:
            return set(_field_types(StageConfig))
        if rest == ["feature_cache"]:
            return set(_field_types(FeatureCacheConfig))
        if rest == ["mixing"]:
            return set(_field_types(MixingConfig))
    if path == ["distill"]:
        return set(_field_types(DistillConfig))
    if path == ["metadata"]:
        return set(_field_types(MetadataConfig))
    if path == ["tracking"]:
        return set(_field_types(TrackingConfig))
    return None


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `key.path=value` to a raw recipe dict; the value is parsed as YAML."""
    key, separator, text = assignment.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. --set stages.1.epochs=3")
    parts = key.split(".")
    value = yaml.safe_load(text) if text.strip() else None
    node: Any = raw
    for depth, part in enumerate(parts):
        known = _known_keys_at(parts[:depth])
        if known is not None and part not in known:
            raise ConfigError(f"--set {assignment!r}: unknown recipe key {'.'.join(parts[: depth + 1])!r}")
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {assignment!r}: {'.'.join(parts[:depth])} has {len(node)} entries; "
                                  f"use an index from 0 to {len(node) - 1}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if not isinstance(node.get(part), (dict, list)):
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"--set {assignment!r}: {'.'.join(parts[:depth])} is a value, not a mapping")


def recipe_from_dict(raw: dict[str, Any]) -> Recipe:
    """Build a recipe from a merged raw dict: fill stages from `stage_defaults`, then check every key."""
    raw = dict(raw)
    stage_defaults = raw.pop(STAGE_DEFAULTS_KEY, None) or {}
    if not isinstance(stage_defaults, dict):
        raise ConfigError(f"recipe key {STAGE_DEFAULTS_KEY!r}: expected a mapping")
    stages = raw.get("stages")
    if isinstance(stages, list):
        raw["stages"] = [_merge(stage_defaults, stage) if isinstance(stage, dict) else stage
                         for stage in stages]
    recipe = _build(Recipe, raw, "")
    _validate(recipe)
    return recipe


def load_recipe(config: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> Recipe:
    """`configs/default.yaml`, then the recipe file (path or name in configs/), then `--set` overrides."""
    raw = _read_yaml(DEFAULT_RECIPE)
    if config is not None:
        raw = _merge(raw, _read_yaml(resolve_config_path(config)))
    for assignment in overrides:
        apply_override(raw, assignment)
    return recipe_from_dict(raw)


def scale_epochs(recipe: Recipe, factor: float) -> Recipe:
    """Scale every stage's epochs by `factor` (rounded, at least 1), for runs on a budget."""
    if factor <= 0:
        raise ConfigError(f"--epochs-scale {factor}: must be positive")
    stages = [dataclasses.replace(stage, epochs=max(1, round(stage.epochs * factor)))
              for stage in recipe.stages]
    return dataclasses.replace(recipe, stages=stages)
