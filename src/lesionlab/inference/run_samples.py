"""Real images from a run's own split, pre-processed for its model: to check an export and to calibrate int8.

Checking an export on random tensors proves little (softmax of noise is flat and every backend agrees on it);
the run's validation images are what the model will see. Calibration must use training images, never the
validation images the int8 model is then scored on.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lesionlab.data.imageio import load_rgb
from lesionlab.data.readers import read_dataset
from lesionlab.data.readers.samples import Sample
from lesionlab.data.split import read_split
from lesionlab.errors import DataError
from lesionlab.inference.base import Preprocessing

SPLIT_FILE = "split.csv"
RUN_RECORD_FILE = "run.json"


@dataclass(frozen=True)
class ImageBatch:
    """Pre-processed images `(N, 3, size, size)` and their labels."""

    images: np.ndarray
    labels: np.ndarray


def run_data_path(run_dir: str | os.PathLike[str],
                  data: str | os.PathLike[str] | None) -> str | os.PathLike[str] | None:
    """The dataset to read: `data` if given, else the one the run was trained on (`run.json`), else None.

    None lets `read_dataset` apply its usual default (`$LESIONLAB_DATA`, then `../shared/data/ham10000`).
    """
    record_path = Path(run_dir) / RUN_RECORD_FILE
    if data is not None or not record_path.is_file():
        return data
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    root = record.get("dataset", {}).get("root") if isinstance(record, dict) else None
    return root if isinstance(root, str) and Path(root).exists() else None


def split_samples(run_dir: str | os.PathLike[str], part: str, data: str | os.PathLike[str] | None,
                  limit: int | None, seed: int = 0) -> list[Sample]:
    """Up to `limit` samples of one part of the run's split, drawn with a fixed seed (all when None).

    The dataset is `data`, else the run's own (`run_data_path`); the split file checks it is the same data.
    """
    split_path = Path(run_dir) / SPLIT_FILE
    if not split_path.is_file():
        raise DataError(f"{split_path}: the run has no split file, so there are no images to check or "
                        f"calibrate with; pass a run directory written by `lesionlab train`.")
    split = read_split(split_path, read_dataset(run_data_path(run_dir, data)))
    samples = list(split.parts.get(part, []))
    if not samples:
        raise DataError(f"{split_path}: the '{part}' part is empty; export needs {part} images to use.")
    if limit is not None and limit < len(samples):
        samples = random.Random(seed).sample(samples, limit)
    return samples


def load_batch(samples: list[Sample], preprocessing: Preprocessing, description: str) -> ImageBatch:
    """Decode and pre-process samples into one batch, with a progress bar."""
    arrays = [preprocessing.to_batch(load_rgb(sample.path)) for sample in tqdm(samples, desc=description,
                                                                                  unit="image", leave=False)]
    return ImageBatch(
        images=np.concatenate(arrays, axis=0),
        labels=np.array([sample.label for sample in samples], dtype=np.int64),
    )
