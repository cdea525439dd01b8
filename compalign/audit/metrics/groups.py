"""`groups`: accuracy (and AUROC for two classes) per group of each group column, the largest gap
between a column's groups, and how compression changed it (Meyer & Wong, arXiv 2211.10285: the
bias pruning adds to subgroups). Per-group numbers come from fairlearn's MetricFrame."""

from __future__ import annotations

import pandas as pd

from compalign.audit.base import AuditInputs, Column, Metric, number
from compalign.errors import UserError
from compalign.options import Options

NAN = float("nan")


class GroupOptions(Options):
    """Which group columns to audit."""

    groups: list[str] | None = None  # null: every group column the dataset has


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


def group_fairness(inputs: AuditInputs) -> dict[str, float]:
    """`group.<column>.<value>.accuracy`, `group.<column>.accuracy_gap` (likewise `auroc`);
    compared: each one's `_change`."""
    from compalign.fairness import group_changes, group_metrics  # fairlearn: when used

    metrics = group_metrics(inputs.frame, selected_groups(inputs.groups, inputs.options.groups))
    if inputs.compared:
        metrics.update(group_changes(dict(inputs.reference.metrics), dict(metrics)))
    return metrics


def summary(metrics, labels) -> dict[str, object]:
    """The audited attribute whose accuracy gap between groups changed most, and that change."""
    changes = {
        name.split(".")[1]: value
        for name, value in metrics.items()
        if name.startswith("group.") and name.endswith(".accuracy_gap_change")
    }
    if not changes:
        return {"group": "", "group_gap_change": NAN}
    attribute = max(changes, key=lambda key: abs(changes[key]))
    return {"group": attribute, "group_gap_change": changes[attribute]}


ENTRY = Metric(
    group_fairness,
    GroupOptions,
    summary=summary,
    columns=(
        Column(
            "group gap Δ",
            lambda row: f"{number(row.group_gap_change, 3)} ({row.group})" if row.group else "–",
        ),
    ),
)
