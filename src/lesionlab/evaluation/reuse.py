"""Evaluations a multi-run command (`lesionlab study`, `lesionlab cv`) reads back instead of repeating: an
evaluation folder on disk counts as current only for the same weights (the sha256 its temperature was fitted
for) and the same views. This is what makes rerunning a finished study or cross-validation cheap: only what
changed is measured again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lesionlab.evaluation.evaluate import EvaluationOptions, evaluate_run
from lesionlab.evaluation.view_logits import LOGITS_FILE
from lesionlab.io_utils import file_sha256
from lesionlab.models.checkpoint import BEST_STEM, WEIGHTS_SUFFIX


def current_evaluation(
    out_dir: Path, weights: Path, tta_views: tuple[str, ...] | None
) -> dict[str, Any] | None:
    """The metrics an earlier run of the study wrote in `out_dir`, when they belong to these exact weights
    (the sha256 their temperature was fitted for) and these views; None means evaluate again. This is what
    makes rerunning a finished study cheap: only what changed is measured again."""
    path = out_dir / "metrics.json"
    if not all((out_dir / name).is_file() for name in ("predictions.csv", LOGITS_FILE)) or not path.is_file():
        return None
    metrics = json.loads(path.read_text(encoding="utf-8"))
    evaluation = metrics.get("evaluation", {})
    fit = evaluation.get("temperature") or {}
    same_views = evaluation.get("tta_views") == (list(tta_views) if tta_views else None)
    if same_views and fit.get("checkpoint_sha256") == file_sha256(weights):
        return metrics
    return None


def part_scores(run_dir: Path, tta_views: tuple[str, ...] | None, stem: Path | None = None,
                folder_tag: str = "", metadata: bool = True) -> dict[str, dict[str, Any]]:
    """The metrics of one checkpoint on the validation and the test part (`eval/<part><folder_tag>`), with
    these views and the patient fields given (`metadata`) or withheld; read back where already on disk for
    these weights. Validation comes first: its evaluation fits the temperature the test part is scored
    with."""
    weights = (stem or run_dir / BEST_STEM).with_suffix(WEIGHTS_SUFFIX)
    scores = {}
    for part in ("val", "test"):
        out_dir = run_dir / "eval" / f"{part}{folder_tag}"
        scores[part] = current_evaluation(out_dir, weights, tta_views)
        if scores[part] is None:
            options = EvaluationOptions(
                split=part, tta_views=tta_views, checkpoint=stem, out_dir=out_dir, metadata=metadata
            )
            scores[part] = evaluate_run(run_dir, options).metrics
    return scores
