"""Single values read from the summary and the other frames the figures and pages show."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def column_floats(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A column as floats (NaN where missing or not a number); all NaN when there is none."""
    if column not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def to_float(value: Any) -> float:
    """One value as a float, NaN when it is missing or not a number."""
    number = pd.to_numeric(pd.Series([value], dtype=object), errors="coerce").iloc[0]
    return float(number) if pd.notna(number) else math.nan


def cell_text(value: Any) -> str:
    """A table cell's text: NaN as a dash, integers with thousands separators, floats at four
    significant digits."""
    if value is None or value is pd.NA:
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        value = float(value)
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        if value.is_integer() and abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    return str(value)


def plain_label(value: Any) -> str:
    """A label for matplotlib: a `$` would otherwise start mathtext (and may fail to parse)."""
    return str(value).replace("$", r"\$")


def reference_row(summary: pd.DataFrame) -> pd.Series | None:
    """The summary's reference model (role `reference`), None when it has none."""
    if "role" not in summary:
        return None
    rows = summary[summary["role"] == "reference"]
    return rows.iloc[0] if len(rows) else None


# One format per kind of number (the audit's page: its cards and tables). Counts are whole
# numbers; accuracies and their changes 4 decimals; recall changes, calibration errors and
# attribution correlations 3; cost ratios "×1.23"; milliseconds 2 decimals; load 1.
COUNT_COLUMNS = ("params_total", "params_nonzero", "macs", "size_bytes", "size_gzip_bytes")
COUNT_PREFIXES = ("mismatches", "noise_floor_mismatches", "latency_threads", "latency_cores")
SIGNED = ("_change", "_above_noise_floor")


def number_kind(column: str) -> str:
    """The kind of number a summary column holds: count, accuracy, fraction (3 decimals),
    ratio, ms, load or other (4 significant digits)."""
    if column in COUNT_COLUMNS or column.startswith(COUNT_PREFIXES) or column.endswith("_batch"):
        return "count"
    if column.endswith("_ratio"):
        return "ratio"
    if column.startswith("latency_") and "_ms_" in column:
        return "ms"
    if column == "latency_load":
        return "load"
    if column.startswith("accuracy") or column.endswith("_accuracy"):
        return "accuracy"
    if column.startswith(("ece", "worst_class", "recall_change", "attribution", "group.")):
        return "fraction"
    if column in ("weight_sparsity", "auroc") or column.startswith("auroc"):
        return "fraction"
    return "other"


def metric_text(column: str, value: Any) -> str:
    """`value` of summary column `column` in its kind's one format ("–" when missing)."""
    if isinstance(value, str | bool | np.bool_):
        return cell_text(value) if value != "" else "–"
    number = to_float(value)
    if not math.isfinite(number):
        return cell_text(number)
    kind = number_kind(column)
    signed = "+" if column.endswith(SIGNED) else ""
    if kind == "count":
        return f"{number:{signed},.0f}"
    if kind == "accuracy":
        return f"{number:{signed}.4f}"
    if kind == "fraction":
        return f"{number:{signed}.3f}"
    if kind == "ratio":
        return f"×{number:.2f}"
    if kind == "ms":
        return f"{number:,.2f}"
    if kind == "load":
        return f"{number:.1f}"
    return cell_text(number)
