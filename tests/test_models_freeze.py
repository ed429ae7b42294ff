"""Freeze plans: exactly which parameters train for every named plan, block ranges, and BatchNorm policy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lesionlab.errors import ConfigError
from lesionlab.models.freeze import (
    NAMED_PLANS,
    apply_plan,
    plan_table,
    resolve_plan,
    set_train_mode,
)
from lesionlab.models.registry import architecture, build_model

# The table in docs/architecture.md, written out: which `features.<i>` train (the head always does).
EXPECTED_FEATURE_BLOCKS: dict[str, dict[str, list[int]]] = {
    "mobilenet_v3_small": {
        "head": [],
        "all": list(range(13)),
        "first-and-last": [0, 12],
        "last-block": [11, 12],
        "freeze-middle-6": [0, 1, 2, 9, 10, 11, 12],
        "beginning": [0, 1, 2, 3],
        "middle": [4, 5, 6, 7],
    },
    "mobilenet_v3_large": {
        "head": [],
        "all": list(range(17)),
        "first-and-last": [0, 16],
        "last-block": [15, 16],
        "freeze-middle-6": [0, 1, 2, 3, 4, 11, 12, 13, 14, 15, 16],
        "beginning": [0, 1, 2, 3, 4],
        "middle": [5, 6, 7, 8, 9, 10],
    },
}


@pytest.fixture(scope="module")
def backbones() -> dict[str, nn.Module]:
    return {arch: build_model(arch, pretrained="none") for arch in EXPECTED_FEATURE_BLOCKS}


def expected_trainable(model: nn.Module, blocks: list[int]) -> set[str]:
    prefixes = [f"features.{index}." for index in blocks] + ["classifier."]
    return {name for name, _ in model.named_parameters() if any(name.startswith(p) for p in prefixes)}


@pytest.mark.parametrize("arch", sorted(EXPECTED_FEATURE_BLOCKS))
@pytest.mark.parametrize("plan_name", sorted(NAMED_PLANS))
def test_named_plans_set_requires_grad_exactly(backbones: dict[str, nn.Module], arch: str,
                                               plan_name: str) -> None:
    model = backbones[arch]
    plan = resolve_plan(plan_name, architecture(arch), "frozen")
    apply_plan(model, architecture(arch), plan)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == expected_trainable(model, EXPECTED_FEATURE_BLOCKS[arch][plan_name])


def test_every_parameter_belongs_to_a_block(backbones: dict[str, nn.Module]) -> None:
    for arch, model in backbones.items():
        blocks = architecture(arch).blocks
        prefixes = tuple(f"{block}." for block in blocks)
        assert all(name.startswith(prefixes) for name, _ in model.named_parameters())


def test_block_ranges_and_head_alias(backbones: dict[str, nn.Module]) -> None:
    spec = architecture("mobilenet_v3_small")
    plan = resolve_plan("features.9-12, head", spec, "train")
    assert plan.trainable == ("features.9", "features.10", "features.11", "features.12", "classifier")
    assert resolve_plan("features.3,classifier", spec, "train").trainable == ("features.3", "classifier")
    without_head = resolve_plan("features.0-1", spec, "train")
    apply_plan(backbones["mobilenet_v3_small"], spec, without_head)
    assert not backbones["mobilenet_v3_small"].classifier[0].weight.requires_grad


@pytest.mark.parametrize("spec_text", ["features.12-14", "features.5-2", "layer4", ""])
def test_bad_plans_are_config_errors(spec_text: str) -> None:
    with pytest.raises(ConfigError):
        resolve_plan(spec_text, architecture("mobilenet_v3_small"), "train")


def test_unknown_bn_policy() -> None:
    with pytest.raises(ConfigError, match="bn policy"):
        resolve_plan("head", architecture("mobilenet_v3_small"), "sometimes")


def test_freeze_middle_6_needs_enough_blocks() -> None:
    with pytest.raises(ConfigError, match="at least 8 feature blocks"):
        resolve_plan("freeze-middle-6", architecture("small_cnn"), "train")


def batchnorm_modes(model: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()
            if isinstance(module, nn.BatchNorm2d)}


def test_frozen_bn_policy_keeps_frozen_blocks_in_eval(backbones: dict[str, nn.Module]) -> None:
    spec = architecture("mobilenet_v3_small")
    model = backbones["mobilenet_v3_small"]
    plan = resolve_plan("features.10-12,head", spec, "frozen")
    apply_plan(model, spec, plan)
    set_train_mode(model, spec, plan)
    for name, training in batchnorm_modes(model).items():
        block_index = int(name.split(".")[1])
        assert training == (block_index >= 10), name
    frozen_bn = model.features[3].block[0][1]
    before = frozen_bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(frozen_bn.running_mean, before)
    assert not frozen_bn.weight.requires_grad


def test_train_bn_policy_updates_statistics_of_frozen_blocks(backbones: dict[str, nn.Module]) -> None:
    spec = architecture("mobilenet_v3_small")
    model = backbones["mobilenet_v3_small"]
    plan = resolve_plan("head", spec, "train")
    apply_plan(model, spec, plan)
    set_train_mode(model, spec, plan)
    assert all(batchnorm_modes(model).values())
    frozen_bn = model.features[3].block[0][1]
    before = frozen_bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert not torch.equal(frozen_bn.running_mean, before)
    assert not frozen_bn.weight.requires_grad
    assert not plan.backbone_frozen()
    assert resolve_plan("head", spec, "frozen").backbone_frozen()


def test_plan_table_lists_every_block_with_counts(backbones: dict[str, nn.Module]) -> None:
    spec = architecture("mobilenet_v3_small")
    model = backbones["mobilenet_v3_small"]
    plan = resolve_plan("last-block", spec, "frozen")
    table = plan_table(model, spec, plan)
    lines = table.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert set(spec.blocks) <= rows.keys()
    assert rows["features.11"][1:3] == ["train", "train"]
    assert rows["features.3"][1:3] == ["frozen", "eval"]
    head_params = sum(parameter.numel() for parameter in model.classifier.parameters())
    assert rows["classifier"][-1] == f"{head_params:,}"
    total = sum(parameter.numel() for parameter in model.parameters())
    assert rows["total"][1] == f"{total:,}"
