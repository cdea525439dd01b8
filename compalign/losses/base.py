"""What every alignment loss shares: its registry entry type and the binary-logit helpers.

A loss is `(compressed_logits, reference_logits, labels) -> scalar`. A loss whose behaviour
changes during training (SoftAdapt's weights) is an `AdaptiveLoss`: the training loop tells it
where each epoch ends and keeps its state in resume points. Reference logits come from
the frozen reference model (computed under `torch.no_grad`), so gradients reach only the
compressed model. A task with a single logit per example (binary, sigmoid) is handled through
its equivalent two-logit form [0, z]: softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from compalign.options import NoOptions, Options

# The name in `align.losses` of no loss at all: the compressed model is audited as it is, without
# fine-tuning (what every loss is compared with)
NO_FINE_TUNING = "none"

LossFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


class AdaptiveLoss(ABC):
    """A loss with state across epochs. `compalign.train.fit` calls `on_epoch_end(epoch)` after
    each epoch and adds the numbers it returns to the epoch's record (log lines, progress),
    saves `state_dict()` in its resume points and restores it with `load_state_dict`;
    `trajectory()` is the per-epoch record as {name: [value of epoch 1, 2, ...]}."""

    @abstractmethod
    def __call__(
        self,
        compressed_logits: torch.Tensor,
        reference_logits: torch.Tensor | None,
        labels: torch.Tensor,
    ) -> torch.Tensor: ...

    @abstractmethod
    def on_epoch_end(self, epoch: int) -> dict[str, float]: ...

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @abstractmethod
    def trajectory(self) -> dict[str, list[float]]: ...


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
