"""Fold each eval-mode BatchNorm into the convolution before it, for passes that only run the network forward.

In eval mode a BatchNorm is a fixed per-channel affine map of its convolution's output, so it can be folded
into that convolution's weights and bias (`torch.nn.utils.fusion.fuse_conv_bn_eval`): the same function with
one pass over the activations fewer. In eager PyTorch on a CPU a MobileNetV3 BatchNorm costs almost as much
as its convolution (profiling `lesionlab evaluate --tta`: 10.6 s in BatchNorm against 12.6 s in convolutions),
so folding is the largest speed-up an fp32 forward-only pass has, and it moves outputs only by float
rounding (about 1e-6 in probability). Under bf16 autocast it is not used (`fold_for`): autocast rounds the
folded bias to bf16, a fixed per-channel error where a BatchNorm subtracts a large mean, and on
`runs/default` that moved probabilities by up to 0.19 (cached features to a cosine similarity of 0.93)
against 0.13 (0.99) unfolded (benchmarks/bench_forward.py).

Only a BatchNorm2d in eval mode that directly follows a Conv2d inside an `nn.Sequential` (torchvision's
`Conv2dNormActivation`) is folded: a train-mode BatchNorm normalises by batch statistics, and a pair outside
a Sequential may not be applied in that order. The model given is never changed; the folded copy shares no
tensors with it, so it must be folded again after the weights change.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` with every eval-mode BatchNorm2d folded into the Conv2d that precedes it.

    The copy's parameters do not require gradients: it is for forward-only passes.
    """
    with torch.no_grad():
        folded = copy.deepcopy(model)
        for module in folded.modules():
            if isinstance(module, nn.Sequential):
                _fold_pairs(module)
    folded.requires_grad_(False)
    return folded


def fold_for(model: nn.Module, precision: str) -> nn.Module:
    """The model a forward-only pass at a resolved precision runs: folded in fp32, as it is in bf16."""
    return fold_batchnorm(model) if precision == "fp32" else model


def _fold_pairs(sequence: nn.Sequential) -> None:
    """Fold, in place, each (Conv2d, eval-mode BatchNorm2d) pair of adjacent children of `sequence`."""
    names = list(sequence._modules)
    for first, second in itertools.pairwise(names):
        conv, norm = sequence._modules[first], sequence._modules[second]
        if (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and not conv.training
                and not norm.training and norm.track_running_stats):
            sequence._modules[first] = fuse_conv_bn_eval(conv, norm)
            sequence._modules[second] = nn.Identity()

