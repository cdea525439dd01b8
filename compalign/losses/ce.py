"""`ce`: plain cross-entropy with the labels, the reference ignored (the baseline of the
reduction factors)."""

from __future__ import annotations

import torch.nn.functional as F

from compalign.losses.base import Loss, LossFn, as_two_class


def cross_entropy() -> LossFn:
    """CE(z_c, y)."""

    def loss(compressed_logits, reference_logits, labels):
        return F.cross_entropy(as_two_class(compressed_logits), labels)

    return loss


ENTRY = Loss(cross_entropy, uses_reference=False)
