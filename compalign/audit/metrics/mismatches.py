"""`mismatches`: test examples on which the compressed model's label differs from the
reference's (Joseph et al., arXiv 2012.01604, section 3), all and where the reference is right,
with paired bootstrap intervals over the test examples."""

from __future__ import annotations

from compalign.audit.base import AuditInputs, Column, Metric, with_interval
from compalign.audit.stats import count_interval, mismatch_metrics
from compalign.options import NoOptions

NAN = float("nan")
COUNTS = ("mismatches", "mismatches_ref_correct")


def mismatches(inputs: AuditInputs, options: NoOptions) -> dict[str, float]:
    """`mismatches`, `mismatches_ref_correct`, `mismatch_rate`, `agreement`, and the intervals
    `<count>_ci_low` / `_ci_high` at `audit.confidence_level`."""
    if not inputs.compared:
        return {}
    metrics = mismatch_metrics(inputs.reference.frame, inputs.frame)
    mismatch = inputs.table["mismatch"].to_numpy()
    level = inputs.settings.confidence_level
    for name, indicator in zip(COUNTS, (mismatch, mismatch & inputs.reference_right), strict=True):
        metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = count_interval(
            indicator, inputs.resamples, level
        )
    return metrics


def summary(metrics, labels) -> dict[str, float]:
    row = {}
    for name in COUNTS:
        for column in (name, f"{name}_ci_low", f"{name}_ci_high"):
            row[column] = metrics.get(column, NAN)
    return row


ENTRY = Metric(
    mismatches,
    summary=summary,
    columns=(
        Column("mismatches [95% CI]", lambda row: with_interval(row, "mismatches", 0)),
        Column("…ref. right", lambda row: with_interval(row, "mismatches_ref_correct", 0)),
    ),
    headline=COUNTS,
)
