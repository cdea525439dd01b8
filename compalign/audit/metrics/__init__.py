"""Audit metrics: the registry from a metric's name to its entry (compalign.audit.base.Metric).

Every metric runs in every audit, in this order (the comparison table's columns follow it). Each
is one module of this package holding its function, its options (keys of the `audit` section)
and its summary columns. Adding a metric: a module with an `ENTRY`, one line here, one test.
"""

from __future__ import annotations

from compalign.audit.base import Metric
from compalign.audit.metrics import (
    accuracy,
    attribution,
    auroc,
    calibration,
    class_fairness,
    groups,
    mismatches,
    reduction_factor,
)

METRICS: dict[str, Metric] = {
    "accuracy": accuracy.ENTRY,
    "mismatches": mismatches.ENTRY,
    "reduction_factor": reduction_factor.ENTRY,
    "class_fairness": class_fairness.ENTRY,
    "groups": groups.ENTRY,
    "auroc": auroc.ENTRY,
    "attribution": attribution.ENTRY,
    "calibration": calibration.ENTRY,
}

__all__ = ["METRICS", "Metric"]
