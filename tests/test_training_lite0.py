"""configs/lite0.yaml: the default recipe on EfficientNet-Lite0 resolves, and trains on generated images."""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from lesionlab.data.split import Split
from lesionlab.models.checkpoint import load_run
from lesionlab.training.recipe import load_recipe, scale_epochs
from lesionlab.training.runner import train_run


def test_lite0_is_the_default_recipe_on_lite0() -> None:
    lite0, default = load_recipe("lite0"), load_recipe()
    assert (lite0.arch, lite0.pretrained, lite0.pretrained_head) == ("efficientnet_lite0", "imagenet", False)
    assert lite0.stages == default.stages
    assert {**lite0.to_dict(), "arch": default.arch, "pretrained_head": default.pretrained_head} == (
        default.to_dict()
    )


def test_lite0_recipe_trains_every_stage_one_step(tiny_split: tuple[Any, Split], tmp_path: Any) -> None:
    """Each of the recipe's stages (cached-feature head, then all layers with the weight average) for one
    epoch of one batch, at 32 px and from random weights, so the test needs neither the weights nor time."""
    table, split = tiny_split
    overrides = [
        "pretrained=none",
        "image_size=32",
        "stages.1.image_size=null",
        "workers=0",
        "channels_last=false",
        "device=cpu",
    ]
    recipe = scale_epochs(load_recipe("lite0", overrides), 0.01)
    run_dir = train_run(recipe, table, split, tmp_path / "runs" / "lite0")
    history = json.loads((run_dir / "state.json").read_text())["history"]
    assert [(row["stage"], row["epoch"]) for row in history] == [(1, 1), (2, 1)]
    assert all(math.isfinite(row["train_loss"]) for row in history)
    model, card = load_run(run_dir)
    assert (card.arch, card.input_size, card.stage) == ("efficientnet_lite0", 32, 2)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
