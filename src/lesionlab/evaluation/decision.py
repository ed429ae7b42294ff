"""Post-hoc decision rules over a model's class probabilities: balanced class offsets and lesion averaging.

Class offsets. A model trained on re-weighted data still leans towards some classes, and its argmax is not
the decision that maximises balanced accuracy (mean per-class recall). Logit adjustment (Menon et al.,
"Long-tail learning via logit adjustment", ICLR 2021) shifts each class's log-probability by one offset.
Here the offsets are fitted on the validation part by minimising the class-balanced negative log-likelihood
(each class's images weigh 1 / its count). That is convex in the offsets and, unlike searching the offsets
for the best balanced accuracy directly, smooth enough not to chase the handful of df and vasc images a
validation part holds. A small ridge keeps the offset of a class absent from the fit finite. The offsets
change decisions, so their validation score must not be read in-sample: `out_of_fold_offsets` scores them on
lesion-grouped folds that the offsets were not fitted on.

Lesion averaging. HAM10000 often holds several images of one lesion; where a user has them, averaging their
probabilities gives one decision per lesion. It assumes the lesion ids are known at prediction time, so it is
reported as its own setting, never as the per-image headline.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold
from torch.nn import functional

from lesionlab.class_offsets import PROBABILITY_FLOOR, apply_class_offsets
from lesionlab.evaluation.metrics import cluster_ids
from lesionlab.evaluation.predictions import Predictions

OFFSET_RIDGE = 1e-3
OFFSET_FOLDS = 5
OFFSET_SEED = 0


def fit_class_offsets(
    probabilities: np.ndarray, labels: np.ndarray, ridge: float = OFFSET_RIDGE
) -> np.ndarray:
    """Per-class log-probability offsets (summing to zero) that minimise the class-balanced NLL of `labels`
    under softmax(log p + offsets)."""
    log_probabilities = torch.as_tensor(
        np.log(np.maximum(probabilities, PROBABILITY_FLOOR)), dtype=torch.float64
    )
    label_tensor = torch.as_tensor(labels, dtype=torch.long)
    num_classes = probabilities.shape[1]
    counts = torch.bincount(label_tensor, minlength=num_classes).to(torch.float64)
    weights = torch.where(counts > 0, 1.0 / counts.clamp(min=1.0), torch.zeros_like(counts))
    weights = weights / weights[counts > 0].sum()
    offsets = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([offsets], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        losses = functional.cross_entropy(log_probabilities + offsets, label_tensor, reduction="none")
        loss = (losses * weights[label_tensor]).sum() + ridge * offsets.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = offsets.detach().numpy()
    return fitted - fitted.mean()


def out_of_fold_offsets(
    predictions: Predictions, folds: int = OFFSET_FOLDS, seed: int = OFFSET_SEED
) -> Predictions:
    """Each image's probabilities adjusted by offsets fitted on the other folds (lesion-grouped, stratified):
    an honest validation score for a rule that is itself fitted on validation data."""
    groups, _ = cluster_ids(predictions.image_ids, predictions.lesion_ids)
    present = np.bincount(predictions.labels)
    smallest_class = int(present[present > 0].min()) if present.any() else 0
    folds = max(2, min(folds, smallest_class))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    adjusted = np.empty_like(predictions.probabilities)
    for fit_index, held_out in splitter.split(predictions.probabilities, predictions.labels, groups):
        offsets = fit_class_offsets(predictions.probabilities[fit_index], predictions.labels[fit_index])
        adjusted[held_out] = apply_class_offsets(predictions.probabilities[held_out], offsets)
    return predictions.with_probabilities(adjusted)


def lesion_mean(predictions: Predictions) -> Predictions:
    """Every image's probabilities replaced by the mean over the images of its lesion (an image without a
    lesion id stands alone)."""
    groups, _ = cluster_ids(predictions.image_ids, predictions.lesion_ids)
    sums = np.zeros((int(groups.max()) + 1, predictions.probabilities.shape[1]))
    np.add.at(sums, groups, predictions.probabilities)
    counts = np.bincount(groups).astype(float)
    return predictions.with_probabilities(sums[groups] / counts[groups, None])
