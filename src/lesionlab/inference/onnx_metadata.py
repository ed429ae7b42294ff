"""What an exported `.onnx` file says about itself, in its `metadata_props`.

An ONNX file travels alone, so it carries everything needed to use it correctly: the class order, the input
size and the resize rule, the input convention (`lesionlab.input_pixels`: the graph takes resized RGB pixels
0..255 and normalises them itself; files exported before it did lack the key and are refused with what to
do), the normalisation and colour mode it applies, the malignancy threshold fitted on the run's
validation part, for a metadata model the layout of its second input (the encoded patient fields), plus the
full model card. `lesionlab.export`
writes these keys and `OnnxPredictor` reads them back; both sides use this module, so the names cannot drift
apart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from lesionlab.errors import CheckpointError
from lesionlab.malignancy import (
    FALLBACK_RULE,
    FALLBACK_THRESHOLD,
    MalignancyRule,
    ThresholdFit,
    same_temperature,
)
from lesionlab.models.checkpoint import ModelCard

PREFIX = "lesionlab."
CARD_KEY = f"{PREFIX}model_card"
QUANTIZATION_KEY = f"{PREFIX}quantization"
TEMPERATURE_KEY = f"{PREFIX}temperature"
MALIGNANCY_KEY = f"{PREFIX}malignancy_threshold"
UNCALIBRATED = "none"
INPUT_NAME = "image"
METADATA_INPUT_NAME = "metadata"
METADATA_LAYOUT_KEY = f"{PREFIX}metadata_layout"
METADATA_MISSING_KEY = f"{PREFIX}metadata_missing"
OUTPUT_NAME = "probabilities"
SCORING_KEY = f"{PREFIX}scoring"
INPUT_PIXELS_KEY = f"{PREFIX}input_pixels"
INPUT_PIXELS = "rgb-0-255"
RESIZE_RULE = (
    "decode to RGB (EXIF orientation applied), squash to input_size x input_size (aspect ratio not kept, "
    "Pillow bilinear with antialiasing) and feed the pixels 0..255 as they are, channels first; the graph "
    "itself applies the rest: with grayscale true, luminance (0.2989 R + 0.587 G + 0.114 B, truncated to a "
    "whole value) repeated over the 3 channels, then x / 255 and (x - mean) / std per channel"
)


def metadata_for(card: ModelCard, quantization: str, temperature: float | None,
                 malignancy: MalignancyRule = FALLBACK_RULE) -> dict[str, str]:
    """The metadata_props of an exported model: readable keys for people and other programs, and the card.

    `temperature` is already folded into the graph's last layer; the key only says so, so nobody applies it
    twice. `malignancy` is the run's rule; only a threshold fitted on validation is written, so a file
    without one falls back exactly as its run would.
    """
    calibrated = temperature is not None
    calibration = f", calibrated by temperature {temperature!r} (already applied)" if calibrated else ""
    return {
        **_metadata_input_entries(card),
        f"{PREFIX}classes": json.dumps(list(card.classes)),
        f"{PREFIX}input_size": str(card.input_size),
        f"{PREFIX}mean": json.dumps(list(card.mean)),
        f"{PREFIX}std": json.dumps(list(card.std)),
        f"{PREFIX}grayscale": json.dumps(bool(card.grayscale)),
        f"{PREFIX}resize": RESIZE_RULE,
        INPUT_PIXELS_KEY: INPUT_PIXELS,
        f"{PREFIX}input": f"{INPUT_NAME}: float32 [batch, 3, {card.input_size}, {card.input_size}], RGB "
                          f"pixels 0..255 resized as {PREFIX}resize says (normalised inside the graph)",
        f"{PREFIX}output": f"{OUTPUT_NAME}: float32 [batch, {card.num_classes}], softmax probabilities in "
                           f"{PREFIX}classes order{calibration}",
        TEMPERATURE_KEY: repr(temperature) if calibrated else UNCALIBRATED,
        MALIGNANCY_KEY: json.dumps(asdict(malignancy.fit)) if malignancy.fit is not None else UNCALIBRATED,
        f"{PREFIX}run_name": card.run_name,
        QUANTIZATION_KEY: quantization,
        CARD_KEY: json.dumps(card.to_dict()),
    }


def _metadata_input_entries(card: ModelCard) -> dict[str, str]:
    """For a metadata model, the second input's description and layout: what each number means and the
    all-missing row to feed when a patient's fields are unknown; nothing for an image-only model."""
    if card.metadata is None:
        return {}
    from lesionlab.data.metadata import encoded_values, encoding_layout

    fields = card.metadata["fields"]
    layout = encoding_layout(fields)
    return {
        f"{PREFIX}metadata_input": f"{METADATA_INPUT_NAME}: float32 [batch, {len(layout)}], the patient's "
                                   f"{', '.join(fields)} encoded as {METADATA_LAYOUT_KEY} lists (sites in "
                                   f"the shared vocabulary of lesionlab's docs/metadata.md); an unknown "
                                   f"field takes its missing slots, as in {METADATA_MISSING_KEY}",
        METADATA_LAYOUT_KEY: json.dumps(layout),
        METADATA_MISSING_KEY: json.dumps(encoded_values(None, fields)),
    }


def metadata_input(metadata: Mapping[str, str], card: ModelCard, input_names: list[str],
                   path: str | os.PathLike[str]) -> str | None:
    """The name of an exported graph's metadata input, or None where it has none (an image-only model, or a
    metadata model exported before the graph took its fields: it scores with every field missing).

    The recorded layout must be this lesionlab's encoding of the card's fields, so fields are never fed in
    an order or vocabulary the graph was not trained on."""
    if METADATA_INPUT_NAME not in input_names:
        return None
    if card.metadata is None:
        raise CheckpointError(f"{path}: the graph has a {METADATA_INPUT_NAME} input but its model card names "
                              f"no metadata fields; re-export it with `lesionlab export RUN`.")
    expected = _metadata_input_entries(card)[METADATA_LAYOUT_KEY]
    recorded = metadata.get(METADATA_LAYOUT_KEY)
    if recorded != expected:
        raise CheckpointError(f"{path}: its {METADATA_LAYOUT_KEY} ({recorded}) differs from this lesionlab's "
                              f"encoding of {', '.join(card.metadata['fields'])} ({expected}); re-export it "
                              f"with this version (`lesionlab export RUN`).")
    return METADATA_INPUT_NAME


@dataclass(frozen=True)
class GraphScoring:
    """What a graph exported from a `model.json` does inside itself, from its `lesionlab.scoring` entry:
    its members (run name, temperature), the views it averages and whether class offsets follow."""

    members: tuple[tuple[str, float | None], ...]
    views: tuple[str, ...]
    class_offsets: bool

    @property
    def calibrated(self) -> bool:
        """Calibrated when every member applies a fitted temperature and no offsets move the mean."""
        return not self.class_offsets and all(temperature is not None for _, temperature in self.members)

    def description(self) -> str:
        """The scoring in words, for `/health` and `predict --json`."""
        members = "; ".join(f"{name}: " + (f"temperature {temperature:.3f}" if temperature is not None
                                           else "uncalibrated softmax") for name, temperature in self.members)
        views = f"mean over {len(self.views)} views ({', '.join(self.views)})" if len(self.views) > 1 else ""
        parts = [f"inside the graph: mean of {len(self.members)} member(s) ({members})", views,
                 "then class offsets for balanced decisions: read the probabilities as scores, they lean "
                 "towards the rarer classes" if self.class_offsets else ""]
        return ", ".join(part for part in parts if part)


def scoring_metadata(members: list[tuple[str, float | None]], views: tuple[str, ...],
                     class_offsets: bool) -> dict[str, str]:
    """The `lesionlab.scoring` entry of a graph that scores a whole `model.json` inside itself."""
    return {SCORING_KEY: json.dumps({"members": [{"run_name": name, "temperature": temperature}
                                                 for name, temperature in members],
                                     "views": list(views), "class_offsets": class_offsets})}


def graph_scoring(metadata: Mapping[str, str], path: str | os.PathLike[str]) -> GraphScoring | None:
    """The scoring inside a graph exported from a `model.json`; None for a run's own export."""
    value = metadata.get(SCORING_KEY)
    if value is None:
        return None
    try:
        raw = json.loads(value)
        return GraphScoring(tuple((str(entry["run_name"]), entry["temperature"]) for entry in raw["members"]),
                            tuple(raw["views"]), bool(raw["class_offsets"]))
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: {SCORING_KEY} metadata is unreadable ({error}); re-export the model "
                              f"file with `lesionlab export MODEL.json`.") from error


def check_input_pixels(metadata: Mapping[str, str], path: str | os.PathLike[str]) -> None:
    """Refuse a file whose graph does not take resized 0..255 pixels: one exported before the normalisation
    moved into the graph expects normalised input, and fed pixels would give confident nonsense."""
    value = metadata.get(INPUT_PIXELS_KEY)
    if value == INPUT_PIXELS:
        return
    if value is None:
        raise CheckpointError(f"{path}: this file was exported by an older lesionlab whose graph expects "
                              f"pre-normalised input; this version feeds resized 0..255 pixels and "
                              f"normalises inside the graph. Re-export it from its run: `lesionlab export "
                              f"RUN`.")
    raise CheckpointError(f"{path}: {INPUT_PIXELS_KEY} is {value!r}, an input convention this lesionlab does "
                          f"not know ({INPUT_PIXELS!r}); re-export it with this version (`lesionlab export "
                          f"RUN`).")


def temperature_from_metadata(metadata: Mapping[str, str], path: str | os.PathLike[str]) -> float | None:
    """The temperature folded into an exported graph; None for uncalibrated files and older exports."""
    value = metadata.get(TEMPERATURE_KEY, UNCALIBRATED)
    if value == UNCALIBRATED:
        return None
    try:
        return float(value)
    except ValueError as error:
        raise CheckpointError(f"{path}: {TEMPERATURE_KEY} metadata {value!r} is not a number; re-export the "
                              f"model with `lesionlab export`.") from error


def malignancy_from_metadata(metadata: Mapping[str, str], path: str | os.PathLike[str],
                             temperature: float | None) -> MalignancyRule:
    """The malignant flag's rule carried by an exported file: its fitted threshold where the file has one
    fitted under the temperature folded into it, else the fallback with the reason (older exports too)."""
    value = metadata.get(MALIGNANCY_KEY, UNCALIBRATED)
    if value == UNCALIBRATED:
        return MalignancyRule(FALLBACK_THRESHOLD, reason="the exported file carries no threshold fitted on "
                                                         "validation")
    try:
        fit = ThresholdFit(**json.loads(value))
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: {MALIGNANCY_KEY} metadata is unreadable ({error}); re-export the "
                              f"model with `lesionlab export`.") from error
    if not same_temperature(fit.temperature, temperature):
        return MalignancyRule(FALLBACK_THRESHOLD, reason=f"its threshold was fitted under temperature "
                                                         f"{fit.temperature}, the file applies {temperature}")
    return MalignancyRule(fit.threshold, fit)


def card_from_metadata(metadata: Mapping[str, str], path: str | os.PathLike[str]) -> ModelCard:
    """Rebuild the model card stored in an exported file; a foreign or damaged file is a `CheckpointError`."""
    if CARD_KEY not in metadata:
        raise CheckpointError(f"{path}: this ONNX file has no {CARD_KEY} metadata, so its classes and "
                              f"pre-processing are unknown; export it with `lesionlab export RUN`.")
    try:
        payload = json.loads(metadata[CARD_KEY])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: {CARD_KEY} metadata is not valid JSON ({error}); re-export the model "
                              f"with `lesionlab export`.") from error
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: {CARD_KEY} metadata is not a JSON object; re-export the model.")
    return ModelCard.from_dict(payload, path)
