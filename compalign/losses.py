"""Alignment losses: a registry from the name used in params.yaml to a factory.

`LOSSES[name](**hyperparameters)` returns a callable
`(compressed_logits, reference_logits, labels) -> scalar loss`. Reference logits come from the
frozen reference model (computed under `torch.no_grad`), so gradients reach only the compressed
model. A task with a single logit per example (binary, sigmoid) is handled by every loss through
its equivalent two-logit form [0, z]: softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


def as_two_class(logits: torch.Tensor) -> torch.Tensor:
    """[N] or [N, 1] binary logits -> [N, 2] logits with the same probabilities; others unchanged."""
    if logits.dim() == 1:
        logits = logits[:, None]
    if logits.shape[1] == 1:
        return torch.cat([torch.zeros_like(logits), logits], dim=1)
    return logits


def cross_entropy() -> LossFn:
    """Plain cross-entropy with the labels; the reference is ignored (the baseline)."""

    def loss(compressed_logits, reference_logits, labels):
        return F.cross_entropy(as_two_class(compressed_logits), labels)

    return loss


def distillation_kl(
    compressed_logits: torch.Tensor, reference_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(p(z_r / T) || p(z_c / T)), mean over the batch (Hinton et al. 2015)."""
    log_p_compressed = F.log_softmax(as_two_class(compressed_logits) / temperature, dim=1)
    log_p_reference = F.log_softmax(as_two_class(reference_logits) / temperature, dim=1)
    kl = F.kl_div(log_p_compressed, log_p_reference, log_target=True, reduction="batchmean")
    return temperature**2 * kl


def knowledge_distillation(temperature: float = 4.0, alpha: float = 0.9) -> LossFn:
    """Hinton et al. (2015): (1 - alpha) * CE(z_c, y) + alpha * T^2 * KL(p(z_r/T) || p(z_c/T)).

    Defaults T=4, alpha=0.9 are the common CIFAR choices (e.g. Tian et al. 2020, CRD).
    """

    def loss(compressed_logits, reference_logits, labels):
        hard = F.cross_entropy(as_two_class(compressed_logits), labels)
        soft = distillation_kl(compressed_logits, reference_logits, temperature)
        return (1.0 - alpha) * hard + alpha * soft

    return loss


LOSSES: dict[str, Callable[..., LossFn]] = {
    "ce": cross_entropy,
    "kd": knowledge_distillation,
}
