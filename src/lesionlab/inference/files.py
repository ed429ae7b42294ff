"""Predicting many image files at once: expand folders and globs, keep going past bad files, report them all.

One unreadable image must not cost the user the predictions for the other thousand, so each file's failure is
collected as `file: reason` and the caller decides the exit status at the end.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from lesionlab.data.imageio import load_rgb
from lesionlab.data.metadata import PatientMetadata
from lesionlab.data.readers.files import IMAGE_SUFFIXES
from lesionlab.errors import LesionlabError
from lesionlab.inference.base import Predictor
from lesionlab.inference.prediction import Prediction
from lesionlab.io_utils import atomic_write_bytes

GLOB_CHARACTERS = frozenset("*?[")
OVERLAY_SUFFIX = "-gradcam.png"


@dataclass(frozen=True)
class FilePrediction:
    """The prediction for one file, and its Grad-CAM overlay file when one was asked for."""

    path: Path
    prediction: Prediction
    overlay: Path | None = None


@dataclass
class BatchOutcome:
    """Predictions for the files that worked and `file: reason` for those that did not."""

    predictions: list[FilePrediction] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)


def expand_image_paths(arguments: Sequence[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Turn files, folders (their images, sorted) and globs into image paths; unmatched ones are failures."""
    paths: list[Path] = []
    failures: list[tuple[Path, str]] = []
    for argument in arguments:
        given = Path(argument)
        if given.is_dir():
            found = sorted(p for p in given.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                failures.append((given, f"folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"))
            paths.extend(found)
        elif GLOB_CHARACTERS & set(argument) and not given.exists():
            matches = glob.glob(argument, recursive=True)
            matched = sorted(Path(match) for match in matches if os.path.isfile(match))
            if not matched:
                failures.append((given, "the pattern matches no files"))
            paths.extend(matched)
        else:
            paths.append(given)
    return paths, failures


def overlay_path(out_dir: Path, image: Path) -> Path:
    """Where an image's Grad-CAM overlay goes: `<out_dir>/<image stem>-gradcam.png`."""
    return out_dir / f"{image.stem}{OVERLAY_SUFFIX}"


def predict_files(predictor: Predictor, paths: Sequence[Path], explain_dir: Path | None = None,
                  metadata: PatientMetadata | Mapping[Path, PatientMetadata] | None = None) -> BatchOutcome:
    """Predict each file (and write its Grad-CAM overlay into `explain_dir` if given), with a progress bar;
    `metadata` gives a metadata model the patient's fields: the same for every file, or per file."""
    outcome = BatchOutcome()
    for path in tqdm(paths, desc="predicting", unit="image", disable=None):
        try:
            image = load_rgb(path)
            if explain_dir is None:
                fields = metadata.get(path) if isinstance(metadata, Mapping) else metadata
                prediction = (predictor.predict_image(image) if fields is None
                              else predictor.predict_image(image, fields))
                outcome.predictions.append(FilePrediction(path, prediction))
                continue
            explanation = predictor.explain(image)
            written = atomic_write_bytes(overlay_path(explain_dir, path), explanation.overlay_png())
            outcome.predictions.append(FilePrediction(path, explanation.prediction, written))
        except LesionlabError as error:
            outcome.failures.append((path, getattr(error, "reason", str(error))))
    return outcome
