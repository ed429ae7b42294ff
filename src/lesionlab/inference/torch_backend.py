"""A `Predictor` over a PyTorch checkpoint (run directory or checkpoint file); the one that can explain.

It takes the resized pixels every engine takes and runs the network behind `PixelInput`, the model's own
grayscale mode and normalisation, the module the exported graph also holds. Where the checkpoint has a
temperature fitted on its validation part (`<stem>.temperature.json`, written by `lesionlab evaluate` and
`lesionlab run`), `lesionlab.scoring` divides the logits by it, as evaluation does.
"""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from lesionlab.data.metadata import PatientMetadata
from lesionlab.device import forward_in_chunks
from lesionlab.evaluation.calibration import checkpoint_temperature
from lesionlab.inference.backends import FP32, checkpoint_weights_path
from lesionlab.inference.base import Explanation, Predictor
from lesionlab.inference.prediction import Prediction
from lesionlab.io_utils import file_sha256
from lesionlab.malignancy import rule_for, threshold_path
from lesionlab.models.checkpoint import ModelCard, checkpoint_stem, load_checkpoint
from lesionlab.models.fold import fold_for
from lesionlab.models.pixel_input import PixelInput
from lesionlab.precision import forward_precision


class TorchPredictor(Predictor):
    """Runs the PyTorch model in eval mode: `model` is the network, `pixel_model` the same network behind its
    input normalisation (what `batch_logits` and Grad-CAM run).

    Grad-CAM hooks into the network it explains, so it works on a private copy under a lock: a prediction
    running in another thread at the same moment never feeds its activations into someone else's heat map.
    """

    backend = "pytorch"

    def __init__(self, model: nn.Module, card: ModelCard, source: Path, weights_sha256: str,
                 threads: int | None = None, temperature: float | None = None, precision: str = FP32) -> None:
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide: PyTorch has one intra-op pool
        self.precision = precision
        self.model = model.eval()
        self.pixel_model = PixelInput.for_card(self.model, card).eval()
        self._forward_lock = threading.Lock()
        self._forward_model: nn.Module | None = None
        self.temperature = temperature
        self._explain_lock = threading.Lock()
        self._explain_model: nn.Module | None = None
        super().__init__(card, source, weights_sha256)

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], threads: int | None = None,
                  calibrated: bool = True, precision: str = FP32) -> TorchPredictor:
        """Load a run directory's best model, or a single checkpoint, with its fitted temperature and
        malignancy threshold where they exist for these exact weights (the temperature unless `calibrated`
        is False; the threshold only where it was fitted under that same temperature); `precision` bf16 runs
        it under CPU bf16 autocast."""
        weights = checkpoint_weights_path(path)
        model, card = load_checkpoint(weights)
        fit = checkpoint_temperature(weights) if calibrated else None
        digest = file_sha256(weights)
        predictor = cls(model, card, Path(path), digest, threads, fit.temperature if fit else None, precision)
        stem = checkpoint_stem(weights)
        predictor.malignancy = rule_for(threshold_path(stem), digest, predictor.temperature)
        return predictor

    @property
    def can_explain(self) -> bool:
        """Gradients are available, so Grad-CAM works."""
        return True

    def forward_model(self) -> nn.Module:
        """What predictions run: `pixel_model`, BatchNorm-folded in fp32, folded at the first prediction (so
        weights changed after it need a new predictor)."""
        with self._forward_lock:
            if self._forward_model is None:
                self._forward_model = fold_for(self.pixel_model, self.precision)
            return self._forward_model

    def batch_logits(self, batch: np.ndarray, metadata: np.ndarray | None = None) -> np.ndarray:
        """Logits from the eager model behind its input normalisation (fp32 even under bf16 autocast), with a
        metadata model's encoded fields when given; in fp32 through its BatchNorm-folded copy
        (`lesionlab.models.fold`), the same function at a fraction of the cost on a CPU."""
        inputs = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        fields = () if metadata is None else (torch.from_numpy(np.ascontiguousarray(metadata,
                                                                                   dtype=np.float32)),)
        with torch.inference_mode(), forward_precision(self.precision, torch.device("cpu")):
            logits = forward_in_chunks(self.forward_model(), inputs, *fields)
        return logits.float().numpy()

    def explain(self, image: Image.Image, prediction: Prediction | None = None,
                metadata: PatientMetadata | None = None) -> Explanation:
        """Grad-CAM on the last convolutional block for the predicted class, the prediction and the map both
        averaged over this predictor's views so the overlay explains exactly what `predict_image` reports
        (each view's map turned back into the image's frame first), with the patient's fields where given.
        A wrapper that changes the decision (class offsets) passes its own `prediction`, so its top class is
        explained."""
        from lesionlab.explain import grad_cam

        prediction = prediction or self.predict_image(image, metadata)
        batch = self.preprocessing.to_batch(image)
        encoded = None if metadata is None else self.encode_metadata(metadata, 1)
        with self._explain_lock:
            if self._explain_model is None:
                self._explain_model = copy.deepcopy(self.pixel_model).requires_grad_(True)
            return grad_cam(self._explain_model, self.card, image, batch, prediction, self.views, encoded)
