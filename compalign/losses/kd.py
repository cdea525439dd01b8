"""`kd`: knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural
Network", eq. 2 with the T^2 gradient scaling of section 2)."""

from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F
from pydantic import Field

from compalign.losses.base import Loss, LossFn, as_two_class, distillation_kl
from compalign.options import Options


class KDOptions(Options):
    """Hinton knowledge distillation. T = 4, alpha = 0.9 are the common CIFAR choices (e.g.
    Tian et al. 2020, CRD)."""

    temperature: Annotated[float, Field(gt=0.0)] = 4.0
    """softens both models' logits"""
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9
    """weight of the distillation term (1 - alpha: cross-entropy)"""


def knowledge_distillation(temperature: float, alpha: float) -> LossFn:
    """(1 - alpha) * CE(z_c, y) + alpha * T^2 * KL(p(z_r/T) || p(z_c/T))."""

    def loss(compressed_logits, reference_logits, labels):
        hard = F.cross_entropy(as_two_class(compressed_logits), labels)
        soft = distillation_kl(compressed_logits, reference_logits, temperature)
        return (1.0 - alpha) * hard + alpha * soft

    return loss


ENTRY = Loss(
    knowledge_distillation,
    KDOptions,
    tuning_grid=({"alpha": 0.5}, {"alpha": 0.99}, {"temperature": 2.0}, {"temperature": 8.0}),
)
