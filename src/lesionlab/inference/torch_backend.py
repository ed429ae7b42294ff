"""A `Predictor` over a PyTorch checkpoint (run directory or checkpoint file); the one that can explain."""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from lesionlab.errors import CheckpointError
from lesionlab.inference.base import Explanation, Predictor, file_digest
from lesionlab.models.checkpoint import BEST_STEM, WEIGHTS_SUFFIX, ModelCard, checkpoint_stem, load_checkpoint


def checkpoint_weights_path(path: str | os.PathLike[str]) -> Path:
    """The `.safetensors` file behind a run directory (`best`) or a checkpoint given by stem or file name."""
    given = Path(path)
    if given.is_dir():
        weights = given / f"{BEST_STEM}{WEIGHTS_SUFFIX}"
    else:
        weights = checkpoint_stem(given).with_suffix(WEIGHTS_SUFFIX)
    if not weights.is_file():
        raise CheckpointError(f"{given}: no {weights.name} found; pass a run directory from `lesionlab "
                              f"train` (it holds best.safetensors), a checkpoint file, or an exported .onnx "
                              f"file.")
    return weights


class TorchPredictor(Predictor):
    """Runs the PyTorch model in eval mode.

    Grad-CAM hooks into the network it explains, so it works on a private copy under a lock: a prediction
    running in another thread at the same moment never feeds its activations into someone else's heat map.
    """

    backend = "pytorch"

    def __init__(self, model: nn.Module, card: ModelCard, source: Path, weights_sha256: str,
                 threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide: PyTorch has one intra-op pool
        self.model = model.eval()
        self._explain_lock = threading.Lock()
        self._explain_model: nn.Module | None = None
        super().__init__(card, source, weights_sha256)

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], threads: int | None = None) -> TorchPredictor:
        """Load a run directory's best model, or a single checkpoint."""
        weights = checkpoint_weights_path(path)
        model, card = load_checkpoint(weights)
        return cls(model, card, Path(path), file_digest(weights), threads)

    @property
    def can_explain(self) -> bool:
        """Gradients are available, so Grad-CAM works."""
        return True

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities from the eager model."""
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
            return torch.softmax(logits, dim=1).numpy()

    def explain(self, image: Image.Image) -> Explanation:
        """Grad-CAM on the last convolutional block for the predicted class."""
        from lesionlab.explain import grad_cam

        batch = self.preprocessing.to_batch(image)
        with self._explain_lock:
            if self._explain_model is None:
                self._explain_model = copy.deepcopy(self.model).requires_grad_(True)
            return grad_cam(self._explain_model, self.card, image, batch)
