"""Ensemble evaluation: the members' probabilities averaged, refusals, and the threshold fitted on val."""

from __future__ import annotations

import numpy as np
import pytest

from lesionlab.classes import CLASS_CODES
from lesionlab.errors import ConfigError
from lesionlab.evaluation.ensemble import ensemble_rule, mean_predictions
from lesionlab.evaluation.predictions import Predictions
from lesionlab.malignancy import FALLBACK_RULE


def predictions(seed: int, ids: tuple[str, ...] = ("a", "b", "c", "d")) -> Predictions:
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.ones(len(CLASS_CODES)), size=len(ids))
    return Predictions(ids, (None,) * len(ids), np.array([0, 1, 4, 5])[: len(ids)], probabilities,
                       tuple(CLASS_CODES))


def test_the_ensemble_predicts_the_mean_of_its_members() -> None:
    first, second = predictions(0), predictions(1)
    mean = mean_predictions([first, second], ["first", "second"])
    assert np.allclose(mean.probabilities, (first.probabilities + second.probabilities) / 2)
    assert mean.image_ids == first.image_ids and np.array_equal(mean.labels, first.labels)


def test_members_scored_on_other_images_are_refused() -> None:
    with pytest.raises(ConfigError, match="second"):
        mean_predictions([predictions(0), predictions(1, ("a", "b", "c", "x"))], ["first", "second"])


def test_the_threshold_comes_from_validation_or_is_the_stated_fallback() -> None:
    assert ensemble_rule(None, 0.9) == FALLBACK_RULE
    rule = ensemble_rule(predictions(2), 0.9)
    assert rule.fit is not None and rule.fit.fitted_on == "val" and rule.fit.sensitivity >= 0.9
