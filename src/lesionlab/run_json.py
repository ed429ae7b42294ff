"""The one reader of a run's `run.json` (dataset location, split facts, status, sessions, release plan,
distillation teachers), shared by training, evaluation and the release flow."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lesionlab.errors import CheckpointError

RUN_JSON = "run.json"


def read_run_json(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's `run.json`, or a clear error naming the file when it is missing or damaged."""
    path = Path(run_dir) / RUN_JSON
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise CheckpointError(f"{path}: missing; pass a run directory made by `lesionlab train`.") from error
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}); the run directory is damaged.") from error
