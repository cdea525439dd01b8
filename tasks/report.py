"""The report stage's record: the comparison table written beside the run and logged on the
parent run (the table itself is built by `compalign.report.tables`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from compalign.report.tables import headline_columns, summary_frame, summary_markdown
from tasks.tracking import Tracking, log_artifacts, log_metrics, set_tags


def publish_summary(
    tracking: Tracking,
    parent_run_id: str,
    results: list[dict[str, Any]],
    out_dir: str | Path,
    costs: dict[str, dict[str, float]] | None = None,
) -> pd.DataFrame:
    """Write summary.{parquet,md} to `out_dir`, log them on the parent run, point it at each
    child run (tag `child.<name>`) and copy the headline metrics onto it as `<name>/<metric>`."""
    frame = summary_frame(results, costs)
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
    return frame
