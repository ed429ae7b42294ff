"""Grad-CAM: where in the image the network looked to choose its top class.

Uses the maintained `grad-cam` package (`pytorch_grad_cam`) on the last convolutional block of the backbone,
which the registry names for every architecture, so the heat map has the finest spatial detail that still
carries class-level meaning. The explained class is the predicted one: the map answers "why this answer?".
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from lesionlab.inference.base import Explanation
from lesionlab.inference.prediction import Prediction
from lesionlab.models.checkpoint import ModelCard
from lesionlab.models.registry import architecture

OVERLAY_MAX_SIDE = 512


def target_layer(model: nn.Module, arch: str) -> nn.Module:
    """The last feature block (`features.N`) of the backbone, as the registry lists it."""
    last_feature_block = architecture(arch).blocks[-2]
    return model.get_submodule(last_feature_block)


def overlay_on_image(image: Image.Image, heatmap: np.ndarray, max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
    """Blend the heat map over the image at its own aspect ratio (not the squashed input); uint8 RGB."""
    shown = image.convert("RGB")
    shown.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    mask = Image.fromarray(heatmap.astype(np.float32)).resize(shown.size, Image.Resampling.BILINEAR)
    rgb = np.asarray(shown, dtype=np.float32) / 255.0
    return show_cam_on_image(rgb, np.clip(np.asarray(mask), 0.0, 1.0), use_rgb=True)


def grad_cam(model: nn.Module, card: ModelCard, image: Image.Image, batch: np.ndarray,
             prediction: Prediction) -> Explanation:
    """Explain `prediction`'s top class on one pre-processed image with Grad-CAM.

    The prediction comes from the caller (with its test-time augmentation, if any) so that the overlay always
    explains the class the user is shown. `model` must not be running a forward pass for anyone else at the
    same time: Grad-CAM hooks into it.
    """
    inputs = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    target = ClassifierOutputTarget(list(card.classes).index(prediction.top_class))
    with GradCAM(model=model, target_layers=[target_layer(model, card.arch)]) as cam:
        heatmap = cam(input_tensor=inputs, targets=[target])[0]
    return Explanation(prediction=prediction, heatmap=heatmap, overlay=overlay_on_image(image, heatmap))

