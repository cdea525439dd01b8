"""What every alignment loss shares: its registry entry type and the binary-logit helpers.

A loss is `(compressed_logits, reference_logits, labels) -> scalar`. Reference logits come from
the frozen reference model (computed under `torch.no_grad`), so gradients reach only the
compressed model. A task with a single logit per example (binary, sigmoid) is handled through
its equivalent two-logit form [0, z]: softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from compalign.options import NoOptions, Options

LossFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Loss:
    """A registry entry: the factory, its options (the one place its defaults are written) and
    the overrides `align.tune` tries on top of the configured options (compalign.tuning);
    `uses_reference`: whether it reads the reference's logits (False: a training loop may pass
    None and skip the reference's forward passes)."""

    factory: Callable[..., LossFn]
    options: type[Options] = NoOptions
    tuning_grid: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    uses_reference: bool = True

    def __call__(self, **hyperparameters: Any) -> LossFn:
        """The loss function with `hyperparameters` (validated; missing ones take defaults)."""
        return self.factory(**self.options(**hyperparameters).model_dump())

    def defaults(self) -> dict[str, Any]:
        return self.options().model_dump()


def as_two_class(logits: torch.Tensor) -> torch.Tensor:
    """[N] or [N, 1] binary logits -> [N, 2] logits with the same probabilities; others unchanged."""
    if logits.dim() == 1:
        logits = logits[:, None]
    if logits.shape[1] == 1:
        return torch.cat([torch.zeros_like(logits), logits], dim=1)
    return logits


def distillation_kl(
    compressed_logits: torch.Tensor, reference_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(p(z_r / T) || p(z_c / T)), mean over the batch (Hinton et al. 2015)."""
    log_p_compressed = F.log_softmax(as_two_class(compressed_logits) / temperature, dim=1)
    log_p_reference = F.log_softmax(as_two_class(reference_logits) / temperature, dim=1)
    kl = F.kl_div(log_p_compressed, log_p_reference, log_target=True, reduction="batchmean")
    return temperature**2 * kl
