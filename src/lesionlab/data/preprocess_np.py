"""Evaluation preprocessing in numpy alone, for ONNX serving where PyTorch is not installed.

It reproduces `transforms.eval_transform` step by step on the same squashed input: torchvision's grayscale
weights (0.2989, 0.587, 0.114, truncated back to uint8 as torchvision does), division by 255, then mean/std.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from lesionlab.data.imageio import resize_square

GRAY_WEIGHTS = (np.float32(0.2989), np.float32(0.587), np.float32(0.114))


def preprocess_array(
    rgb: np.ndarray, size: int, grayscale: bool, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """Turn one uint8 RGB image `(H, W, 3)` into a float32 batch `(1, 3, size, size)` ready for the model.

    An image not yet `size x size` is squashed with the loader's own resize, so it matches training input.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB array of shape (H, W, 3), got {rgb.dtype} {rgb.shape}")
    if rgb.shape[:2] != (size, size):
        rgb = np.asarray(resize_square(Image.fromarray(rgb), size))
    pixels = rgb.astype(np.float32)
    if grayscale:
        red, green, blue = (pixels[..., channel] for channel in range(3))
        gray = (red * GRAY_WEIGHTS[0] + green * GRAY_WEIGHTS[1] + blue * GRAY_WEIGHTS[2]).astype(np.uint8)
        pixels = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    scaled = pixels * np.float32(1.0 / 255)
    normalised = (scaled - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None], dtype=np.float32)
