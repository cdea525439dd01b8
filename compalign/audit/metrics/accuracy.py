"""`accuracy`: top-1 accuracy and per-class recall of every model, and the change in accuracy
of a compressed one."""

from __future__ import annotations

from compalign.audit.base import AuditInputs, Column, Metric, number
from compalign.audit.stats import model_metrics
from compalign.options import NoOptions

NAN = float("nan")


def accuracy(inputs: AuditInputs, options: NoOptions) -> dict[str, float]:
    """`accuracy`, `recall.<class>`; compared: `accuracy_change` (compressed - reference)."""
    metrics = model_metrics(inputs.frame, inputs.class_names)
    if inputs.compared:
        metrics["accuracy_change"] = metrics["accuracy"] - inputs.reference.metrics["accuracy"]
    return metrics


ENTRY = Metric(
    accuracy,
    summary=lambda metrics, labels: {
        "accuracy": metrics.get("accuracy", NAN),
        "accuracy_change": metrics.get("accuracy_change", NAN),
    },
    columns=(
        Column("accuracy", lambda row: number(row.accuracy, 4)),
        Column("Δ acc.", lambda row: f"{row.accuracy_change:+.4f}"),
    ),
    headline=("accuracy", "accuracy_change"),
)
