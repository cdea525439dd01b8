"""`pw`: the performance-weighted loss of Meyer & Wong, "A Fair Loss Function for Network
Pruning" (arXiv 2211.10285, section 3)."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from compalign.losses.base import Loss, LossFn, as_two_class
from compalign.options import Options


class PerformanceWeightedOptions(Options):
    """gamma = 5, m = 0.75 are the authors' argparse defaults; their experiments set their own
    (m in [0.3, 0.95], gamma in [0.5, 5])."""

    gamma: Annotated[float, Field(ge=0.0)] = 5.0
    """w_i = m + (1 - m)(1 - p_i)^gamma: how steeply an example the reference finds hard (low p_i,
    its probability of the true class) gains weight"""
    m: Annotated[float, Field(ge=0.0, le=1.0)] = 0.75
    """the smallest weight, of an example the reference is sure of"""


def performance_weights(
    reference_logits: torch.Tensor, labels: torch.Tensor, gamma: float, m: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example weights w_i = m + (1 - m)(1 - p_i)^gamma and corrected targets t_i, both from
    the frozen reference.

    p_i is the reference's probability of the true class; t_i is the reference's distribution
    where it predicts y_i correctly and one-hot(y_i) where it does not.
    """
    reference = as_two_class(reference_logits).detach()
    probabilities = torch.softmax(reference, dim=1)
    true_class = probabilities.gather(1, labels[:, None]).squeeze(1)
    weights = m + (1.0 - m) * (1.0 - true_class) ** gamma
    correct = reference.argmax(dim=1) == labels
    one_hot = F.one_hot(labels, probabilities.shape[1]).to(probabilities.dtype)
    targets = torch.where(correct[:, None], probabilities, one_hot)
    return weights, targets


def performance_weighted(gamma: float, m: float) -> LossFn:
    """mean_i w_i * CE_soft(z_c_i, t_i), with w_i = m + (1 - m)(1 - p_i)^gamma (p_i: the
    reference's probability of the true class) and t_i the reference's distribution where it is
    right, one-hot(y_i) where it is wrong (`performance_weights`)."""

    def loss(compressed_logits, reference_logits, labels):
        weights, targets = performance_weights(reference_logits, labels, gamma, m)
        log_probabilities = F.log_softmax(as_two_class(compressed_logits), dim=1)
        soft_cross_entropy = -(targets * log_probabilities).sum(dim=1)
        return (weights * soft_cross_entropy).mean()

    return loss


ENTRY = Loss(
    performance_weighted,
    PerformanceWeightedOptions,
    # the authors' per-experiment ranges
    tuning_grid=({"gamma": 2.0}, {"gamma": 1.0, "m": 0.5}, {"gamma": 0.5, "m": 0.9}, {"m": 0.3}),
)
