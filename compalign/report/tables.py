"""The tables of a run: the summary frame (one row per audited model), and its display as
Markdown and on the terminal; the populations' PIE table likewise."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from compalign.audit import summary_row
from compalign.audit.base import number as _number
from compalign.audit.metrics import METRICS
from compalign.costs import COST_METRICS

COSTS = list(COST_METRICS)
RELATIVE = ["params_nonzero", "macs", "size_bytes", "latency_ms_b1", "latency_ms_b64"]


def summary_frame(
    results: list[dict[str, Any]], costs: dict[str, dict[str, float]] | None = None
) -> pd.DataFrame:
    """One row per audited model: labels, the summary columns of every audit metric
    (compalign.audit.metrics: headline metrics with their intervals, reduction factors against
    `ce`, class and group fairness, attribution agreement, ECE), costs (and their ratio to the
    reference's: `<cost>_ratio`), MLflow run id."""
    rows = []
    costs = costs or {}
    for result in results:
        labels, metrics = result["labels"], result["metrics"]
        nan = float("nan")
        row: dict[str, Any] = {
            "name": labels["name"],
            "role": labels["role"],
            "compressor": labels["compressor"],
            "sparsity": float(labels["sparsity"]),
            "loss": labels["loss"],
            "level_kind": labels.get("level_kind", "weight_sparsity"),
        }
        row.update(summary_row(metrics, labels))  # each audit metric's own columns
        row.update({column: costs.get(labels["name"], {}).get(column, nan) for column in COSTS})
        row["run_id"] = result["run_id"]
        rows.append(row)
    frame = pd.DataFrame(rows)
    reference = frame[frame.role == "reference"]
    for column in RELATIVE:
        base = reference[column].iloc[0] if len(reference) else nan
        frame[f"{column}_ratio"] = frame[column] / base if base else nan
    return frame


def _level(row: pd.Series) -> str:
    return "–" if row.level_kind == "none" else f"{row.sparsity:g}"


def headline_columns() -> list[str]:
    """The summary columns a run's parent repeats per model (`<name>/<column>`), from the
    metrics registry."""
    return [column for entry in METRICS.values() for column in entry.headline]


def table_columns() -> list:
    """The comparison table's metric columns: each audit metric's, in registry order."""
    return [column for entry in METRICS.values() for column in entry.columns]


def display_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """What compression cost beyond accuracy, per compressed model, as strings."""
    shown = []
    for _, row in frame[frame.role != "reference"].iterrows():
        shown.append(
            {
                "compressor": row.compressor,
                "level": _level(row),
                "loss": row.loss,
                # each audit metric's columns, in registry order
                **{column.header: column.show(row) for column in table_columns()},
            }
        )
    return pd.DataFrame(shown)


def costs_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """What each model costs, the reference first, ratios to the reference's, as strings."""
    if "macs" not in frame or frame.macs.isna().all():
        return pd.DataFrame()
    shown = []
    for _, row in frame.iterrows():
        shown.append(
            {
                "compressor": row.compressor if row.role != "reference" else "reference",
                "level": _level(row) if row.role != "reference" else "–",
                "loss": row.loss if row.role != "reference" else "–",
                "nonzero params": f"{row.params_nonzero:,.0f}",
                "MACs ×": _number(row.macs_ratio, 2),
                "size ×": _number(row.size_bytes_ratio, 2),
                "gzip size ×": _number(row.size_gzip_bytes / frame.size_gzip_bytes.iloc[0], 2),
                "latency b1 ms": _number(row.latency_ms_b1, 2),
                "×": _number(row.latency_ms_b1_ratio, 2),
                "latency b64 ms": _number(row.latency_ms_b64, 2),
                "× ": _number(row.latency_ms_b64_ratio, 2),
            }
        )
    return pd.DataFrame(shown)


def summary_markdown(frame: pd.DataFrame) -> str:
    """The comparison table as Markdown, with the reference's accuracy above it."""
    reference = frame[frame.role == "reference"]
    head = ""
    if len(reference):
        head = _reference_line(reference.iloc[0]) + ".\n\n"
    text = head + display_frame(frame).to_markdown(index=False, disable_numparse=True)
    costs = costs_frame(frame)
    if len(costs):
        text += "\n\nCosts (CPU latency: median of repeated runs after warm-up):\n\n"
        text += costs.to_markdown(index=False, disable_numparse=True)
    return text


TERMINAL_WIDTH = 100  # what the tables fit when the output is not a terminal (logs, CI)
LABELS = ("compressor", "level", "loss")


def fitted_table(shown: pd.DataFrame, title: str, width: int, keep: int) -> tuple[Table, list[str]]:
    """A rich table of `shown`'s first `keep` columns and then as many of the next ones, in
    order, as fit in `width` characters; also the headers of the columns left out."""
    from rich import box

    def build(columns: list[str]) -> Table:
        table = Table(
            title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True
        )
        for column in columns:
            justify = "left" if column in ("compressor", "loss") else "right"
            table.add_column(column, justify=justify, no_wrap=True)
        for row in shown[columns].itertuples(index=False):
            table.add_row(*row)
        return table

    measure = Console(width=10_000, file=None)
    columns = list(shown.columns[:keep])
    for column in shown.columns[keep:]:
        if measure.measure(build([*columns, column])).maximum > width:
            break
        columns.append(column)
    return build(columns), list(shown.columns[len(columns) :])


def _headers(headers: list[str], before: str) -> str:
    """Headers as a list in words: a '…' header (a variant of the one before it, the first one's
    being `before`) in brackets after that one."""
    words: list[str] = []
    for header in headers:
        if header.startswith("…"):
            words.append(f"{words.pop() if words else before.strip()} ({header.strip()})")
        else:
            words.append(header.strip())
    return ", ".join(words)


def print_summary(frame: pd.DataFrame, console: Console | None = None, more: str = "") -> None:
    """The comparison table on the terminal: the labels and as many metric columns (registry
    order: the headline first) as fit the console's width (TERMINAL_WIDTH when it is not a
    terminal), then the reference's line; `more` names where the full tables (metrics and
    costs) are."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # logs and CI: the width of a usual terminal
            console = Console(width=TERMINAL_WIDTH)
    reference = frame[frame.role == "reference"]
    shown = display_frame(frame)
    if len(shown):
        title = "compressed vs reference (test split; intervals: bootstrap 95%)"
        if shown.compressor.nunique() == 1:  # one compressor: named once, in the title
            title = f"{shown.compressor.iloc[0]} vs reference (test split; bootstrap 95% intervals)"
            shown = shown.drop(columns="compressor")
        keep = sum(column in LABELS for column in shown.columns)
        table, left_out = fitted_table(shown, title, console.width, keep)
        console.print(table)
        hidden = [*left_out, *(["costs"] if len(costs_frame(frame)) else [])]
        if hidden:
            before = shown.columns[len(shown.columns) - len(left_out) - 1]
            where = more or "summary.md and report.html"
            console.print(f"In {where}: {_headers(hidden, before)}.")
    if len(reference):
        console.print(_reference_line(reference.iloc[0]) + ".")


def _reference_line(row: pd.Series) -> str:
    text = f"Reference: accuracy {row.accuracy:.4f}, ECE {row.ece:.3f}"
    if not math.isnan(row.get("macs", float("nan"))):
        text += (
            f", {row.params_total:,.0f} parameters, {row.macs / 1e6:.2f} MMACs, "
            f"{row.size_bytes / 1e3:.0f} kB, latency {row.latency_ms_b1:.2f} ms at batch 1 and "
            f"{row.latency_ms_b64:.2f} ms at batch 64 ({row.latency_threads:.0f} threads)"
        )
    return text


# --------------------------------------------------------------------------------------------
# Populations


# a population summary's numbers per level and loss: its table's columns, its MLflow metrics
PIE_MEASURES = (
    "pie_count",
    "pie_fraction",
    "pies_compressed_mode_correct",
    "reference_top1_on_pies",
    "reference_top1_on_rest",
    "compressed_top1_on_pies",
    "compressed_top1_on_rest",
    "pies_shared_with_first_loss",
    "impacted_classes",
)


def populations_markdown(summary: pd.DataFrame, impact: pd.DataFrame) -> str:
    """The PIE table and the impacted classes as Markdown."""
    columns = ["level", "loss", *PIE_MEASURES, "impacted_classes_raw"]
    columns = [column for column in columns if column in summary]
    text = "PIEs per compression level and loss:\n\n" + summary[columns].to_markdown(
        index=False, floatfmt=".4f"
    )
    significant = impact[impact.impacted] if len(impact) else impact
    text += (
        "\n\nDisparately impacted classes (Welch t-test; decided on Benjamini-Hochberg adjusted "
        "p, raw p beside it):\n\n"
    )
    if len(significant):
        shown = ["level", "loss", "class", "change", "t", "p", "p_adjusted", "direction"]
        text += significant[[c for c in shown if c in significant]].to_markdown(
            index=False, floatfmt=".4f"
        )
    else:
        text += "none"
    return text


def print_populations(summary: pd.DataFrame, console: Console | None = None) -> None:
    """The PIE table on the terminal (long cells wrap to fit its width)."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=TERMINAL_WIDTH)
    table = Table(title="Pruning Identified Exemplars (population modal labels differ)")
    headers = [
        "level",
        "loss",
        "PIEs",
        "fraction",
        "comp. mode right",
        "dense top-1 PIEs / rest",
        "comp. top-1 PIEs / rest",
        "impacted classes",
    ]
    for header in headers:
        table.add_column(
            header, justify="left" if header in ("loss", "impacted classes") else "right"
        )
    for _, row in summary.iterrows():
        table.add_row(
            "–" if row.level is None or pd.isna(row.level) else f"{row.level:g}",
            row.loss,
            str(row.pie_count),
            f"{row.pie_fraction:.3f}",
            str(row.pies_compressed_mode_correct),
            f"{row.reference_top1_on_pies:.3f} / {row.reference_top1_on_rest:.3f}",
            f"{row.compressed_top1_on_pies:.3f} / {row.compressed_top1_on_rest:.3f}",
            row.impacted or "none",
        )
    console.print(table)
