"""Optional experiment tracking: a run's parameters, epoch metrics and figures in TensorBoard and MLflow.

Off by default; the recipe key `tracking: {tensorboard, mlflow}` (flags `--tensorboard`, `--mlflow`) turns
each on. `history.csv` stays the record: every epoch row is logged as it is committed, with the same values,
at step = the row's position in `history.csv` (1-based, counting across stages), so the viewers draw the
curves the file holds. TensorBoard writes event files to `<run>/tensorboard/`; MLflow writes one MLflow run
per lesionlab run to a local file store `<runs dir>/mlruns/` (no server), or to `$MLFLOW_TRACKING_URI` where
that is set. The MLflow run id is kept in `run.json` (`tracking`), so a resumed run and the evaluation that
`lesionlab run` ends with log into the same MLflow run. Under torchrun only rank 0 logs.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lesionlab.errors import ConfigError
from lesionlab.io_utils import atomic_write_json
from lesionlab.run_json import RUN_JSON, read_run_json
from lesionlab.training.recipe import Recipe, TrackingConfig
from lesionlab.training.rundir import RunDirectory

EXPERIMENT = "lesionlab"
"""The MLflow experiment every lesionlab run is logged under."""
TENSORBOARD_DIR = "tensorboard"
MLRUNS_DIR = "mlruns"
INSTALL_HINT = "pip install 'lesionlab[tracking]'"
FILE_STORE_VARIABLE = "MLFLOW_ALLOW_FILE_STORE"


def tensorboard_dir(run_dir: Path) -> Path:
    """`<run>/tensorboard/`: `tensorboard --logdir runs` then shows every run side by side."""
    return run_dir / TENSORBOARD_DIR


def mlflow_uri(run_dir: Path) -> str:
    """`$MLFLOW_TRACKING_URI`, else the file store `<runs dir>/mlruns/` beside the run folders."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (run_dir.parent / MLRUNS_DIR).resolve().as_uri()


TRACKER_MODULES = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}
"""Each tracker's recipe key (and `--<key>` flag): the module it imports and the package that provides it."""


def check_available(config: TrackingConfig) -> None:
    """Refuse before training starts when a tracker is asked for but its package is not installed."""
    for key, (module, package) in TRACKER_MODULES.items():
        if not getattr(config, key):
            continue
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(f"recipe key 'tracking.{key}' (--{key}) needs the {package!r} package, which "
                              f"is not installed ({error}); install it with `{INSTALL_HINT}`, or turn "
                              f"tracking.{key} off.") from error


def flat_params(recipe: Recipe) -> dict[str, str]:
    """The resolved recipe as dotted keys (`stages.1.lr`), each value as text: what MLflow stores."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            for index, item in enumerate(value):
                walk(f"{prefix}.{index}", item)
        else:
            flat[prefix] = str(value)

    walk("", recipe.to_dict())
    return flat


def numeric_columns(row: dict[str, Any]) -> dict[str, float]:
    """A history row's numeric values (the `weights` column, raw or ema, is text and is left out)."""
    return {key: float(value) for key, value in row.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


class RunTracker:
    """The trackers one run logs to, opened by `open_tracker`; each method logs to every one that is on."""

    def __init__(self, writer: Any | None, client: Any | None, mlflow_run_id: str | None) -> None:
        self.writer = writer
        self.client = client
        self.mlflow_run_id = mlflow_run_id

    def log_params(self, params: dict[str, str], recipe_yaml: str) -> None:
        """The run's parameters: MLflow params, and the recipe as text in TensorBoard."""
        if self.writer is not None:
            self.writer.add_text("recipe", "```yaml\n" + recipe_yaml + "\n```", 0)
        if self.client is not None:
            from mlflow.entities import Param

            items = [Param(key, value) for key, value in params.items()]
            for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.mlflow_run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Scalars at one step, under the same names in both viewers."""
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)
            self.writer.flush()
        if self.client is not None:
            from mlflow.entities import Metric

            stamp = int(time.time() * 1000)
            self.client.log_batch(self.mlflow_run_id,
                                  metrics=[Metric(key, value, stamp, step) for key, value in metrics.items()])

    def log_epoch(self, step: int, row: dict[str, Any]) -> None:
        """One `history.csv` row, at its 1-based position in the file."""
        self.log_metrics(numeric_columns(row), step)

    def log_figures(self, figures: Iterable[Path], folder: str) -> None:
        """PNG figures: TensorBoard images tagged `<folder>/<name>`, MLflow artifacts under `<folder>/`."""
        for path in figures:
            if self.writer is not None:
                from PIL import Image

                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
                self.writer.add_image(f"{folder}/{path.stem}", pixels, 0, dataformats="HWC")
            if self.client is not None:
                self.client.log_artifact(self.mlflow_run_id, str(path), folder)
        if self.writer is not None:
            self.writer.flush()

    def close(self, status: str = "FINISHED") -> None:
        """Flush TensorBoard's events and end the MLflow run with `status` (FINISHED, FAILED, KILLED)."""
        if self.writer is not None:
            self.writer.close()
        if self.client is not None:
            self.client.set_terminated(self.mlflow_run_id, status=status)


def open_tracker(run_dir: Path, config: TrackingConfig, first_step: int) -> RunTracker | None:
    """The run's trackers, or None when tracking is off (and on every rank but 0 under torchrun).

    `first_step` is the step the next epoch row gets (1 for a new run): TensorBoard hides events a stopped
    session logged at that step or later, and MLflow reopens the run recorded in run.json.
    """
    from lesionlab.training import distributed

    if not (config.tensorboard or config.mlflow) or not distributed.is_main():
        return None
    check_available(config)
    writer = None
    if config.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(tensorboard_dir(run_dir)), purge_step=first_step)
    client, run_id = None, None
    if config.mlflow:
        client, run_id = _mlflow_run(run_dir)
    return RunTracker(writer, client, run_id)


@contextlib.contextmanager
def stage_tracker(run_dir: Path, recipe: Recipe, committed: int) -> Iterator[RunTracker | None]:
    """The trackers a training stage logs its epochs to (None without any), closed as the stage ends:
    FINISHED, FAILED, or KILLED on an interrupt. A run's first stage logs its parameters first.

    `committed` is the number of epoch rows the run holds, so the stage's first row is logged at
    `committed + 1`.
    """
    tracker = open_tracker(run_dir, recipe.tracking, committed + 1)
    if tracker is None:
        yield None
        return
    if committed == 0:
        tracker.log_params(flat_params(recipe), recipe.to_yaml())
    try:
        yield tracker
    except BaseException as error:
        tracker.close("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    tracker.close()


def _mlflow_run(run_dir: Path) -> tuple[Any, str]:
    """The MLflow client and this run's MLflow run: the one run.json records, else a new one (recorded)."""
    from mlflow.tracking import MlflowClient

    payload = read_run_json(run_dir)
    recorded = payload.get("tracking", {}).get("mlflow", {})
    uri = recorded.get("tracking_uri") or mlflow_uri(run_dir)
    if uri.startswith("file:"):
        # MLflow 3 keeps its file store in maintenance mode and refuses it unless asked for by this variable;
        # a file store is what needs no server or database, so lesionlab asks for it.
        os.environ.setdefault(FILE_STORE_VARIABLE, "true")
    client = MlflowClient(tracking_uri=uri)
    if recorded.get("run_id"):
        client.update_run(recorded["run_id"], status="RUNNING")
        return client, recorded["run_id"]
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    run = client.create_run(experiment_id, run_name=run_dir.name, tags={"lesionlab.run_dir": str(run_dir)})
    payload["tracking"] = {**payload.get("tracking", {}),
                           "mlflow": {"tracking_uri": uri, "run_id": run.info.run_id,
                                      "experiment": EXPERIMENT}}
    atomic_write_json(run_dir / RUN_JSON, payload)
    return client, run.info.run_id


def log_evaluation(run_dir: Path, config: TrackingConfig, out_dir: Path, metrics: dict[str, Any]) -> None:
    """An evaluation's headline figures (as `<eval folder>/<metric>` scalars) and its PNG figures."""
    tracker = open_tracker(run_dir, config, committed_epochs(run_dir) + 1)
    if tracker is None:
        return
    folder = f"eval/{out_dir.name}"
    scalars = {f"{folder}/{key}": float(metrics[key])
               for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro", "nll", "ece")
               if isinstance(metrics.get(key), (int, float))}
    try:
        tracker.log_metrics(scalars, 0)
        tracker.log_figures(sorted((out_dir / "figures").glob("*.png")), folder)
    finally:
        tracker.close()


def committed_epochs(run_dir: Path) -> int:
    """How many epoch rows the run has committed (its resume state's history; 0 before the first epoch)."""
    state = RunDirectory(run_dir).state_json
    if not state.is_file():
        return 0
    return len(json.loads(state.read_text(encoding="utf-8"))["history"])
