"""`class_fairness`: how compression changed each class's recall (Hooker et al., arXiv
1911.05248: compression disparately impacts some classes), the worst class's change, and the
max-min recall gap."""

from __future__ import annotations

from compalign.audit.base import AuditInputs, Column, Metric, number
from compalign.audit.stats import class_fairness as class_changes
from compalign.options import NoOptions

NAN = float("nan")


def class_fairness(inputs: AuditInputs, options: NoOptions) -> dict[str, float]:
    """`reference_recall.<class>`, `recall_change.<class>`, `worst_class_recall_change`,
    `worst_class_index`, `recall_gap`, `recall_gap_reference`, `recall_gap_change`."""
    if not inputs.compared:
        return {}
    return class_changes(inputs.reference.frame, inputs.frame, inputs.class_names)


ENTRY = Metric(
    class_fairness,
    summary=lambda metrics, labels: {
        "worst_class_recall_change": metrics.get("worst_class_recall_change", NAN)
    },
    columns=(Column("worst class Δ", lambda row: number(row.worst_class_recall_change, 3)),),
)
