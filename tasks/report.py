"""The end-of-run summary: one row per model, printed, written and logged on the parent run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from tasks.tracking import Tracking, log_artifacts, log_metrics, set_tags

SUMMARY_COLUMNS = ["accuracy", "accuracy_change", "mismatches", "mismatches_ref_correct"]


def summary_frame(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per audited model: its labels, headline metrics and MLflow run id."""
    rows = []
    for result in results:
        labels, metrics = result["labels"], result["metrics"]
        rows.append(
            {
                "name": labels["name"],
                "role": labels["role"],
                "compressor": labels["compressor"],
                "sparsity": float(labels["sparsity"]),
                "loss": labels["loss"],
                **{column: metrics.get(column) for column in SUMMARY_COLUMNS},
                "run_id": result["run_id"],
            }
        )
    return pd.DataFrame(rows)


def summary_markdown(frame: pd.DataFrame) -> str:
    """The summary as a Markdown table."""
    return frame.to_markdown(index=False, floatfmt=".4f")


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
    log_artifacts(tracking, parent_run_id, {"": out_dir / "summary.parquet"})
    log_artifacts(tracking, parent_run_id, {"": out_dir / "summary.md"})
    set_tags(
        tracking, parent_run_id, {f"child.{row.name}": row.run_id for row in frame.itertuples()}
    )
    log_metrics(
        tracking,
        parent_run_id,
        {
            f"{row['name']}/{column}": row[column]
            for _, row in frame.iterrows()
            for column in SUMMARY_COLUMNS
            if pd.notna(row[column])
        },
    )
    return frame


def print_summary(frame: pd.DataFrame, console: Console | None = None) -> None:
    """The sparsity x loss table on the terminal."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # logs and CI: do not squeeze the table into 80 columns
            console = Console(width=120)
    table = Table(title="compressed vs reference (test split)")
    for column in (
        "compressor",
        "sparsity",
        "loss",
        "accuracy",
        "Δ acc.",
        "mismatches",
        "…ref. right",
    ):
        table.add_column(
            column, justify="left" if column in ("compressor", "loss") else "right", no_wrap=True
        )
    reference = frame[frame.role == "reference"]
    if len(reference):
        table.caption = f"reference accuracy {reference.accuracy.iloc[0]:.4f}"
    for row in frame[frame.role != "reference"].itertuples():
        table.add_row(
            row.compressor,
            f"{row.sparsity:g}",
            row.loss,
            f"{row.accuracy:.4f}",
            f"{row.accuracy_change:+.4f}",
            str(int(row.mismatches)),
            str(int(row.mismatches_ref_correct)),
        )
    console.print(table)
