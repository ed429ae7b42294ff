"""DermaMNIST: one `.npz` (`train_images`, `train_labels`, `val_*`, `test_*`), keeping its own split.

Samples point into the archive (`archive.npz#part/index`); the pixels are read only when an image is used.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from lesionlab.classes import NUM_CLASSES
from lesionlab.data.imageio import npz_member_path
from lesionlab.data.readers.files import visible_files
from lesionlab.data.readers.samples import ReaderResult, Sample
from lesionlab.errors import DataError

PARTS: tuple[str, ...] = ("train", "val", "test")


def array_shape(archive: Path, key: str) -> tuple[int, ...]:
    """Read an array's shape from its `.npy` header inside the archive, without loading the pixels."""
    with zipfile.ZipFile(archive) as bundle, bundle.open(f"{key}.npy") as member:
        major, _ = np.lib.format.read_magic(member)
        read_header = (
            np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        )
        shape, _, _ = read_header(member)
    return tuple(shape)


def part_labels(archive: Path, arrays: np.lib.npyio.NpzFile, part: str) -> np.ndarray:
    """One part's labels, checked against the classes and against its images' shape."""
    key = f"{part}_labels"
    if key not in arrays.files:
        raise DataError(f"{archive}: has '{part}_images' but no '{key}' array")
    labels = arrays[key]
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{archive}: '{key}' must hold one integer class per image, got shape {labels.shape} "
            f"dtype {labels.dtype}"
        )
    out_of_range = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if out_of_range.size:
        first = int(out_of_range[0])
        raise DataError(
            f"{archive}: '{key}'[{first}] = {labels[first]} is not a class label 0..{NUM_CLASSES - 1}"
        )
    shape = array_shape(archive, f"{part}_images")
    grayscale = len(shape) == 3
    colour = len(shape) == 4 and shape[3] in (1, 3)
    if not (grayscale or colour) or shape[0] != len(labels):
        raise DataError(
            f"{archive}: '{part}_images' has shape {shape}; expected (N, H, W) or (N, H, W, 3) with "
            f"N = {len(labels)} labels"
        )
    return labels


def read(path: Path) -> ReaderResult:
    """Samples of the archive at `path` (or the one `.npz` in the folder `path`), tagged with their part."""
    if path.is_file():
        archive = path
    else:
        archives = visible_files(path, {".npz"})
        if len(archives) != 1:
            raise DataError(
                f"{path}: expected exactly one MedMNIST .npz file, found "
                f"{', '.join(a.name for a in archives) or 'none'}; point at the .npz file itself"
            )
        archive = archives[0]
    samples: list[Sample] = []
    try:
        with np.load(archive) as arrays:
            parts = [part for part in PARTS if f"{part}_images" in arrays.files]
            if not parts:
                raise DataError(
                    f"{archive}: no train_images/val_images/test_images arrays; found keys "
                    f"{', '.join(arrays.files) or 'none'}"
                )
            for part in parts:
                labels = part_labels(archive, arrays, part)
                samples.extend(
                    Sample(
                        f"{part}_{index}",
                        npz_member_path(archive, part, index),
                        int(label),
                        None,
                        "medmnist",
                        part,
                    )
                    for index, label in enumerate(labels.tolist())
                )
    except (OSError, ValueError, zipfile.BadZipFile, KeyError) as error:
        raise DataError(f"{archive}: cannot read as a MedMNIST .npz ({error})") from None
    return samples, []
