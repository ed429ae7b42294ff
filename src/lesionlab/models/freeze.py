"""Freeze plans as data: which blocks train in a stage, and what BatchNorm does in the blocks that don't.

A plan is a comma-separated list of names and block ranges, resolved against an architecture's ordered
blocks (`features.0 … features.N-1`, then `classifier`, called `head` in plans). The reference's
freeze-strategy study becomes a table of named plans over the same mechanism, so any block range is one
`--set` away.

BatchNorm policy is explicit because it changes what a "frozen" backbone means:
- `train`: every block runs in train mode, as in the reference (`requires_grad=False` plus `model.train()`),
  so BatchNorm in frozen blocks still normalises by batch statistics and updates its running statistics.
- `frozen`: frozen blocks run in eval mode (running statistics, no updates, no stochastic depth); they are
  then a fixed function of the input, which is what lets the feature cache skip them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from lesionlab.errors import ConfigError
from lesionlab.models.registry import HEAD_BLOCK, Architecture
from lesionlab.tables import Table, format_table

BN_POLICIES: tuple[str, ...] = ("train", "frozen")
HEAD_ALIASES = frozenset({"head", HEAD_BLOCK})
MIDDLE_FROZEN_COUNT = 6


def _all(n: int) -> list[int]:
    return list(range(n))


def _first_and_last(n: int) -> list[int]:
    return [0, n - 1]


def _last_block(n: int) -> list[int]:
    return [n - 2, n - 1]


def _freeze_middle_6(n: int) -> list[int]:
    if n < MIDDLE_FROZEN_COUNT + 2:
        raise ConfigError(f"freeze-middle-6 needs at least {MIDDLE_FROZEN_COUNT + 2} feature blocks; this "
                          f"architecture has {n}. Pick another `trainable` plan or a block range.")
    start = (n - MIDDLE_FROZEN_COUNT) // 2
    frozen = range(start, start + MIDDLE_FROZEN_COUNT)
    return [index for index in range(n) if index not in frozen]


def _beginning(n: int) -> list[int]:
    return list(range(n // 3))


def _middle(n: int) -> list[int]:
    return list(range(n // 3, 2 * n // 3))


NAMED_PLANS: dict[str, tuple[Callable[[int], list[int]], str]] = {
    "head": (lambda n: [], "the head only (backbone frozen)"),
    "all": (_all, "every block"),
    "first-and-last": (_first_and_last, "first and last feature block (stem conv, final 1x1 conv) + head"),
    "last-block": (_last_block, "last two feature blocks (last bottleneck + final 1x1 conv) + head"),
    "freeze-middle-6": (_freeze_middle_6, "all but the 6 middle feature blocks + head"),
    "beginning": (_beginning, "first third of the feature blocks + head"),
    "middle": (_middle, "middle third of the feature blocks + head"),
}
_RANGE = re.compile(r"^features\.(\d+)(?:-(\d+))?$")


@dataclass(frozen=True)
class FreezePlan:
    """The blocks that train in a stage and the BatchNorm policy for the rest."""

    spec: str
    trainable: tuple[str, ...]
    bn: str

    def trains(self, block: str) -> bool:
        """Whether a block's parameters train in this stage."""
        return block in self.trainable

    def backbone_frozen(self) -> bool:
        """True when no feature block trains and frozen blocks are fixed functions (BN `frozen`)."""
        return self.bn == "frozen" and all(not block.startswith("features.") for block in self.trainable)


def _blocks_of_token(token: str, feature_blocks: int) -> list[str]:
    """Resolve one plan token (named plan, `head`, `features.i` or `features.i-j`) to block names."""
    if token in HEAD_ALIASES:
        return [HEAD_BLOCK]
    if token in NAMED_PLANS:
        rule, _ = NAMED_PLANS[token]
        return [*(f"features.{index}" for index in rule(feature_blocks)), HEAD_BLOCK]
    match = _RANGE.match(token)
    if not match:
        raise ConfigError(f"unknown trainable block {token!r}; use one of {', '.join(NAMED_PLANS)}, `head`, "
                          f"`features.<i>` or `features.<i>-<j>` (comma-separated).")
    first = int(match.group(1))
    last = int(match.group(2) or first)
    if first > last or last >= feature_blocks:
        raise ConfigError(f"block range {token!r} is outside features.0-{feature_blocks - 1} of this "
                          f"architecture; fix `trainable` in the recipe.")
    return [f"features.{index}" for index in range(first, last + 1)]


def resolve_plan(spec: str, arch: Architecture, bn: str) -> FreezePlan:
    """Turn a recipe's `trainable` text and `bn` policy into a plan for one architecture."""
    if bn not in BN_POLICIES:
        raise ConfigError(f"unknown bn policy {bn!r}; use one of {', '.join(BN_POLICIES)}.")
    tokens = [token.strip() for token in str(spec).split(",") if token.strip()]
    if not tokens:
        raise ConfigError("`trainable` is empty; name a plan such as `head` or `all`, or a block range.")
    chosen = {block for token in tokens for block in _blocks_of_token(token, arch.feature_blocks)}
    trainable = tuple(block for block in arch.blocks if block in chosen)
    return FreezePlan(spec=",".join(tokens), trainable=trainable, bn=bn)


def block_modules(model: nn.Module, arch: Architecture) -> list[tuple[str, nn.Module]]:
    """The architecture's blocks as (name, module), in order."""
    return [(name, model.get_submodule(name)) for name in arch.blocks]


def apply_plan(model: nn.Module, arch: Architecture, plan: FreezePlan) -> None:
    """Set `requires_grad` per block: parameters train exactly when their block is in the plan."""
    for name, block in block_modules(model, arch):
        for parameter in block.parameters():
            parameter.requires_grad_(plan.trains(name))


def set_train_mode(model: nn.Module, arch: Architecture, plan: FreezePlan) -> None:
    """Put the model in train mode, then frozen blocks back in eval mode when the BN policy says `frozen`."""
    model.train()
    if plan.bn == "frozen":
        for name, block in block_modules(model, arch):
            if not plan.trains(name):
                block.eval()


def _batchnorm_mode(block: nn.Module, trains: bool, bn: str) -> str:
    """How BatchNorm behaves in a block during training, for the stage table."""
    if not any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in block.modules()):
        return "-"
    return "train" if trains or bn == "train" else "eval"


def plan_table(model: nn.Module, arch: Architecture, plan: FreezePlan) -> str:
    """A text table of every block: trainable or frozen, BatchNorm mode, parameter counts."""
    rows = []
    total = trained = 0
    for name, block in block_modules(model, arch):
        count = sum(parameter.numel() for parameter in block.parameters())
        trains = plan.trains(name)
        total += count
        trained += count if trains else 0
        rows.append((name, "train" if trains else "frozen", _batchnorm_mode(block, trains, plan.bn),
                     f"{count:,}", f"{count if trains else 0:,}"))
    rows.append(("total", "", "", f"{total:,}", f"{trained:,}"))
    table = Table(("block", "state", "BN", "params", "trainable"), tuple(rows), numeric_from=3)
    return f"freeze plan `{plan.spec}`, BatchNorm policy `{plan.bn}`\n{format_table(table)}"
