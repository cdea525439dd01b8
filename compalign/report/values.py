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
