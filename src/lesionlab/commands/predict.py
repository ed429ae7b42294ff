"""`lesionlab predict RUN IMAGE...`: classify image files with a run directory or an exported .onnx file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lesionlab.commands._common import add_model_arguments, load_model_from_arguments

if TYPE_CHECKING:
    from lesionlab.data.metadata import PatientMetadata
    from lesionlab.inference.base import Predictor
    from lesionlab.inference.files import FilePrediction

DEFAULT_EXPLAIN_DIR = "explanations"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `predict` verb."""
    parser = subparsers.add_parser(
        "predict", help="classify images (files, folders or globs) with a run or an .onnx file",
        description="Rank the 7 classes for each image, with the top class, the summed probability of the "
                    "malignant classes (akiec, bcc, mel) and the malignant flag: that probability against "
                    "the threshold `lesionlab evaluate` chose on validation data (or a stated fallback). "
                    "A research tool, not a diagnosis.",
    )
    parser.add_argument("run", metavar="RUN",
                        help="run directory (PyTorch), exported .onnx file or model.json")
    parser.add_argument("images", metavar="IMAGE", nargs="*", help="image files, folders of images, or globs")
    parser.add_argument("--json", action="store_true", help="print one JSON document for programs")
    parser.add_argument("--explain", action="store_true",
                        help="also write a Grad-CAM overlay PNG per image (needs a run directory, not .onnx)")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_EXPLAIN_DIR),
                        help=f"folder for --explain overlays (default: ./{DEFAULT_EXPLAIN_DIR})")
    parser.add_argument("--top", type=int, default=3, metavar="K",
                        help="classes listed per image (default 3)")
    parser.add_argument("--age", help="patient age in years, for a model trained with metadata")
    parser.add_argument("--sex", help="female or male, for a model trained with metadata")
    parser.add_argument("--site", help="anatomical site (HAM10000 or ISIC names: back, face, posterior "
                        "torso, head/neck, ...), for a model trained with metadata")
    parser.add_argument("--metadata-csv", type=Path, metavar="FILE",
                        help="CSV of images (column image, relative to the CSV) with their age, sex and site "
                        "columns: predicts each with its own fields")
    add_model_arguments(parser)
    parser.set_defaults(handler=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    """Predict every image and list failures as `file: reason`; exit 1 when some images failed and the
    others were predicted, 2 when none could be."""
    from lesionlab.errors import SOME_INPUTS_BAD, USER_ERROR, ConfigError
    from lesionlab.inference.files import expand_image_paths, predict_files

    if args.top < 1:
        raise ConfigError(f"--top {args.top}: list at least one class")
    predictor = load_model_from_arguments(args)
    if args.explain and not predictor.can_explain:
        raise predictor.explain_unavailable_error()
    paths, failures = expand_image_paths(args.images)
    metadata = _patient_metadata(args)
    if metadata is not None and args.explain:
        raise ConfigError("--explain with patient fields: Grad-CAM explains the image alone; leave out one")
    if metadata is not None:
        predictor.check_metadata_given(metadata)
        if isinstance(metadata, dict):
            paths = [*metadata, *paths]
    if not paths and not failures:
        raise ConfigError("no images given: name image files, folders or globs, or pass --metadata-csv")
    outcome = predict_files(predictor, paths, args.out if args.explain else None, metadata)
    failures = failures + outcome.failures
    top = min(args.top, len(predictor.classes))
    if args.json:
        print(json.dumps(_json_document(predictor, outcome.predictions, failures, top), indent=2))
    else:
        print(_text_table(outcome.predictions, top))
        print(f"\n{len(outcome.predictions)} image(s) predicted, {len(failures)} failed; model "
              f"{predictor.model_id}; probabilities: {predictor.calibration}; malignant flag: "
              f"{predictor.malignancy.description}. A research tool, not a diagnosis.")
    for path, reason in failures:
        print(f"{path}: {reason}", file=sys.stderr)
    if not failures:
        return 0
    return SOME_INPUTS_BAD if outcome.predictions else USER_ERROR


def _patient_metadata(args: argparse.Namespace) -> PatientMetadata | dict[Path, PatientMetadata] | None:
    """The --age/--sex/--site fields in the shared vocabulary, or each image's from --metadata-csv; None
    when neither is given."""
    from lesionlab.data.metadata import given_patient, read_metadata_csv
    from lesionlab.errors import ConfigError

    fields = given_patient(args.age, args.sex, args.site, prefix="--")
    if args.metadata_csv is not None:
        if fields is not None:
            raise ConfigError("--metadata-csv with --age/--sex/--site: give the fields in the CSV or as "
                              "flags, not both")
        return read_metadata_csv(args.metadata_csv)
    return fields


def _json_document(predictor: Predictor, predictions: list[FilePrediction], failures: list[tuple[Path, str]],
                   top: int) -> dict[str, object]:
    """Everything a program needs, including every class's probability and any failures."""
    return {
        "model_id": predictor.model_id,
        "backend": predictor.backend,
        "temperature": predictor.temperature,
        "calibration": predictor.calibration,
        "malignant_rule": predictor.malignancy.description,
        "predictions": [
            {"image": str(item.path), **item.prediction.to_dict(top_k=top),
             **({"overlay": str(item.overlay)} if item.overlay else {})}
            for item in predictions
        ],
        "failures": [{"image": str(path), "error": reason} for path, reason in failures],
    }


def _text_table(predictions: list[FilePrediction], top: int) -> str:
    """One row per image: top class, its probability, malignant or benign, the runners-up (and overlay)."""
    from lesionlab.tables import Table, format_table

    with_overlay = any(item.overlay for item in predictions)
    rows = []
    for item in predictions:
        prediction = item.prediction
        ranked = ", ".join(f"{entry.code} {entry.probability:.3f}" for entry in prediction.ranked[:top])
        row = (item.path.name, prediction.top_class, f"{prediction.top_probability:.3f}",
               f"{prediction.malignant_probability:.3f}", "malignant" if prediction.malignant else "benign",
               ranked)
        rows.append((*row, str(item.overlay)) if with_overlay else row)
    headers = ("image", "top class", "probability", "malignant p", "flag", f"top {top}")
    headers = (*headers, "overlay") if with_overlay else headers
    return format_table(Table(headers=headers, rows=tuple(rows), numeric_from=len(headers)))
