"""scripts/gradcam_lesion.py's lesion mask: the dark, coloured blob, never the dark vignette corners."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gradcam_lesion.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gradcam_lesion", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mask_finds_the_lesion_and_leaves_out_the_vignette() -> None:
    size = 224
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size, 3), (225, 180, 170), np.uint8)  # skin
    vignette = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 > (0.55 * size) ** 2
    image[vignette] = (10, 10, 10)
    lesion = (xx - 140) ** 2 + (yy - 90) ** 2 < 30 ** 2
    image[lesion] = (110, 60, 40)
    mask = load_script().lesion_mask(image)
    assert not mask[vignette].any()
    overlap = (mask & lesion).sum() / lesion.sum()
    assert overlap > 0.9 and mask.sum() < 1.3 * lesion.sum()
