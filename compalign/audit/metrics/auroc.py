"""`auroc`: area under the ROC curve overall, per class and per group, as Meyer & Wong report it
(arXiv 2211.10285; their prune/evaluate.py: `roc_auc_score(..., multi_class='ovr')`, per class
with `average=None`), and how compression changed each.

One-vs-rest: a class's AUROC separates it from every other class by the model's probability of
it; the model's AUROC is their mean over classes (for two classes, the AUROC of the positive
probability). Within a group, only the classes with both members and non-members there count
(CIFAR-10's "rare" digits hold only two classes); a group's gap is max - min over its values.
"""

from __future__ import annotations

import numpy as np
import torch

from compalign.audit.base import AuditInputs, Column, Metric, number
from compalign.audit.metrics.groups import GroupOptions, selected_groups

NAN = float("nan")
# every model's class probabilities on the test split, in the predictions frame's order: what
# `compalign reproduce` judges AUROC from (paired across models on the same examples)
PROBABILITIES_FILE = "probabilities.npz"


def probabilities(logits: torch.Tensor) -> np.ndarray:
    """[N, K] class probabilities: softmax, or for one logit (binary) sigmoid as two columns."""
    logits = logits.float()
    if logits.shape[1] == 1:
        positive = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - positive, positive], dim=1).numpy().astype(np.float64)
    return torch.softmax(logits, dim=1).numpy().astype(np.float64)


def class_aurocs(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """One-vs-rest AUROC of each class (NaN where the examples hold only that class or none,
    or where the model's scores are not finite: a diverged model has no ranking to judge)."""
    from sklearn.metrics import roc_auc_score  # here, not at import: a second a run may not need

    result = np.full(scores.shape[1], NAN)
    for index in range(scores.shape[1]):
        positive = labels == index
        if positive.any() and not positive.all() and np.isfinite(scores[:, index]).all():
            result[index] = roc_auc_score(positive, scores[:, index])
    return result


def model_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The AUROC of a model: of the positive probability for two classes, else the mean of the
    one-vs-rest AUROCs (sklearn's `multi_class='ovr'`, macro average)."""
    if scores.shape[1] == 2:
        values = class_aurocs(labels, scores)[1:]
    else:
        values = class_aurocs(labels, scores)
    return float(np.nanmean(values)) if np.isfinite(values).any() else NAN


def _logits(inputs: AuditInputs) -> torch.Tensor | None:
    if inputs.logits is not None:
        return inputs.logits
    if inputs.model is None or inputs.images is None:
        return None
    with torch.no_grad():
        model = inputs.model.to(inputs.device).eval()
        images = inputs.normalise(inputs.images).to(inputs.device)
        return model(images).float().cpu()


def auroc(inputs: AuditInputs, options: GroupOptions) -> dict[str, float]:
    """`auroc`, `auroc.class.<class>` (more than two classes), `auroc.group.<column>.<value>`,
    `auroc.group.<column>.gap`; compared: each one's `_change`, `worst_class_auroc_change`.
    Output: the class probabilities (PROBABILITIES_FILE)."""
    logits = _logits(inputs)
    if logits is None:
        return {}
    labels = inputs.frame["label"].to_numpy()
    scores = probabilities(logits)
    inputs.outputs[PROBABILITIES_FILE] = {"probabilities": scores.astype(np.float32)}
    metrics = {"auroc": model_auroc(labels, scores)}
    if scores.shape[1] > 2:
        for name, value in zip(inputs.class_names, class_aurocs(labels, scores), strict=True):
            metrics[f"auroc.class.{name}"] = float(value)
    groups = selected_groups(inputs.groups, options.groups)
    for column in groups.columns:
        sensitive = groups[column].to_numpy()
        values = []
        for value in np.unique(sensitive):
            member = sensitive == value
            result = model_auroc(labels[member], scores[member])
            metrics[f"auroc.group.{column}.{value}"] = result
            values.append(result)
        finite = [v for v in values if np.isfinite(v)]
        metrics[f"auroc.group.{column}.gap"] = max(finite) - min(finite) if finite else NAN
    if inputs.compared:
        before = inputs.reference.metrics
        for name in [key for key in metrics if key in before]:
            metrics[f"{name}_change"] = metrics[name] - before[name]
        changes = [
            value
            for key, value in metrics.items()
            if key.startswith("auroc.class.") and key.endswith("_change") and np.isfinite(value)
        ]
        metrics["worst_class_auroc_change"] = min(changes) if changes else NAN
    return metrics


def summary(metrics, labels) -> dict[str, float]:
    """The model's AUROC, its change, the worst class's change and the group AUROC gap's change
    (the group column whose gap changed most)."""
    gaps = {
        name.split(".")[2]: value
        for name, value in metrics.items()
        if name.startswith("auroc.group.") and name.endswith(".gap_change")
    }
    attribute = max(gaps, key=lambda key: abs(gaps[key])) if gaps else None
    return {
        "auroc": metrics.get("auroc", NAN),
        "auroc_change": metrics.get("auroc_change", NAN),
        "worst_class_auroc_change": metrics.get("worst_class_auroc_change", NAN),
        "group_auroc_gap_change": gaps[attribute] if attribute else NAN,
    }


ENTRY = Metric(
    auroc,
    GroupOptions,
    summary=summary,
    columns=(
        Column("AUROC", lambda row: number(row.auroc, 4)),
        Column("worst class ΔAUROC", lambda row: number(row.worst_class_auroc_change, 4)),
        Column("group AUROC gap Δ", lambda row: number(row.group_auroc_gap_change, 4)),
    ),
)
