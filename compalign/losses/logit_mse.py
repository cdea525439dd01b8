"""`logit_mse`: mean squared error between the compressed and the reference model's logits, the
logit-matching distillation baseline (Ba & Caruana, "Do Deep Nets Really Need to be Deep?",
NeurIPS 2014, eq. 1)."""

from __future__ import annotations

import torch.nn.functional as F

from compalign.losses.base import Loss, LossFn, as_two_class


def logit_mse() -> LossFn:
    """mean over the batch and classes of (z_c - z_r)^2; the labels play no part."""

    def loss(compressed_logits, reference_logits, labels):
        return F.mse_loss(as_two_class(compressed_logits), as_two_class(reference_logits))

    return loss


ENTRY = Loss(logit_mse)
