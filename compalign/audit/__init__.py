"""The audit of a model against its reference, assembled from the metrics registry.

`audit(inputs)` runs every metric of compalign.audit.metrics on one model's predictions and
returns its numbers, its per-example table and the files the metrics left; it needs neither
Prefect nor MLflow. compalign.audit.stats holds the statistics the metrics are built from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from compalign.audit.base import AuditInputs, AuditSettings, FigureData, ReferenceAudit
from compalign.audit.metrics import METRICS
from compalign.audit.stats import (
    bootstrap_indices,
    class_fairness,
    comparison_frame,
    count_interval,
    expected_calibration_error,
    mismatch_metrics,
    model_metrics,
    per_class_recall,
    percentile_interval,
    predictions_frame,
    reduction_factor,
    reduction_factor_interval,
)


@dataclass
class AuditResult:
    """One model's audit: its metrics, its per-example table (the predictions frame for the
    reference, the comparison with the reference for a compressed model) and the files its
    metrics made (name -> DataFrame, dict of arrays, or FigureData for the presentation layer
    to draw)."""

    metrics: dict[str, float]
    table: pd.DataFrame
    outputs: dict[str, Any]

    def write_outputs(self, directory: str | Path) -> None:
        """Write the files the metrics made into `directory` (`write_outputs`)."""
        write_outputs(self.outputs, directory)


def write_outputs(outputs: dict[str, Any], directory: str | Path) -> None:
    """Write the data files an audit's metrics made into `directory`: tables as Parquet, arrays
    as .npz. Figures are left to the presentation layer (compalign.report.figures.draw_figures)."""
    for name, value in outputs.items():
        path = Path(directory) / name
        if isinstance(value, pd.DataFrame):
            value.to_parquet(path, index=False)
        elif isinstance(value, dict):
            np.savez_compressed(path, **value)
        elif not isinstance(value, FigureData):
            raise TypeError(
                f"{name}: an audit output must be a DataFrame, a dict of arrays or FigureData"
            )


def audit(inputs: AuditInputs, on_metric: Callable[[str], None] | None = None) -> AuditResult:
    """Run every registered metric on `inputs`, in registry order; `on_metric(name)` is called
    as each starts (progress reports)."""
    metrics: dict[str, float] = {}
    for name, entry in METRICS.items():
        if on_metric is not None:
            on_metric(name)
        metrics.update(entry.run(inputs))
    table = inputs.table if inputs.compared else inputs.frame
    return AuditResult(metrics, table, inputs.outputs)


def summary_row(metrics: dict[str, float], labels: dict[str, str]) -> dict[str, Any]:
    """The comparison table's metric columns for one model, from each metric's `summary`."""
    row: dict[str, Any] = {}
    for entry in METRICS.values():
        row.update(entry.summary(metrics, labels))
    return row


__all__ = [
    "METRICS",
    "AuditInputs",
    "AuditResult",
    "AuditSettings",
    "FigureData",
    "ReferenceAudit",
    "audit",
    "bootstrap_indices",
    "class_fairness",
    "comparison_frame",
    "count_interval",
    "expected_calibration_error",
    "mismatch_metrics",
    "model_metrics",
    "per_class_recall",
    "percentile_interval",
    "predictions_frame",
    "reduction_factor",
    "reduction_factor_interval",
    "summary_row",
    "write_outputs",
]
