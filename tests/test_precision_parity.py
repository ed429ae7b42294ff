"""The bf16 parity verdict is recorded in run.json, so it must be plain JSON also when it fails."""

from __future__ import annotations

import json

import numpy as np

from lesionlab.precision import parity_from_logits


def test_an_undecided_model_fails_parity_with_a_json_verdict() -> None:
    logits = np.zeros((8, 7), dtype=np.float32)  # every image a tie: nothing decided, so bf16 is refused
    check = parity_from_logits(logits, logits, np.arange(8) % 7)
    assert check.passed is False
    assert json.loads(json.dumps(check.to_dict()))["passed"] is False
