"""lesionlab from Python, for notebooks: `load` a model, `Model.predict` an image, `train`, `cross_validate`
and `evaluate`.

A thin layer over the code the command line runs, so a notebook and `lesionlab predict` / `train` / `evaluate`
give the same numbers: `load` is `inference.load_predictor` (the flags of `predict` as keywords), `predict`
is the predictor's own TTA, temperature, ensemble, class-offset and malignancy rules, `train` is
`training.runner.train_run` with the split `lesionlab train` would make, `cross_validate` is `lesionlab cv`
(`lesionlab.crossval`), and `evaluate` is
`evaluation.evaluate.evaluate_run` (or `evaluate_ensemble` for an ensemble). Heavy modules load on first use,
so `import lesionlab` stays quick.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from lesionlab.errors import ConfigError
from lesionlab.inference.prediction import Prediction, RankedClass

if TYPE_CHECKING:
    from lesionlab.crossval import CrossValidationResult
    from lesionlab.evaluation.evaluate import EvaluationResult
    from lesionlab.inference.base import Predictor
    from lesionlab.malignancy import ThresholdFit

ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray
"""An image file's path, a decoded PIL image, or a uint8 array (height, width, 3) or (height, width)."""


@dataclass(frozen=True)
class Result:
    """One image's reading: the ranked classes with probabilities, the malignant flag, and the Grad-CAM heat
    map (network input size, 0..1) and overlay (uint8 RGB at the image's aspect ratio) when asked for."""

    prediction: Prediction
    gradcam: np.ndarray | None = None
    overlay: np.ndarray | None = None

    @property
    def ranked(self) -> tuple[RankedClass, ...]:
        """Every class, most probable first."""
        return self.prediction.ranked

    @property
    def probabilities(self) -> dict[str, float]:
        """Probability per class code."""
        return self.prediction.probabilities

    @property
    def top_class(self) -> str:
        """The most probable class code."""
        return self.prediction.top_class

    @property
    def malignant(self) -> bool:
        """Whether the summed malignant probability reaches the model's malignancy threshold."""
        return self.prediction.malignant

    @property
    def malignant_probability(self) -> float:
        """The summed probability of akiec, bcc and mel."""
        return self.prediction.malignant_probability

    def to_dict(self, top_k: int | None = None) -> dict[str, Any]:
        """The JSON document `lesionlab predict --json` prints for one image (without the maps)."""
        return self.prediction.to_dict(top_k=top_k)

    def __str__(self) -> str:
        ranked = ", ".join(f"{entry.code} {entry.probability:.3f}" for entry in self.ranked[:3])
        flag = "malignant" if self.malignant else "benign"
        return (f"{ranked}; {flag} (malignant probability {self.malignant_probability:.3f}, threshold "
                f"{self.prediction.malignancy_rule.threshold:.3f})")


class Model:
    """A loaded model: a run directory (PyTorch) or an exported `.onnx` file, optionally with TTA views,
    ensemble members and class offsets, exactly as `lesionlab predict` would build it.

    `malignancy` is the threshold a `model.json` recorded for its scoring (None: none recorded, or not loaded
    from one); `save` writes it back, so a loaded model file saves with the threshold it flags at.
    """

    def __init__(self, path: Path, predictor: Predictor, members: tuple[Path, ...],
                 class_offsets: Path | None = None, malignancy: ThresholdFit | None = None) -> None:
        self.path = path
        self.predictor = predictor
        self.members = members
        self.class_offsets = class_offsets
        self.malignancy = malignancy

    @property
    def classes(self) -> tuple[str, ...]:
        """The class codes, in the model's output order."""
        return self.predictor.classes

    @property
    def model_id(self) -> str:
        """Run name, engine and weights digest, as `predict` and `serve` report it."""
        return self.predictor.model_id

    @property
    def metadata_fields(self) -> tuple[str, ...]:
        """The patient fields the model reads (`age`, `sex`, `site`); empty for an image-only model."""
        return self.predictor.metadata_fields

    def predict(self, image: ImageInput, *, gradcam: bool = False, age: float | str | None = None,
                sex: str | None = None, site: str | None = None) -> Result:
        """Classify one image (a path, a PIL image or a uint8 array); `gradcam=True` adds the Grad-CAM map of
        the top class, which needs a PyTorch model (a run directory, not an .onnx file). A model that reads
        patient metadata takes the patient's `age` (years), `sex` (female, male) and `site` (HAM10000 or
        ISIC names, docs/metadata.md); a field left out reads as missing; an image-only model refuses them."""
        from lesionlab.data.metadata import given_patient

        metadata = given_patient(age, sex, site)
        decoded = as_image(image)
        if not gradcam:
            return Result(self.predictor.predict_image(decoded, metadata))
        if not self.predictor.can_explain:
            raise self.predictor.explain_unavailable_error()
        explanation = self.predictor.explain(decoded, metadata=metadata)
        return Result(explanation.prediction, explanation.heatmap, explanation.overlay)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write this model as a `model.json` (members by path and sha256, their temperatures, the TTA views,
        class offsets and the recorded malignancy threshold) that `load`, `lesionlab predict` and
        `lesionlab serve` accept in place of the flags it was built with."""
        from lesionlab.inference.model_file import write_model_file

        temperatures = [member.temperature for member in self.predictor.members]
        members = list(zip(self.members, temperatures, strict=True))
        return write_model_file(path, members, self.predictor.views, self.class_offsets, self.malignancy)

    def __repr__(self) -> str:
        return f"lesionlab.Model({self.model_id!r}; probabilities: {self.predictor.calibration})"


def as_image(image: ImageInput) -> Image.Image:
    """A decoded RGB image from a path (decode errors name the file), a PIL image or a uint8 array."""
    from lesionlab.data.imageio import load_rgb

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise ConfigError(f"an image array must be uint8 of shape (height, width, 3) or (height, width); "
                              f"got {image.dtype} {image.shape}. Convert it, e.g. with "
                              f"`np.clip(x * 255, 0, 255).astype(np.uint8)` for floats in 0..1.")
        return Image.fromarray(image).convert("RGB")
    if isinstance(image, str | os.PathLike):
        return load_rgb(image)
    raise ConfigError(f"cannot read an image from a {type(image).__name__}; pass a file path, a PIL image or "
                      f"a uint8 array.")


def load(path: str | os.PathLike[str], *, tta: bool | Sequence[str] = False,
         ensemble: Sequence[str | os.PathLike[str]] = (), class_offsets: str | os.PathLike[str] | None = None,
         backend: str | None = None, precision: str = "fp32", threads: int | None = None) -> Model:
    """The model at `path` (a run directory, an exported .onnx file or a `model.json`), built as `lesionlab
    predict PATH` builds it from the same options: `tta=True` (the default views) or a list of view names,
    other `ensemble` members, a study's `class_offsets` file, `backend`, `precision` and CPU `threads`. A
    `model.json` names its members, views and offsets itself and is checked against their digests."""
    from lesionlab.inference import load_model_file, load_predictor
    from lesionlab.inference.model_file import is_model_file, resolve_model_file
    from lesionlab.views import parse_views

    if is_model_file(path) and not tta and not ensemble and class_offsets is None:
        resolved = resolve_model_file(path)
        return Model(Path(path), load_model_file(resolved, threads, backend, precision), resolved.members,
                     resolved.class_offsets, resolved.malignancy)

    views = None
    if tta:
        views = parse_views(None if tta is True else tta)
    predictor = load_predictor(path, threads=threads, views=views, ensemble=ensemble,
                               class_offsets=class_offsets, backend=backend, precision=precision)
    return Model(Path(path), predictor, tuple(Path(member) for member in (path, *ensemble)),
                 Path(class_offsets) if class_offsets is not None else None)


def train(recipe: str | os.PathLike[str] | None = None, *, data: str | os.PathLike[str] | None = None,
          out: str | os.PathLike[str] | None = None, overrides: Sequence[str] = (),
          subset: int | None = None, split: str | os.PathLike[str] | None = None,
          data_format: str | None = None) -> Model:
    """Train `recipe` (a file or a name in configs/; None: the default) on `data` (None: where `lesionlab
    train` looks) into `out` (default `runs/<arch>-<time>`) as `lesionlab train` does, and load the result.
    `overrides` are `--set KEY=VALUE` assignments, `subset` trains on about that many images (a
    lesion-grouped part), `split` reuses a split.csv."""
    from lesionlab.data.readers import read_dataset
    from lesionlab.pipeline import training_split
    from lesionlab.training.recipe import load_recipe
    from lesionlab.training.runner import train_run

    resolved = load_recipe(recipe, overrides)
    table = read_dataset(data, data_format)
    run_split = training_split(table, split, subset, resolved.seed)
    name = f"{resolved.arch}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(out) if out is not None else Path("runs") / name
    return load(train_run(resolved, table, run_split, run_dir))


def cross_validate(recipe: str | os.PathLike[str] | None = None, *, out: str | os.PathLike[str],
                   data: str | os.PathLike[str] | None = None, overrides: Sequence[str] = (),
                   folds: int = 5, split: str | os.PathLike[str] | None = None, subset: int | None = None,
                   tta: bool = True, data_format: str | None = None) -> CrossValidationResult:
    """Cross-validate `recipe` on `folds` lesion-grouped folds of the split's train + val parts into `out`,
    as `lesionlab cv` does (a rerun continues it), and return its figures: `.out_of_fold` (every train + val
    image scored once, the figure to choose by) and `.test` (the folds as one ensemble on the test part),
    both metrics.json payloads; `out/model.json` is that ensemble."""
    from lesionlab.crossval import prepare_cv, score_cv, train_folds
    from lesionlab.data.readers import read_dataset
    from lesionlab.pipeline import training_split
    from lesionlab.training.recipe import load_recipe
    from lesionlab.views import parse_views

    resolved = load_recipe(recipe, overrides)
    table = read_dataset(data, data_format)
    cv = prepare_cv(Path(out), resolved, table, training_split(table, split, subset, resolved.seed), folds,
                    given=split is not None)
    train_folds(cv)
    return score_cv(cv, parse_views(None) if tta else None)


def evaluate(model: Model | str | os.PathLike[str], *, data: str | os.PathLike[str] | None = None,
             split: str | None = None, out: str | os.PathLike[str] | None = None, calibrate: bool = True,
             data_format: str | None = None, precision: str | None = None,
             device: str | None = None) -> EvaluationResult:
    """Evaluate as `lesionlab evaluate` does and return where it wrote and its metrics (`.metrics`, the
    metrics.json payload). `model` is a run directory, a `model.json` (its members, views and class offsets
    scored together), or a `Model` loaded from either (its TTA views and ensemble members carry over);
    `data=None` is the run's own test part, `split` another part."""
    from lesionlab.evaluation.ensemble import evaluate_ensemble, evaluate_model_file
    from lesionlab.evaluation.evaluate import EvaluationOptions, evaluate_run
    from lesionlab.inference.model_file import is_model_file, resolve_model_file

    source = model.path if isinstance(model, Model) else Path(model)
    if is_model_file(source):
        options = EvaluationOptions(data=data, fmt=data_format, split=split, calibrate=calibrate,
                                    out_dir=Path(out) if out is not None else None, device=device,
                                    precision=precision)
        return evaluate_model_file(resolve_model_file(source), options)
    loaded = model if isinstance(model, Model) else None
    if loaded is not None and loaded.class_offsets is not None:
        raise ConfigError(f"{loaded.class_offsets}: evaluate scores models without class offsets; the study "
                          f"that wrote the offsets reports their figures. Load the model without them.")
    members = loaded.members if loaded is not None else (Path(model),)
    for member in members:
        if not member.is_dir():
            raise ConfigError(f"{member}: evaluate needs the run directory (the PyTorch model), not an "
                              f"exported file; pass the run it was exported from.")
    views = loaded.predictor.views if loaded is not None else ()
    options = EvaluationOptions(data=data, fmt=data_format, split=split,
                                tta_views=tuple(views) if len(views) > 1 else None, calibrate=calibrate,
                                out_dir=Path(out) if out is not None else None, device=device,
                                precision=precision)
    if len(members) > 1:
        return evaluate_ensemble(list(members), options)
    return evaluate_run(members[0], options)

