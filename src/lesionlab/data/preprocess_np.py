"""Deployment preprocessing in numpy alone, for exported models served where PyTorch is not installed.

It is only lesionlab's one resize: the image squashed to `size x size` by `imageio.resize_square`, as the
decoded-image cache and the dataset do, laid out as the `(1, 3, size, size)` RGB pixels 0..255 every engine
takes. The grayscale mode and the normalisation are the model's (`models.pixel_input.PixelInput`), inside
the exported graph and the PyTorch predictor, so no twin of them lives here.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from lesionlab.data.imageio import resize_square


def preprocess_array(rgb: np.ndarray, size: int) -> np.ndarray:
    """One uint8 RGB image `(H, W, 3)` as a float32 batch of pixels 0..255 `(1, 3, size, size)`.

    An image not yet `size x size` is squashed with the loader's own resize, so it matches training input.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB array of shape (H, W, 3), got {rgb.dtype} {rgb.shape}")
    if rgb.shape[:2] != (size, size):
        rgb = np.asarray(resize_square(Image.fromarray(rgb), size))
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32)
