"""`groups`: accuracy (and AUROC for two classes) per group of each group column, the largest gap
between a column's groups, and how compression changed it (Meyer & Wong, arXiv 2211.10285: the
bias pruning adds to subgroups). Per-group numbers come from fairlearn's MetricFrame.

So that "the gap grew" can be told from noise, the change of the accuracy gap has a paired
bootstrap interval over the test examples (the audit's shared resamples: the reference and every
compressed model are resampled alike), and so has its difference from the `ce` model's change at
the same compression (`accuracy_gap_change_vs_ce`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from compalign.audit.base import AuditInputs, Column, Metric, with_interval
from compalign.audit.stats import percentile_interval
from compalign.errors import UserError
from compalign.options import Options

NAN = float("nan")


class GroupOptions(Options):
    """Which group columns to audit."""

    groups: list[str] | None = None
    """group columns to audit (null: all the dataset has)"""


def selected_groups(groups: pd.DataFrame, wanted: list[str] | None) -> pd.DataFrame:
    """The group columns to audit: `wanted`, or every group column of the dataset."""
    available = list(groups.columns)
    wanted = available if wanted is None else wanted
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise UserError(
            f"audit.groups: {missing} are not group columns of the prepared dataset "
            f"(it has {available or 'none'}; add some with data.label_groups)"
        )
    return groups[wanted]


def group_fairness(inputs: AuditInputs, options: GroupOptions) -> dict[str, float]:
    """`group.<column>.<value>.accuracy`, `group.<column>.accuracy_gap` (likewise `auroc`);
    compared: each one's `_change`."""
    from compalign.fairness import group_changes, group_metrics  # fairlearn: when used

    groups = selected_groups(inputs.groups, options.groups)
    metrics = group_metrics(inputs.frame, groups)
    if inputs.compared:
        metrics.update(group_changes(dict(inputs.reference.metrics), dict(metrics)))
        metrics.update(gap_intervals(inputs, groups))
    return metrics


def bootstrap_gaps(correct: np.ndarray, sensitive: np.ndarray, resamples: np.ndarray) -> np.ndarray:
    """The accuracy gap (max - min over groups) on every bootstrap resample [S] of the examples;
    a group missing from a resample is left out of that resample's gap."""
    accuracies = []
    for value in np.unique(sensitive):
        member = (sensitive == value).astype(np.int32)
        hits = (member * correct.astype(np.int32))[resamples].sum(axis=1)
        sizes = member[resamples].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            accuracies.append(np.where(sizes > 0, hits / np.maximum(sizes, 1), np.nan))
    stacked = np.stack(accuracies)
    with np.errstate(invalid="ignore"):
        return np.nanmax(stacked, axis=0) - np.nanmin(stacked, axis=0)


def gap_intervals(inputs: AuditInputs, groups: pd.DataFrame) -> dict[str, float]:
    """`group.<column>.accuracy_gap_change_ci_low/_ci_high` (paired with the reference) and,
    with the `ce` baseline, `group.<column>.accuracy_gap_change_vs_ce` with its interval."""
    level = inputs.settings.confidence_level
    labels = inputs.frame["label"].to_numpy()
    correct = inputs.frame["prediction"].to_numpy() == labels
    reference = inputs.reference.frame
    reference_correct = reference["prediction"].to_numpy() == reference["label"].to_numpy()
    baseline = None
    if inputs.baseline is not None:
        baseline = inputs.baseline["compressed_prediction"].to_numpy() == labels
    metrics: dict[str, float] = {}
    for column in groups.columns:
        sensitive = groups[column].to_numpy()
        gaps = bootstrap_gaps(correct, sensitive, inputs.resamples)
        change = gaps - bootstrap_gaps(reference_correct, sensitive, inputs.resamples)
        low, high = percentile_interval(change, level)
        metrics[f"group.{column}.accuracy_gap_change_ci_low"] = low
        metrics[f"group.{column}.accuracy_gap_change_ci_high"] = high
        if baseline is not None:
            name = f"group.{column}.accuracy_gap_change_vs_ce"
            metrics[name] = float(
                bootstrap_gaps(correct, sensitive, np.arange(len(labels))[None])[0]
                - bootstrap_gaps(baseline, sensitive, np.arange(len(labels))[None])[0]
            )
            difference = gaps - bootstrap_gaps(baseline, sensitive, inputs.resamples)
            metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = percentile_interval(
                difference, level
            )
    return metrics


def summary(metrics, labels) -> dict[str, object]:
    """The audited attribute whose accuracy gap between groups changed most, and that change."""
    changes = {
        name.split(".")[1]: value
        for name, value in metrics.items()
        if name.startswith("group.") and name.endswith(".accuracy_gap_change")
    }
    columns = ("group_gap_change", "group_gap_change_vs_ce")
    if not changes:
        return {"group": "", **{f"{c}{s}": NAN for c in columns for s in ("", *BOUNDS)}}
    attribute = max(changes, key=lambda key: abs(changes[key]))
    row: dict[str, object] = {"group": attribute}
    for column, key in zip(
        columns, ("accuracy_gap_change", "accuracy_gap_change_vs_ce"), strict=True
    ):
        for suffix in ("", *BOUNDS):
            row[f"{column}{suffix}"] = metrics.get(f"group.{attribute}.{key}{suffix}", NAN)
    return row


BOUNDS = ("_ci_low", "_ci_high")


def _gap_cell(row: pd.Series) -> str:
    if not row.group:
        return "–"
    return f"{with_interval(row, 'group_gap_change', 3)} ({row.group})"


ENTRY = Metric(
    group_fairness,
    GroupOptions,
    summary=summary,
    columns=(
        Column("group gap Δ", _gap_cell),
        Column("…vs ce", lambda row: with_interval(row, "group_gap_change_vs_ce", 3)),
    ),
)
