"""The comparison table: one row per model, printed, written and logged on the parent run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from tasks.tracking import Tracking, log_artifacts, log_metrics, set_tags

HEADLINE = [
    "accuracy",
    "accuracy_change",
    "mismatches",
    "mismatches_ref_correct",
    "reduction_factor",
]
INTERVALS = [
    "mismatches",
    "mismatches_ref_correct",
    "reduction_factor",
    "reduction_factor_ref_correct",
]


def _group_gap(metrics: dict[str, float]) -> tuple[str, float]:
    """The audited attribute whose accuracy gap between groups changed most, and that change."""
    changes = {
        name.split(".")[1]: value
        for name, value in metrics.items()
        if name.startswith("group.") and name.endswith(".accuracy_gap_change")
    }
    if not changes:
        return "", float("nan")
    attribute = max(changes, key=lambda key: abs(changes[key]))
    return attribute, changes[attribute]


def _attribution(metrics: dict[str, float]) -> float:
    for method in ("integrated_gradients", "saliency"):
        if f"attribution.{method}.spearman_mean" in metrics:
            return metrics[f"attribution.{method}.spearman_mean"]
    return float("nan")


def summary_frame(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per audited model: labels, headline metrics with their intervals, reduction
    factors against `ce`, class and group fairness, attribution agreement, ECE, MLflow run id."""
    rows = []
    for result in results:
        labels, metrics = result["labels"], result["metrics"]
        nan = float("nan")
        row: dict[str, Any] = {
            "name": labels["name"],
            "role": labels["role"],
            "compressor": labels["compressor"],
            "sparsity": float(labels["sparsity"]),
            "loss": labels["loss"],
        }
        row.update({column: metrics.get(column, nan) for column in HEADLINE})
        row["reduction_factor_ref_correct"] = metrics.get("reduction_factor_ref_correct", nan)
        if labels["loss"] == "ce":  # the baseline against itself
            row["reduction_factor"] = row["reduction_factor_ref_correct"] = 1.0
        for column in INTERVALS:
            for end in ("low", "high"):
                default = 1.0 if labels["loss"] == "ce" and column.startswith("reduction") else nan
                row[f"{column}_ci_{end}"] = metrics.get(f"{column}_ci_{end}", default)
        row["worst_class_recall_change"] = metrics.get("worst_class_recall_change", nan)
        row["group"], row["group_gap_change"] = _group_gap(metrics)
        row["attribution_agreement"] = _attribution(metrics)
        row["ece"] = metrics.get("ece", nan)
        row["run_id"] = result["run_id"]
        rows.append(row)
    return pd.DataFrame(rows)


def _number(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}" if digits else f"{int(value)}"


def _with_interval(row: pd.Series, column: str, digits: int) -> str:
    value, low, high = row[column], row[f"{column}_ci_low"], row[f"{column}_ci_high"]
    if isinstance(value, float) and math.isnan(value):
        return "–"
    if isinstance(low, float) and math.isnan(low):
        return _number(value, digits)
    return f"{_number(value, digits)} [{_number(low, digits)}, {_number(high, digits)}]"


def display_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The compressed rows as strings: what the terminal and the Markdown table show."""
    shown = []
    for _, row in frame[frame.role != "reference"].iterrows():
        shown.append(
            {
                "compressor": row.compressor,
                "sparsity": f"{row.sparsity:g}",
                "loss": row.loss,
                "accuracy": _number(row.accuracy, 4),
                "Δ acc.": f"{row.accuracy_change:+.4f}",
                "mismatches [95% CI]": _with_interval(row, "mismatches", 0),
                "…ref. right": _with_interval(row, "mismatches_ref_correct", 0),
                "reduction vs ce": _with_interval(row, "reduction_factor", 2),
                "…ref. right ": _with_interval(row, "reduction_factor_ref_correct", 2),
                "worst class Δ": _number(row.worst_class_recall_change, 3),
                "group gap Δ": (
                    f"{_number(row.group_gap_change, 3)} ({row.group})" if row.group else "–"
                ),
                "attr. ρ": _number(row.attribution_agreement, 2),
                "ECE": _number(row.ece, 3),
            }
        )
    return pd.DataFrame(shown)


def summary_markdown(frame: pd.DataFrame) -> str:
    """The comparison table as Markdown, with the reference's accuracy above it."""
    reference = frame[frame.role == "reference"]
    head = ""
    if len(reference):
        head = f"Reference accuracy {reference.accuracy.iloc[0]:.4f}, ECE {reference.ece.iloc[0]:.3f}.\n\n"
    return head + display_frame(frame).to_markdown(index=False, disable_numparse=True)


def publish_summary(
    tracking: Tracking, parent_run_id: str, results: list[dict[str, Any]], out_dir: str | Path
) -> pd.DataFrame:
    """Write summary.{parquet,md} to `out_dir`, log them on the parent run, point it at each
    child run (tag `child.<name>`) and copy the headline metrics onto it as `<name>/<metric>`."""
    frame = summary_frame(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out_dir / "summary.parquet", index=False)
    (out_dir / "summary.md").write_text(summary_markdown(frame) + "\n")
    log_artifacts(
        tracking, parent_run_id, [("", out_dir / "summary.parquet"), ("", out_dir / "summary.md")]
    )
    set_tags(
        tracking, parent_run_id, {f"child.{row.name}": row.run_id for row in frame.itertuples()}
    )
    log_metrics(
        tracking,
        parent_run_id,
        {
            f"{row['name']}/{column}": row[column]
            for _, row in frame.iterrows()
            for column in HEADLINE
            if pd.notna(row[column])
        },
    )
    return frame


def print_summary(frame: pd.DataFrame, console: Console | None = None) -> None:
    """The comparison table on the terminal."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # logs and CI: do not squeeze the table into 80 columns
            console = Console(width=200)
    shown = display_frame(frame)
    table = Table(title="compressed vs reference (test split; intervals: bootstrap 95%)")
    for column in shown.columns:
        table.add_column(
            column, justify="left" if column in ("compressor", "loss") else "right", no_wrap=True
        )
    for row in shown.itertuples(index=False):
        table.add_row(*row)
    reference = frame[frame.role == "reference"]
    if len(reference):
        table.caption = (
            f"reference accuracy {reference.accuracy.iloc[0]:.4f}, ECE {reference.ece.iloc[0]:.3f}"
        )
    console.print(table)
