"""Folding BatchNorm into convolutions keeps the function, folds only eval-mode pairs, leaves the model."""

from __future__ import annotations

import torch
from torch import nn

from lesionlab.models.fold import fold_batchnorm, fold_for
from lesionlab.models.registry import build_model


def batchnorms(model: nn.Module) -> int:
    return sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())


def model_with_statistics() -> nn.Module:
    """MobileNetV3-Small with non-trivial BatchNorm statistics and affine parameters (fresh ones are ~id)."""
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", pretrained="none")
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.1)
    return model.eval()


def test_folded_model_computes_the_same_function_without_batchnorm() -> None:
    model = model_with_statistics()
    images = torch.randn(3, 3, 64, 64)
    folded = fold_batchnorm(model)
    assert batchnorms(model) > 0
    assert batchnorms(folded) == 0
    with torch.inference_mode():
        expected, got = model(images), folded(images)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_the_model_itself_is_left_unchanged_and_the_copy_is_forward_only() -> None:
    model = model_with_statistics()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
    assert all(parameter.requires_grad for parameter in model.parameters())
    assert not any(parameter.requires_grad for parameter in folded.parameters())


def test_train_mode_batchnorm_is_not_folded() -> None:
    model = model_with_statistics()
    model.features[5:].train()
    folded = fold_batchnorm(model)
    assert batchnorms(folded) == batchnorms(model.features[5:])
    assert batchnorms(folded.features[:5]) == 0


def test_fold_for_folds_fp32_passes_only() -> None:
    model = model_with_statistics()
    assert batchnorms(fold_for(model, "fp32")) == 0
    assert fold_for(model, "bf16") is model
