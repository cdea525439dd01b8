"""What a flow run shows in the Prefect UI besides task states and logs: its results.

Every pipeline, populations, reproduce and audit flow run ends with three artifacts: a table of
its summary, a Markdown headline (what compression changed, per loss; for an audit, what each
candidate changed and the release gate) and a link to its MLflow parent run; an audit with
release rules also gets a table of the gate's verdicts. Long flows (pipeline, populations,
audit) also keep a progress artifact up to date while their tasks (the audit: its steps) finish. Artifact keys carry the dataset and model, so the Artifacts page of the UI
keeps one history per key across runs.

Called from inside a flow run only (the artifacts attach to it).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from typing import Any

import pandas as pd
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from flows.runtime import report_progress, wait_or_raise_first_failure
from tasks.infra.tracking import Tracking, ui_links

# Where a link to an MLflow run points when the tracking store is a local file: the UI that
# `make ui` starts (override with COMPALIGN_MLFLOW_UI=http://host:port).
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"


def artifact_key(*parts: Any) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from `parts`."""
    text = "-".join(str(part) for part in parts if part not in (None, ""))
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")


def mlflow_ui_command(uri: str, port: int | None = None) -> str:
    """The command that serves the MLflow UI of a local store `uri`, runnable in any folder
    (flows.pointers)."""
    from flows.pointers import mlflow_ui_command as command

    return command(uri, port)


def mlflow_ui_base(tracking: Tracking) -> str:
    """The MLflow UI that shows this store: the tracking server itself, or `make ui`'s."""
    if tracking["uri"].startswith(("http://", "https://")):
        return tracking["uri"]
    return os.environ.get("COMPALIGN_MLFLOW_UI", DEFAULT_MLFLOW_UI)


def _cell(value: Any) -> Any:
    """A JSON-friendly table cell: floats rounded for reading, NaN and inf as text."""
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞"
        return round(value, 4)
    return value


def table_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """`frame` as the list of rows a table artifact takes."""
    return [
        {str(column): _cell(value) for column, value in row.items()}
        for row in frame.to_dict(orient="records")
    ]


def publish_results(
    key: str,
    table: pd.DataFrame,
    headline: str,
    tracking: Tracking,
    run_id: str,
    what: str,
    changed: str = "what compression changed",
) -> dict[str, str]:
    """The three closing artifacts of a flow run: `<key>-summary` (the table),
    `<key>-headline` (Markdown: `changed`) and `<key>-mlflow` (a link to MLflow run `run_id`)."""
    link = ui_links(mlflow_ui_base(tracking), tracking["experiment_id"], run_id)["run"]
    ids = {
        "summary": create_table_artifact(
            table_records(table), key=f"{key}-summary", description=f"{what}: summary table"
        ),
        "headline": create_markdown_artifact(
            headline, key=f"{key}-headline", description=f"{what}: {changed}"
        ),
        "mlflow": create_link_artifact(
            link,
            link_text=f"MLflow run {run_id}",
            key=f"{key}-mlflow",
            description=(
                f"{what}: the MLflow run with every model, metric and file "
                f"(store {tracking['uri']}; a local store is served by "
                f"`{mlflow_ui_command(tracking['uri'])}`)"
            ),
        ),
    }
    return {name: str(value) for name, value in ids.items()}


class Progress:
    """A progress artifact: `done` of `total` tasks (or other `unit`s) finished, as a
    percentage."""

    def __init__(self, key: str, total: int, what: str, unit: str = "tasks") -> None:
        self.total = max(int(total), 1)
        self.done = 0
        self.what = what
        self.unit = unit
        self.id = create_progress_artifact(
            0.0, key=f"{key}-progress", description=self._description()
        )

    def _description(self) -> str:
        return f"{self.what}: {self.done} of {self.total} {self.unit} finished"

    def advance(self, count: int = 1) -> None:
        self.done = min(self.done + count, self.total)
        update_progress_artifact(
            self.id, 100.0 * self.done / self.total, description=self._description()
        )

    def add(self, count: int) -> None:
        """Tasks the flow will run later than it first counted."""
        self.total += count


def wait_with_progress(futures: Iterable[Any], progress: Progress) -> None:
    """Advance `progress` as each future finishes, then wait_or_raise_first_failure (the
    terminal's progress events are announced first, so the display counts as tasks end)."""
    from prefect.futures import as_completed

    futures = list(futures)
    report_progress(futures)
    for _ in as_completed(futures):
        progress.advance()
    wait_or_raise_first_failure(futures, announce=False)


def publish_pipeline(
    key: str, summary: pd.DataFrame, title: str, tracking: Tracking, run_id: str
) -> dict[str, str]:
    """A pipeline run's closing artifacts: the comparison table (as on the terminal and in
    summary.md), the headline per loss, the link to the parent run."""
    from compalign.report.headline import headline_markdown
    from compalign.report.tables import display_frame

    table = display_frame(summary)
    if "name" in summary:  # the run names in MLflow, to find each model there
        table.insert(0, "model", list(summary[summary["role"] != "reference"]["name"]))
    return publish_results(
        key, table, headline_markdown(summary, title), tracking, run_id, "pipeline"
    )


def publish_populations(
    key: str, summary: pd.DataFrame, title: str, tracking: Tracking, run_id: str
) -> dict[str, str]:
    """A populations run's closing artifacts: the PIE table, its headline, the parent run."""
    from compalign.report.headline import populations_headline

    return publish_results(
        key, summary, populations_headline(summary, title), tracking, run_id, "populations"
    )


AUDIT_COLUMNS = (
    "name",
    "role",
    "accuracy",
    "accuracy_change",
    "mismatches",
    "mismatches_ci_low",
    "mismatches_ci_high",
    "mismatches_ref_correct",
    "mismatches_ref_correct_ci_high",
    "worst_class_recall_change",
    "attribution_agreement",
    "ece_change",
    "gate",
)


def publish_audit(
    key: str,
    summary: pd.DataFrame,
    headline: str,
    verdicts: list[dict[str, Any]],
    tracking: Tracking,
    run_id: str,
) -> dict[str, str]:
    """An audit's (models you bring) closing artifacts: its summary (with each candidate's gate
    result), its headline (compalign.report.headline.audit_headline: what the candidates
    changed and the release gate), `<key>-gate` (every rule on every candidate: value, bound,
    passed or failed; only when rules were given) and the parent run."""
    summary = summary.copy()
    if verdicts:
        failed = {v["candidate"] for v in verdicts if not v["passed"]}
        checked = {v["candidate"] for v in verdicts}
        summary["gate"] = [
            ("failed" if name in failed else "passed") if name in checked else "–"
            for name in summary["name"]
        ]
    columns = [column for column in AUDIT_COLUMNS if column in summary]
    ids = publish_results(
        key,
        summary[columns],
        headline,
        tracking,
        run_id,
        "audit",
        changed="what the candidates changed, and the release gate",
    )
    if verdicts:
        rows = [
            {
                "candidate": v["candidate"],
                "metric": v["metric"],
                "value": v["value"],
                "bound": f"{v['operator']} {v['bound']:g}",
                "result": "passed" if v["passed"] else "FAILED",
            }
            for v in verdicts
        ]
        ids["gate"] = str(
            create_table_artifact(
                table_records(pd.DataFrame(rows)),
                key=f"{key}-gate",
                description="audit: the release gate, every rule on every candidate",
            )
        )
    return ids


def publish_reproduce(key: str, report: Any, tracking: Tracking, run_id: str) -> dict[str, str]:
    """A reproduce run's closing artifacts: the verdicts as a table and as Markdown, the run."""
    table = pd.DataFrame(
        {"finding": range(1, len(report.verdicts) + 1), "verdict": report.verdicts}
    )
    headline = "\n".join([f"## {report.title}", "", *[f"- {v}" for v in report.verdicts]]) + "\n"
    return publish_results(key, table, headline, tracking, run_id, f"reproduce {report.paper}")
