"""Temperature scaling (Guo et al., 2017): one scalar T that divides the logits so that the softmax
probabilities match observed frequencies, without changing any decision (argmax is unchanged by T > 0).

T is fitted on the validation part only, by minimising the negative log-likelihood with L-BFGS over log T
(which keeps T positive without a constraint). Fitting it on the test part would leak the test labels into
the reported calibration. The fitted value is saved beside its checkpoint (`best.temperature.json` beside
`best.safetensors`) with that checkpoint's sha256, so a temperature is never applied to weights it was not
fitted for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from lesionlab.errors import CheckpointError
from lesionlab.io_utils import atomic_write_json, file_sha256
from lesionlab.models.checkpoint import checkpoint_stem

TEMPERATURE_SUFFIX = ".temperature.json"
TEMPERATURE_RANGE: tuple[float, float] = (0.05, 20.0)


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and what it was fitted on, as saved in `temperature.json`."""

    temperature: float
    fitted_on: str
    samples: int
    nll_before: float
    nll_after: float
    checkpoint_sha256: str


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iterations: int = 200) -> float:
    """The temperature minimising the mean NLL of `labels` under softmax(logits / T), within
    `TEMPERATURE_RANGE`.

    The NLL is convex in 1/T, so clipping the unconstrained optimum gives the constrained one. The range
    only binds for a model no better than chance on the validation part, whose optimum runs off towards
    T = infinity (uniform probabilities); 20 already makes its probabilities nearly uniform.
    """
    logit_tensor = torch.as_tensor(logits, dtype=torch.float64)
    label_tensor = torch.as_tensor(labels, dtype=torch.long)
    log_temperature = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_temperature], lr=1.0, max_iter=max_iterations, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = functional.cross_entropy(logit_tensor / log_temperature.exp(), label_tensor)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(np.clip(log_temperature.detach().exp().item(), *TEMPERATURE_RANGE))


def fit_temperature_record(
    logits: np.ndarray, labels: np.ndarray, fitted_on: str, checkpoint: Path
) -> TemperatureFit:
    """Fit T and describe the fit: the part it came from and the NLL before and after."""
    temperature = fit_temperature(logits, labels)
    logit_tensor = torch.as_tensor(logits, dtype=torch.float64)
    label_tensor = torch.as_tensor(labels, dtype=torch.long)
    return TemperatureFit(
        temperature=temperature,
        fitted_on=fitted_on,
        samples=len(labels),
        nll_before=float(functional.cross_entropy(logit_tensor, label_tensor)),
        nll_after=float(functional.cross_entropy(logit_tensor / temperature, label_tensor)),
        checkpoint_sha256=file_sha256(checkpoint),
    )


def save_temperature(path: Path, fit: TemperatureFit) -> Path:
    """Write `temperature.json` atomically."""
    return atomic_write_json(path, asdict(fit))


def temperature_path(checkpoint_stem: Path) -> Path:
    """Where a checkpoint's temperature is kept: `<stem>.temperature.json` beside it."""
    return checkpoint_stem.with_name(checkpoint_stem.name + TEMPERATURE_SUFFIX)


def load_temperature(path: Path, checkpoint: Path) -> TemperatureFit | None:
    """The saved temperature for `checkpoint`, or None where there is none or it belongs to other weights."""
    if not Path(path).is_file():
        return None
    try:
        fit = TemperatureFit(**json.loads(Path(path).read_text(encoding="utf-8")))
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: unreadable temperature file ({error}); delete it to refit") from error
    return fit if fit.checkpoint_sha256 == file_sha256(checkpoint) else None


def checkpoint_temperature(weights: Path) -> TemperatureFit | None:
    """The temperature saved beside a checkpoint's weights file for exactly those weights, else None."""
    return load_temperature(temperature_path(checkpoint_stem(weights)), weights)
