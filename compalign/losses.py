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


def label_preserving(
    w_ce: float = 1.0,
    w_kd: float = 1.0,
    w_logit: float = 0.1,
    w_mm: float = 1.0,
    temperature: float = 4.0,
) -> LossFn:
    """Label-preservation-aware multi-part loss, after Joseph et al. (arXiv 2012.01604):

        w_ce * CE(z_c, y) + w_kd * T^2 * KL(p(z_r/T) || p(z_c/T)) + w_logit * MSE(z_c, z_r)
        + w_mm * mean over mismatched examples (argmax z_c != argmax z_r) of CE(z_c, argmax z_r)

    An implementation of the paper's idea, not a copy of its weights (they are not reproduced
    here). Defaults w_ce = 1, w_kd = 1, w_logit = 0.1, w_mm = 1, T = 4 were chosen on the
    default profile's *validation* split (digits, small CNN, global magnitude pruning at 95/97/98%
    sparsity, 10 epochs of fine-tuning): of five weightings tried, they left the fewest
    validation mismatches in total (5, against 8 with the logit term off, 12-15 with a smaller
    label weight or a larger mismatch weight, 13 without distillation), at validation
    accuracy equal to or above plain cross-entropy's. The label term keeps accuracy, distillation carries the reference's
    ranking of the other classes, the small logit term keeps the logits' scale close, and the
    mismatch term pulls back exactly the examples whose label has flipped. `align.tune` repeats
    such a search for any run.
    """

    def loss(compressed_logits, reference_logits, labels):
        compressed, reference = as_two_class(compressed_logits), as_two_class(reference_logits)
        total = w_ce * F.cross_entropy(compressed, labels)
        if w_kd:
            total = total + w_kd * distillation_kl(compressed, reference, temperature)
        if w_logit:
            total = total + w_logit * F.mse_loss(compressed_logits, reference_logits)
        reference_labels = reference.argmax(dim=1)
        mismatched = compressed.argmax(dim=1) != reference_labels
        if w_mm and bool(mismatched.any()):
            flipped = F.cross_entropy(compressed[mismatched], reference_labels[mismatched])
            total = total + w_mm * flipped
        return total

    return loss


def performance_weights(
    reference_logits: torch.Tensor, labels: torch.Tensor, gamma: float, m: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Meyer & Wong (arXiv 2211.10285): per-example weights w_i = m + (1 - m)(1 - p_i)^gamma and
    corrected targets t_i, both from the frozen reference.

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


def performance_weighted(gamma: float = 5.0, m: float = 0.75) -> LossFn:
    """Performance-weighted loss of Meyer & Wong (arXiv 2211.10285):
    mean_i w_i * CE_soft(z_c_i, t_i) with weights and targets from `performance_weights`.

    Defaults gamma = 5, m = 0.75 are the authors' argparse defaults.
    """

    def loss(compressed_logits, reference_logits, labels):
        weights, targets = performance_weights(reference_logits, labels, gamma, m)
        log_probabilities = F.log_softmax(as_two_class(compressed_logits), dim=1)
        soft_cross_entropy = -(targets * log_probabilities).sum(dim=1)
        return (weights * soft_cross_entropy).mean()

    return loss


LOSSES: dict[str, Callable[..., LossFn]] = {
    "ce": cross_entropy,
    "kd": knowledge_distillation,
    "label_preserving": label_preserving,
    "pw": performance_weighted,
}
