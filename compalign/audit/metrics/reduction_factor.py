"""`reduction_factor`: mismatches of plain `ce` fine-tuning at the same compression divided by
the model's own (Joseph et al., arXiv 2012.01604: "up to 4.1x fewer mismatches"), with paired
bootstrap intervals; `ce` is 1 against itself."""

from __future__ import annotations

import numpy as np

from compalign.audit.base import AuditInputs, Column, Metric, with_interval
from compalign.audit.stats import reduction_factor as factor
from compalign.audit.stats import reduction_factor_interval
from compalign.options import NoOptions

BASELINE_LOSS = "ce"
NAN = float("nan")
FACTORS = ("reduction_factor", "reduction_factor_ref_correct")


def reduction_factor(inputs: AuditInputs, options: NoOptions) -> dict[str, float]:
    """`reduction_factor` and `reduction_factor_ref_correct` with `_ci_low` / `_ci_high`, when
    the audit has the baseline's comparison table."""
    if not inputs.compared or inputs.baseline is None:
        return {}
    table, baseline = inputs.table, inputs.baseline
    if not baseline["example_id"].equals(table["example_id"]):
        raise ValueError("the ce baseline was audited on other examples")
    mismatch, base = table["mismatch"].to_numpy(), baseline["mismatch"].to_numpy()
    level = inputs.settings.confidence_level
    metrics = {}
    for name, keep in zip(FACTORS, (np.ones_like(base), inputs.reference_right), strict=True):
        metrics[name] = factor(base & keep, mismatch & keep)
        low, high = reduction_factor_interval(base & keep, mismatch & keep, inputs.resamples, level)
        metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = low, high
    return metrics


def summary(metrics, labels) -> dict[str, float]:
    itself = labels.get("loss") == BASELINE_LOSS  # the baseline against itself
    row = {}
    for name in FACTORS:
        for column in (name, f"{name}_ci_low", f"{name}_ci_high"):
            row[column] = 1.0 if itself else metrics.get(column, NAN)
    return row


ENTRY = Metric(
    reduction_factor,
    summary=summary,
    columns=(
        Column("reduction vs ce", lambda row: with_interval(row, "reduction_factor", 2)),
        Column("…ref. right ", lambda row: with_interval(row, "reduction_factor_ref_correct", 2)),
    ),
    headline=("reduction_factor",),
)
