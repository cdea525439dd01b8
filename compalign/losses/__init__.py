"""Alignment losses: the registry from the name used in params.yaml to its entry.

`LOSSES[name](**hyperparameters)` returns `(compressed_logits, reference_logits, labels) -> loss`
(an `AdaptiveLoss` where the loss changes during training: `label_preserving` with SoftAdapt).
Each loss is one module of this package holding its function, its options (compalign.options)
and its tuning grid (compalign.losses.base.Loss); `align.<name>` in params.yaml is built from the
options. Adding a loss: a module with an `ENTRY`, one line here, one test.
"""

from __future__ import annotations

from compalign.losses import ce, focal_distillation, kd, label_preserving, logit_mse, pw
from compalign.losses.base import AdaptiveLoss, Loss, LossFn, as_two_class, distillation_kl
from compalign.losses.pw import performance_weights

LOSSES: dict[str, Loss] = {
    "ce": ce.ENTRY,
    "kd": kd.ENTRY,
    "label_preserving": label_preserving.ENTRY,
    "pw": pw.ENTRY,
    "logit_mse": logit_mse.ENTRY,
    "focal_distillation": focal_distillation.ENTRY,
}

__all__ = [
    "LOSSES",
    "AdaptiveLoss",
    "Loss",
    "LossFn",
    "as_two_class",
    "distillation_kl",
    "performance_weights",
]
