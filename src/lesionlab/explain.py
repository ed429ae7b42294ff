"""Grad-CAM: where in the image the network looked to choose the class it reports.

Uses the maintained `grad-cam` package (`pytorch_grad_cam`) on the last convolutional block of the backbone,
which the registry names for every architecture, so the heat map has the finest spatial detail that still
carries class-level meaning. The explained class is the reported one: the map answers "why this answer?".

With test-time augmentation the reported probabilities are the mean over flipped and rotated views, so the
map is the mean over the same views too. A map computed on a flipped view lies in the flipped frame; it is
brought back to the image's own frame by the inverse view before averaging, or the average would blur an
honest map with its mirror image. `docs/explanations.md` gives the checks that guard this.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from lesionlab.inference.base import Explanation
from lesionlab.inference.prediction import Prediction
from lesionlab.models.checkpoint import ModelCard
from lesionlab.models.pixel_input import PixelInput
from lesionlab.models.registry import architecture
from lesionlab.views import IDENTITY, undo_view, view_batch

OVERLAY_MAX_SIDE = 512
COLOUR_MAP = "jet"
HEAT_WEIGHT = 0.5
COLOUR_BAR_WIDTH = 16
LEGEND_WIDTH = 64
TITLE_HEIGHT = 24
FONT_SIZE = 13

def target_layer(model: nn.Module, arch: str) -> nn.Module:
    """The last feature block (`features.N`) of the backbone, as the registry lists it (of the network behind
    a `PixelInput`, when given the deployed model)."""
    network = model.network if isinstance(model, PixelInput) else model
    return network.get_submodule(architecture(arch).blocks[-2])


class WithFields(nn.Module):
    """A metadata model with one patient's encoded fields fixed, so Grad-CAM (which feeds images only) maps
    the class as the model decides it with those fields."""

    def __init__(self, model: nn.Module, fields: np.ndarray) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("fields", torch.from_numpy(np.ascontiguousarray(fields, dtype=np.float32)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images, self.fields.expand(images.shape[0], -1))


def class_heatmaps(model: nn.Module, arch: str, batch: np.ndarray, class_index: int,
                   metadata: np.ndarray | None = None) -> np.ndarray:
    """Grad-CAM maps `(N, size, size)` in 0..1 of one class for every image of a batch `model` takes (resized
    pixels for a `PixelInput`, normalised input for the bare network), each in its own input's frame;
    `metadata` (one encoded row) gives a metadata model the patient's fields. `model` must not run a forward
    pass for anyone else meanwhile: Grad-CAM hooks into it."""
    inputs = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    targets = [ClassifierOutputTarget(class_index)] * len(inputs)
    network = model if metadata is None else WithFields(model, metadata.reshape(1, -1))
    with GradCAM(model=network, target_layers=[target_layer(model, arch)]) as cam:
        return cam(input_tensor=inputs, targets=targets)


def view_averaged_heatmap(model: nn.Module, arch: str, batch: np.ndarray, class_index: int,
                          views: Sequence[str] = (IDENTITY,),
                          metadata: np.ndarray | None = None) -> np.ndarray:
    """The Grad-CAM map `(size, size)` of one image (`batch` of 1) averaged over `views`, every view's map
    turned back into the image's frame first; rescaled to 0..1 like a single map."""
    maps = class_heatmaps(model, arch, view_batch(batch, views), class_index, metadata)
    aligned = np.stack([undo_view(name, heat) for name, heat in zip(views, maps, strict=True)])
    mean = aligned.mean(axis=0)
    peak = float(mean.max())
    return (mean / peak if peak > 0 else mean).astype(np.float32)


def colourise(heatmap: np.ndarray) -> np.ndarray:
    """A 0..1 map as float RGB through the colour map the legend shows."""
    return colormaps[COLOUR_MAP](np.clip(heatmap, 0.0, 1.0))[..., :3]


def overlay_on_image(image: Image.Image, heatmap: np.ndarray, max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
    """Blend the heat map over the image at its own aspect ratio (not the squashed input); uint8 RGB."""
    shown = image.convert("RGB")
    shown.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    mask = Image.fromarray(heatmap.astype(np.float32)).resize(shown.size, Image.Resampling.BILINEAR)
    rgb = np.asarray(shown, dtype=np.float32) / 255.0
    blended = (1.0 - HEAT_WEIGHT) * rgb + HEAT_WEIGHT * colourise(np.asarray(mask))
    return np.clip(np.round(blended * 255.0), 0, 255).astype(np.uint8)


def explanation_title(prediction: Prediction) -> str:
    """What the map explains, in words: the class and its probability."""
    top = prediction.ranked[0]
    return f"Grad-CAM for {top.code} ({top.name}), p = {top.probability:.3f}"


def annotate(overlay: np.ndarray, title: str) -> np.ndarray:
    """The overlay with a title band above (the class explained) and a colour bar on its right (what the
    colours mean), so a saved PNG is readable on its own; uint8 RGB."""
    height, width = overlay.shape[:2]
    canvas = Image.new("RGB", (width + LEGEND_WIDTH, height + TITLE_HEIGHT), "white")
    canvas.paste(Image.fromarray(overlay), (0, TITLE_HEIGHT))
    ramp = np.linspace(1.0, 0.0, height)[:, None].repeat(COLOUR_BAR_WIDTH, axis=1)
    bar = Image.fromarray(np.round(colourise(ramp) * 255.0).astype(np.uint8))
    bar_left = width + 6
    canvas.paste(bar, (bar_left, TITLE_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=FONT_SIZE)
    draw.text((4, 4), title, fill="black", font=font)
    label_left = bar_left + COLOUR_BAR_WIDTH + 4
    for value, anchor in ((1.0, "la"), (0.5, "lm"), (0.0, "ld")):
        y = TITLE_HEIGHT + round((1.0 - value) * (height - 1))
        draw.text((label_left, y), f"{value:.1f}", fill="black", font=font, anchor=anchor)
    return np.asarray(canvas)


def grad_cam(model: nn.Module, card: ModelCard, image: Image.Image, batch: np.ndarray,
             prediction: Prediction, views: Sequence[str] = (IDENTITY,),
             metadata: np.ndarray | None = None) -> Explanation:
    """Explain `prediction`'s top class on one pre-processed image with Grad-CAM over `views`.

    The prediction comes from the caller (with its test-time augmentation, if any) so that the overlay always
    explains the class the user is shown; `views` are the same views, so the map averages what the
    prediction averaged, and `metadata` the same encoded patient fields the prediction read.
    """
    class_index = list(card.classes).index(prediction.top_class)
    heatmap = view_averaged_heatmap(model, card.arch, batch, class_index, views, metadata)
    overlay = annotate(overlay_on_image(image, heatmap), explanation_title(prediction))
    return Explanation(prediction=prediction, heatmap=heatmap, overlay=overlay)
