"""The report stage's record: the comparison table written beside the run and logged on the
parent run (the table itself is built by `compalign.report.tables`), its headline as the run's
description, its level figures, and the registered models' aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from compalign.report.figures import compressed_rows, level_figure, loss_colors
from compalign.report.headline import fewest_mismatches_per_loss, headline_markdown
from compalign.report.tables import headline_columns, summary_frame, summary_markdown
from tasks.infra.tracking import (
    Tracking,
    log_artifacts,
    log_figure,
    log_metrics,
    log_table,
    registered_model_name,
    set_aliases,
    set_description,
    set_tags,
)

DESCRIPTION_LIMIT = 8000  # MLflow's longest tag value: the run description is a tag
# the figures logged on the parent run: (summary column, axis label, with intervals)
LEVEL_FIGURES = (("accuracy", "accuracy", False), ("mismatches", "mismatches", True))


def publish_summary(
    tracking: Tracking,
    parent_run_id: str,
    results: list[dict[str, Any]],
    out_dir: str | Path,
    costs: dict[str, dict[str, float]] | None = None,
    title: str | None = None,
) -> pd.DataFrame:
    """Write summary.{parquet,md} to `out_dir`, log them on the parent run, point it at each
    child run (tag `child.<name>`) and copy the headline metrics onto it as `<name>/<metric>`.
    The parent also gets the summary as an MLflow table (`summary.json`), the headline and the
    table as its description, the accuracy and mismatch figures; the registered model of the
    dataset and architecture gets its aliases (`publish_registry`)."""
    frame = summary_frame(results, costs)
    title = title or "What compression changed"
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
            for column in headline_columns()
            if pd.notna(row[column])
        },
    )
    log_table(tracking, parent_run_id, frame, "summary.json")
    set_description(tracking, parent_run_id, run_description(frame, title))
    for column, label, interval in LEVEL_FIGURES:
        figure = summary_level_figure(frame, column, label, interval)
        if figure is not None:
            log_figure(tracking, parent_run_id, figure, f"figures/{column}_vs_level.png")
    publish_registry(tracking, frame, results)
    return frame


def run_description(frame: pd.DataFrame, title: str) -> str:
    """The parent run's description: the headline, then the summary table (left out when both
    would not fit in an MLflow tag; summary.md has it)."""
    headline = headline_markdown(frame, title)
    text = f"{headline}\n### Summary\n\n{summary_markdown(frame)}\n"
    if len(text) <= DESCRIPTION_LIMIT:
        return text
    return headline + "\nThe full summary table is the run's artifact `summary.md`.\n"


def summary_level_figure(frame: pd.DataFrame, column: str, label: str, interval: bool):
    """`column` against the compression level per loss (the HTML report's figure), or None
    when no compressed model has a finite value."""
    rows = compressed_rows(frame)
    rows = rows[np.isfinite(pd.to_numeric(rows[column], errors="coerce").astype(float))]
    if not len(rows):
        return None
    colors = loss_colors(list(rows["loss"]))
    return level_figure(rows, column, label, colors, interval=interval, baseline=None)


def publish_registry(
    tracking: Tracking, frame: pd.DataFrame, results: list[dict[str, Any]]
) -> dict[str, str]:
    """Aliases of the registered model `<dataset>-<architecture>`: `reference`, and per loss
    `best-<loss>`: the compressed model with the fewest mismatches where the reference is right
    at the highest level. Returns {alias: version}."""
    labels = next((r["labels"] for r in results if r["labels"].get("role") == "reference"), None)
    if labels is None or "dataset" not in labels:
        return {}
    run_ids = dict(zip(frame["name"], frame["run_id"], strict=True))
    aliases = {"reference": run_ids[labels["name"]]}
    for loss, name in fewest_mismatches_per_loss(frame).items():
        aliases[f"best-{loss}"] = run_ids[name]
    return set_aliases(tracking, registered_model_name(labels["dataset"], labels["model"]), aliases)
