"""Fairness across groups (sensitive attributes such as CelebA's `Male`), with fairlearn.

Per group: accuracy, and AUROC for a two-class task; per attribute: the largest difference
between its groups (fairlearn's `MetricFrame.difference()`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from sklearn.metrics import accuracy_score, roc_auc_score


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC, NaN for a group that holds only one class (it is undefined there)."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def group_metrics(frame: pd.DataFrame, groups: pd.DataFrame) -> dict[str, float]:
    """Per-group accuracy (and AUROC when `frame` has positive_probability) for each column of
    `groups`, and each column's gap: `group.<column>.<value>.accuracy`,
    `group.<column>.accuracy_gap` (max - min over its groups), likewise `auroc`."""
    metrics: dict[str, float] = {}
    labels = frame["label"].to_numpy()
    for column in groups.columns:
        sensitive = groups[column].to_numpy()
        frames = {
            "accuracy": MetricFrame(
                metrics=accuracy_score,
                y_true=labels,
                y_pred=frame["prediction"].to_numpy(),
                sensitive_features=sensitive,
            )
        }
        if "positive_probability" in frame:
            frames["auroc"] = MetricFrame(
                metrics=_auroc,
                y_true=labels,
                y_pred=frame["positive_probability"].to_numpy(),
                sensitive_features=sensitive,
            )
        for name, metric_frame in frames.items():
            for value, result in metric_frame.by_group.items():
                metrics[f"group.{column}.{value}.{name}"] = float(result)
            metrics[f"group.{column}.{name}_gap"] = float(metric_frame.difference())
    return metrics


def group_changes(reference: dict[str, float], compressed: dict[str, float]) -> dict[str, float]:
    """`<metric>_change` = compressed - reference for every group metric both have."""
    return {
        f"{name}_change": compressed[name] - reference[name]
        for name in compressed
        if name in reference
    }
