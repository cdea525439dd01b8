"""Self-contained HTML pages of a pipeline run and of a populations run.

Figures are drawn on bare matplotlib `Figure`s (never pyplot: no global figure registry, so flows
may build pages from worker threads) and inlined as base64 PNGs; the page has no scripts and
links nothing outside itself, so it opens offline, as an MLflow artifact or a mail attachment.
Every piece of text that reaches the HTML goes through `html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from compalign.costs import COST_METRICS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DPI = 100
LEVEL_AXIS = {"weight_sparsity": "weight sparsity", "flops_removed": "fraction of MACs removed"}
# The costs drawn relative to the reference: (summary column, axis label).
COST_PANELS = (
    ("macs", "MACs"),
    ("size_bytes", "size (bytes)"),
    ("latency_ms_b64", "latency, batch 64"),
)
COST_COLUMNS = COST_METRICS
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       line-height: 1.45; max-width: 1280px; margin: 1.5rem auto; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.4rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd;
     padding-bottom: 0.2rem; }
h3 { font-size: 1.02rem; margin-top: 1.4rem; }
nav ol { columns: 2; font-size: 0.92rem; }
a { color: #1f5fa8; }
img { max-width: 100%; height: auto; display: block; margin: 0.6rem 0; }
.lead { font-size: 0.98rem; }
.caption { color: #555; font-size: 0.9rem; max-width: 62rem; }
.note { background: #fff8e6; border-left: 3px solid #e0a800; padding: 0.3rem 0.6rem;
        font-size: 0.9rem; max-width: 62rem; }
.scroll { overflow-x: auto; max-height: 36rem; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.78rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #e2e2e2; padding: 0.18rem 0.45rem; white-space: nowrap;
         text-align: right; }
th { background: #f2f2f2; position: sticky; top: 0; z-index: 1; }
.text { text-align: left; }
/* the first column (the model, the class) stays in view while the table scrolls sideways */
tbody td:first-child { position: sticky; left: 0; background: #fff; }
th:first-child { left: 0; z-index: 2; }
tbody tr:nth-child(even) td { background: #fafafa; }
tbody tr.hit td { background: #fde8e6; }
"""


def figure_png(figure: Figure) -> bytes:
    """PNG bytes of a matplotlib Figure (drawn at 100 dpi, cropped to its content)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # constrained layout warns, harmlessly, when long tick labels crowd small panels
        warnings.simplefilter("ignore", UserWarning)
        figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# The page


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _plain(value: Any) -> str:
    """A label for matplotlib: a `$` would otherwise start mathtext (and may fail to parse)."""
    return str(value).replace("$", r"\$")


def _cell(value: Any) -> str:
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


def _png_tag(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{_text(alt)}">'


class _Page:
    """An HTML page built section by section: captions, notes, figures, tables."""

    def __init__(self, title: str, notes: Sequence[str] | None) -> None:
        self.title = title
        self.head = [f'<p class="lead">{_text(note)}</p>' for note in notes or []]
        self.sections: list[tuple[str, str, list[str]]] = []  # (anchor, heading, parts)

    def lead(self, sentence: str) -> None:
        self.head.append(f'<p class="lead">{_text(sentence)}</p>')

    def section(self, heading: str) -> None:
        self.sections.append((f"section-{len(self.sections) + 1}", heading, []))

    def _add(self, part: str) -> None:
        self.sections[-1][2].append(part)

    def subheading(self, text: str) -> None:
        self._add(f"<h3>{_text(text)}</h3>")

    def caption(self, sentence: str) -> None:
        self._add(f'<p class="caption">{_text(sentence)}</p>')

    def note(self, sentence: str) -> None:
        self._add(f'<p class="note">{_text(sentence)}</p>')

    def figure(self, figure: Figure, alt: str) -> None:
        self.image(figure_png(figure), alt)

    def image(self, data: bytes, alt: str) -> None:
        self._add(_png_tag(data, alt))

    def table(self, frame: pd.DataFrame, highlight: Sequence[bool] | None = None) -> None:
        """`frame` as an HTML table; rows where `highlight` is true are shaded."""
        if not len(frame.columns):
            self.note("The table is empty.")
            return
        text_columns = {
            column
            for column in frame.columns
            if not pd.api.types.is_numeric_dtype(frame[column])
            or pd.api.types.is_bool_dtype(frame[column])
        }
        head = "".join(
            f'<th class="text">{_text(column)}</th>'
            if column in text_columns
            else f"<th>{_text(column)}</th>"
            for column in frame.columns
        )
        rows = []
        for position, values in enumerate(frame.itertuples(index=False, name=None)):
            cells = "".join(
                f'<td class="text">{_text(_cell(value))}</td>'
                if column in text_columns
                else f"<td>{_text(_cell(value))}</td>"
                for column, value in zip(frame.columns, values, strict=True)
            )
            shaded = highlight is not None and bool(highlight[position])
            rows.append(f'<tr class="hit">{cells}</tr>' if shaded else f"<tr>{cells}</tr>")
        self._add(
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )
        if not len(frame):
            self.note("No rows.")

    def render(self) -> str:
        contents = "".join(
            f'<li><a href="#{anchor}">{_text(heading)}</a></li>'
            for anchor, heading, _ in self.sections
        )
        body = "\n".join(
            f'<section id="{anchor}">\n<h2>{_text(heading)}</h2>\n'
            + "\n".join(parts)
            + "\n</section>"
            for anchor, heading, parts in self.sections
        )
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_text(self.title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<header>\n<h1>{_text(self.title)}</h1>\n" + "\n".join(self.head) + "\n</header>\n"
            f"<nav><ol>{contents}</ol></nav>\n{body}\n</body>\n</html>\n"
        )

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(), encoding="utf-8")
        return path


# --------------------------------------------------------------------------------------------
# Shared plotting pieces


def _numbers(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A column as floats (NaN where missing or not a number); all NaN when there is none."""
    if column not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _number(value: Any) -> float:
    """One value as a float, NaN when it is missing or not a number."""
    number = pd.to_numeric(pd.Series([value], dtype=object), errors="coerce").iloc[0]
    return float(number) if pd.notna(number) else math.nan


def _loss_colors(losses: Sequence[str]) -> dict[str, str]:
    """One colour per loss, the same in every figure of a page (matplotlib's C0..C9 cycle)."""
    return {loss: f"C{index % 10}" for index, loss in enumerate(dict.fromkeys(losses))}


def _panels(count: int, width: float = 4.3, height: float = 3.3) -> tuple[Figure, list[Any]]:
    """A constrained-layout figure with `count` panels, at most three a row."""
    columns = min(count, 3)
    rows = -(-count // columns)
    figure = Figure(figsize=(width * columns + 1.4, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis in axes[count:]:
        axis.set_visible(False)
    return figure, list(axes[:count])


def _error_bars(frame: pd.DataFrame, column: str) -> np.ndarray | None:
    """Distances from the estimate to its interval's ends; missing or infinite ends draw none,
    and ends on the wrong side of the estimate are clipped (matplotlib rejects negative bars)."""
    low, high = f"{column}_ci_low", f"{column}_ci_high"
    if low not in frame and high not in frame:
        return None
    value = _numbers(frame, column)
    below, above = value - _numbers(frame, low), _numbers(frame, high) - value
    bars = np.vstack([below, above])
    bars[~np.isfinite(bars)] = 0.0
    return np.clip(bars, 0.0, None)


def _legend(figure: Figure, axes: Sequence[Any], title: str | None = None) -> None:
    """One legend for the whole figure, each label once, outside the panels."""
    seen: dict[str, Any] = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if seen:
        figure.legend(
            list(seen.values()),
            list(seen),
            loc="outside right upper",
            fontsize=8,
            title=title,
            title_fontsize=8,
        )


def _level_ticks(axis: Any, levels: np.ndarray) -> None:
    """Few distinct levels (the usual sweep): tick exactly those."""
    levels = np.unique(levels[np.isfinite(levels)])
    if 0 < len(levels) <= 8:
        axis.set_xticks(levels, [f"{level:g}" for level in levels])


# --------------------------------------------------------------------------------------------
# Pipeline page


def _reference_row(summary: pd.DataFrame) -> pd.Series | None:
    if "role" not in summary:
        return None
    rows = summary[summary["role"] == "reference"]
    return rows.iloc[0] if len(rows) else None


def _compressed(summary: pd.DataFrame) -> pd.DataFrame:
    """The compressed models, with the labels the figures group by filled in when absent."""
    frame = summary[summary["role"] != "reference"] if "role" in summary else summary
    frame = frame.copy()
    defaults = {
        "name": "model",
        "compressor": "compressor",
        "loss": "loss",
        "level_kind": "weight_sparsity",
    }
    for column, default in defaults.items():
        if column not in frame:
            frame[column] = default
        frame[column] = frame[column].astype(object).where(frame[column].notna(), default)
        frame[column] = frame[column].astype(str)
    frame["sparsity"] = _numbers(frame, "sparsity")
    return frame


def _level_figure(
    rows: pd.DataFrame,
    column: str,
    ylabel: str,
    colors: dict[str, str],
    *,
    interval: bool,
    baseline: tuple[float, str] | None,
) -> Figure:
    """`column` against the compression level, one line per loss, one panel per compressor
    with a level; compressors without one (quantizers) share a last panel, one point per loss."""
    levelled = rows[rows["level_kind"] != "none"]
    unlevelled = rows[rows["level_kind"] == "none"]
    compressors = list(dict.fromkeys(levelled["compressor"]))
    count = len(compressors) + (1 if len(unlevelled) else 0)
    figure, axes = _panels(count)
    for axis, compressor in zip(axes, compressors, strict=False):
        frame = levelled[levelled["compressor"] == compressor]
        present = [loss for loss in colors if (frame["loss"] == loss).any()]
        span = float(np.ptp(frame["sparsity"].to_numpy(float))) or 1.0
        for offset, loss in enumerate(present):
            part = frame[frame["loss"] == loss].sort_values("sparsity")
            # error bars of the losses at one level would hide each other: nudge them apart
            shift = (offset - (len(present) - 1) / 2) * 0.008 * span if interval else 0.0
            axis.errorbar(
                part["sparsity"].to_numpy(float) + shift,
                _numbers(part, column),
                yerr=_error_bars(part, column) if interval else None,
                marker="o",
                markersize=4,
                capsize=3,
                linewidth=1.4,
                color=colors[loss],
                label=_plain(loss),
            )
        _level_ticks(axis, frame["sparsity"].to_numpy(float))
        kinds = set(frame["level_kind"])
        axis.set_xlabel(LEVEL_AXIS.get(kinds.pop(), "level") if len(kinds) == 1 else "level")
        axis.set_title(_plain(compressor), fontsize=10)
    if len(unlevelled):
        axis = axes[-1]
        names = list(dict.fromkeys(unlevelled["compressor"]))
        present = [loss for loss in colors if (unlevelled["loss"] == loss).any()]
        width = 0.8 / max(len(present), 1)
        for offset, loss in enumerate(present):
            part = unlevelled[unlevelled["loss"] == loss]
            shift = (offset - (len(present) - 1) / 2) * width
            axis.errorbar(
                [names.index(name) + shift for name in part["compressor"]],
                _numbers(part, column),
                yerr=_error_bars(part, column) if interval else None,
                fmt="o",
                markersize=5,
                capsize=3,
                color=colors[loss],
                label=_plain(loss),
            )
        axis.set_xticks(range(len(names)), [_plain(name) for name in names], rotation=20)
        axis.set_xlim(-0.6, len(names) - 0.4)
        axis.set_xlabel("compressor (no level)")
        axis.set_title("quantizers", fontsize=10)
    for axis in axes:
        if baseline is not None:
            axis.axhline(baseline[0], color="0.35", linestyle="--", linewidth=1, label=baseline[1])
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
    _legend(figure, axes, "loss")
    return figure


def _finite_rows(rows: pd.DataFrame, column: str, what: str) -> tuple[pd.DataFrame, list[str]]:
    """The rows whose `column` is finite, and a note naming the others."""
    values = _numbers(rows, column)
    keep = np.isfinite(values)
    notes = []
    if (~keep).any():
        left = ", ".join(
            f"{name} ({_cell(value)})"
            for name, value in zip(rows["name"][~keep], values[~keep], strict=True)
        )
        notes.append(f"Left out, {what} not finite: {left}.")
    return rows[keep], notes


def _level_section(
    page: _Page,
    rows: pd.DataFrame,
    column: str,
    ylabel: str,
    colors: dict[str, str],
    *,
    interval: bool,
    baseline: tuple[float, str] | None,
) -> None:
    shown, notes = _finite_rows(rows, column, ylabel)
    if not len(shown):
        page.note(f"No figure: no compressed model has a finite {ylabel}.")
        return
    page.figure(
        _level_figure(shown, column, ylabel, colors, interval=interval, baseline=baseline),
        f"{ylabel} against compression level, per loss and compressor",
    )
    for note in notes:
        page.note(note)


def _heatmap_figure(rows: Sequence[str], columns: Sequence[Any]) -> tuple[Figure, Any]:
    """A figure and axis sized for a heatmap of len(rows) labelled rows by len(columns)."""
    label_width = max(map(len, rows)) * 0.065
    figure = Figure(
        figsize=(
            max(5.0, 0.5 * len(columns) + label_width + 1.5),
            max(2.4, 0.3 * len(rows) + 1.2),
        ),
        layout="constrained",
    )
    return figure, figure.subplots()


def _heatmap(
    axis: Any,
    matrix: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    marked: np.ndarray | None = None,
) -> Any:
    """A diverging heatmap centred on 0 (red: worse, blue: better), values written in the cells
    when there is room, `marked` cells outlined."""
    finite = matrix[np.isfinite(matrix)]
    limit = float(np.max(np.abs(finite))) if len(finite) else 1.0
    limit = limit or 1.0
    image = axis.imshow(
        np.ma.masked_invalid(matrix),
        cmap=colormaps["RdBu"].with_extremes(bad="#dddddd"),
        vmin=-limit,
        vmax=limit,
        aspect="auto",
    )
    axis.set_yticks(range(len(rows)), [_plain(row) for row in rows], fontsize=8)
    axis.set_xticks(
        range(len(columns)),
        [_plain(column) for column in columns],
        fontsize=8,
        rotation=90 if len(columns) > 12 or max(map(len, columns), default=0) > 3 else 0,
    )
    if matrix.size <= 400:
        for (row, column), value in np.ndenumerate(matrix):
            if not np.isfinite(value):
                continue
            strong = abs(value) > 0.55 * limit
            star = "*" if marked is not None and marked[row, column] else ""
            axis.text(
                column,
                row,
                f"{value:+.2f}{star}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if strong else "black",
                fontweight="bold" if star else "normal",
            )
    if marked is not None:
        for row, column in zip(*np.nonzero(marked), strict=True):
            axis.add_patch(
                Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="black", lw=1.6)
            )
    return image


def _recall_section(
    page: _Page,
    compressed: pd.DataFrame,
    model_metrics: dict[str, dict[str, float]],
    class_names: list[str],
) -> None:
    names = list(dict.fromkeys(compressed["name"]))
    names += [  # audited models the summary does not list still have their recalls
        name
        for name, metrics in model_metrics.items()
        if name not in names and any(key.startswith("recall_change.") for key in metrics)
    ]
    classes = list(class_names) or list(
        dict.fromkeys(
            key.removeprefix("recall_change.")
            for metrics in model_metrics.values()
            for key in metrics
            if key.startswith("recall_change.")
        )
    )
    matrix = np.array(
        [
            [float(model_metrics.get(name, {}).get(f"recall_change.{c}", np.nan)) for c in classes]
            for name in names
        ],
        dtype=float,
    ).reshape(len(names), len(classes))
    keep = np.isfinite(matrix).any(axis=1) if matrix.size else np.zeros(len(names), bool)
    if not keep.any():
        page.note("No figure: no model has per-class recall changes (recall_change.<class>).")
        return
    matrix, names = matrix[keep], [name for name, kept in zip(names, keep, strict=True) if kept]
    figure, axis = _heatmap_figure(names, classes)
    image = _heatmap(axis, matrix, names, classes)
    axis.set_xlabel("class")
    figure.colorbar(image, ax=axis, label="recall change", shrink=0.9)
    page.figure(figure, "per-class recall change, models by classes")


def _group_columns(model_metrics: dict[str, dict[str, float]]) -> list[str]:
    suffix = ".accuracy_gap"
    return sorted(
        {
            key[len("group.") : -len(suffix)]
            for metrics in model_metrics.values()
            for key in metrics
            if key.startswith("group.") and key.endswith(suffix)
        }
    )


def _barh(axis: Any, names: list[str], values: np.ndarray, colors: Any, xlabel: str) -> None:
    positions = np.arange(len(names))
    axis.barh(positions, np.nan_to_num(values, nan=0.0), color=colors)
    axis.set_yticks(positions, [_plain(name) for name in names], fontsize=8)
    axis.invert_yaxis()  # the first model on top, as in the tables
    axis.set_xlabel(xlabel)
    axis.grid(axis="x", alpha=0.3)


def _group_section(
    page: _Page, summary: pd.DataFrame, model_metrics: dict[str, dict[str, float]]
) -> None:
    columns = _group_columns(model_metrics)
    if not columns:
        page.note("This run audits no groups (no group.<column>.accuracy_gap metrics).")
        return
    order = list(dict.fromkeys(list(summary["name"]) if "name" in summary else []))
    order += [name for name in model_metrics if name not in order]
    for column in columns:
        gaps = {
            name: model_metrics[name][f"group.{column}.accuracy_gap"]
            for name in order
            if f"group.{column}.accuracy_gap" in model_metrics.get(name, {})
        }
        changes = {
            name: model_metrics[name][f"group.{column}.accuracy_gap_change"]
            for name in order
            if f"group.{column}.accuracy_gap_change" in model_metrics.get(name, {})
        }
        count = max(len(gaps), len(changes))
        figure, axes = _panels(2 if changes else 1, width=5.0, height=max(2.4, 0.28 * count + 1))
        values = np.array(list(gaps.values()), dtype=float)
        _barh(axes[0], list(gaps), values, "#7a8fa6", "accuracy gap (max − min over groups)")
        axes[0].set_title(f"gap between the groups of {_plain(column)}", fontsize=10)
        if changes:
            values = np.array(list(changes.values()), dtype=float)
            # a wider gap is the harm: red; a narrower one blue
            colors = ["#c0392b" if value > 0 else "#2e6da4" for value in values]
            _barh(axes[1], list(changes), values, colors, "gap change vs reference")
            axes[1].axvline(0, color="0.3", linewidth=1)
            axes[1].set_title("change of the gap (compressed − reference)", fontsize=10)
        page.subheading(f"Group column {column}")
        page.figure(figure, f"accuracy gap between the groups of {column} and its change")


def _cost_ratio(summary: pd.DataFrame, column: str) -> np.ndarray | None:
    """The `<column>_ratio` column, or the ratio to the reference's value when only the raw
    column is there; None when neither gives a finite number."""
    if f"{column}_ratio" in summary:
        ratio = _numbers(summary, f"{column}_ratio")
    else:
        reference = _reference_row(summary)
        base = math.nan if reference is None else _number(reference.get(column))
        if not math.isfinite(base) or base == 0:
            return None
        ratio = _numbers(summary, column) / base
    return ratio if np.isfinite(ratio).any() else None


def _costs_section(page: _Page, summary: pd.DataFrame) -> None:
    panels = [(label, _cost_ratio(summary, column)) for column, label in COST_PANELS]
    missing = [label for label, ratio in panels if ratio is None]
    panels = [(label, ratio) for label, ratio in panels if ratio is not None]
    if not panels:
        page.note("No figure: this summary has no cost measurements (MACs, size, latency).")
        return
    if missing:
        page.note(f"Not measured, left out: {', '.join(missing)}.")
    names = (
        summary["name"].astype(str).tolist()
        if "name" in summary
        else [f"row {index}" for index in range(len(summary))]
    )
    figure, axes = _panels(
        len(panels),
        width=max(3.6, 2.4 + 0.07 * max(map(len, names), default=0)),
        height=max(2.4, 0.28 * len(names) + 1),
    )
    roles = summary["role"].astype(str).tolist() if "role" in summary else [""] * len(names)
    for axis, (label, ratio) in zip(axes, panels, strict=True):
        colors = ["0.55" if role == "reference" else "#2e6da4" for role in roles]
        _barh(axis, names, ratio, colors, f"{label}, × reference")
        axis.axvline(1.0, color="0.3", linestyle="--", linewidth=1)
        for position, value in enumerate(ratio):
            text = f"×{value:.2f}" if np.isfinite(value) else "–"
            axis.text(np.nan_to_num(value, nan=0.0), position, f" {text}", va="center", fontsize=7)
        axis.margins(x=0.18)
        axis.set_title(label, fontsize=10)
        if axis is not axes[0]:
            axis.set_yticklabels([])
    page.figure(figure, "MACs, size and batch-64 latency relative to the reference")


def _reference_sentence(reference: pd.Series | None, compressed: pd.DataFrame) -> str:
    parts = []
    if reference is not None:
        parts.append(f"Reference accuracy {_cell(reference.get('accuracy', math.nan))}")
        if math.isfinite(_number(reference.get("macs"))):
            parts.append(
                f"{_cell(reference.get('params_total'))} parameters, "
                f"{_cell(reference.get('macs'))} MACs"
            )
    parts.append(f"{len(compressed)} compressed models")
    if len(compressed):
        parts.append("compressors: " + ", ".join(dict.fromkeys(compressed["compressor"])))
        parts.append("losses: " + ", ".join(dict.fromkeys(compressed["loss"])))
    return "; ".join(parts) + "."


def pipeline_report(
    summary: pd.DataFrame,
    model_metrics: dict[str, dict[str, float]],
    class_names: list[str],
    path: str | Path,
    title: str,
    notes: list[str] | None = None,
) -> Path:
    """Write the HTML page of one pipeline run (accuracy, mismatches, reduction factors, class
    and group fairness, costs, the comparison table) to `path`; returns `path`."""
    page = _Page(title, notes)
    reference = _reference_row(summary)
    compressed = _compressed(summary)
    colors = _loss_colors(list(compressed["loss"]))
    accuracy = math.nan if reference is None else _number(reference.get("accuracy"))
    page.lead(_reference_sentence(reference, compressed))

    page.section("Accuracy vs compression level")
    page.caption(
        "Test accuracy of each compressed model against its compression level: one line per "
        "alignment loss, one panel per compressor; quantizers (no level) get a panel of their "
        "own. Dashed: the reference."
    )
    _level_section(
        page,
        compressed,
        "accuracy",
        "accuracy",
        colors,
        interval=False,
        baseline=(accuracy, "reference") if math.isfinite(accuracy) else None,
    )

    page.section("Mismatches vs compression level")
    page.caption(
        "Test examples on which the compressed model's prediction differs from the reference's, "
        "with bootstrap confidence intervals as error bars. Lower is better."
    )
    _level_section(
        page, compressed, "mismatches", "mismatches", colors, interval=True, baseline=None
    )

    page.section("Reduction factor vs ce")
    page.caption(
        "Mismatches of plain cross-entropy fine-tuning (ce) at the same compression divided by "
        "the model's own, with paired bootstrap intervals: above 1, the loss keeps the model "
        "closer to its reference than ce does. ce itself is 1 by definition (dashed)."
    )
    _level_section(
        page,
        compressed[compressed["loss"] != "ce"],
        "reduction_factor",
        "reduction factor",
        colors,
        interval=True,
        baseline=(1.0, "ce"),
    )

    page.section("Per-class recall change")
    page.caption(
        "Recall of each class, compressed minus reference (red: the class lost recall). Grey: "
        "not measured."
    )
    _recall_section(page, compressed, model_metrics, class_names)

    page.section("Accuracy gap between groups")
    page.caption(
        "Per group column: the largest difference in accuracy between its groups, for every "
        "model, and how compression changed it (red: the gap widened)."
    )
    _group_section(page, summary, model_metrics)

    page.section("Costs relative to the reference")
    page.caption(
        "MACs, serialised size and CPU latency at batch 64 of each model, as a multiple of the "
        "reference's (dashed: 1). Unstructured sparsity keeps dense tensors: it changes "
        "neither MACs nor size (its gzip size, in the table, does shrink)."
    )
    _costs_section(page, summary)

    page.section("Comparison table")
    page.caption("The pipeline's summary table, one row per model (intervals: bootstrap).")
    metric_columns = [column for column in summary.columns if not _is_cost(column)]
    cost_columns = [column for column in summary.columns if _is_cost(column)]
    page.subheading("Metrics")
    page.table(summary[metric_columns])
    if cost_columns:
        page.subheading("Costs")
        page.table(summary[[c for c in ("name",) if c in summary] + cost_columns])
    return page.write(path)


def _is_cost(column: str) -> bool:
    return column in COST_COLUMNS or column.removesuffix("_ratio") in COST_COLUMNS


# --------------------------------------------------------------------------------------------
# Populations page


def _level_positions(levels: np.ndarray) -> tuple[np.ndarray, list[float], list[str]]:
    """x positions of the levels: the levels themselves, or, when some have no level (a
    quantizer), evenly spaced categories with "no level" last. Returns (x, ticks, labels)."""
    if np.isfinite(levels).all():
        unique = np.unique(levels)
        return levels, list(unique), [f"{level:g}" for level in unique]
    unique = sorted(set(levels[np.isfinite(levels)].tolist()))
    index = {level: position for position, level in enumerate(unique)}
    x = np.array([index[level] if np.isfinite(level) else len(unique) for level in levels], float)
    return x, list(range(len(unique) + 1)), [f"{level:g}" for level in unique] + ["no level"]


def _level_axis(axis: Any, levels: np.ndarray, ticks: list[float], labels: list[str]) -> None:
    """Tick the levels; categorical positions (some without a level) get half a slot of margin
    so the end points do not sit on the frame."""
    if len(ticks) <= 8:
        axis.set_xticks(ticks, labels)
    if not np.isfinite(levels).all():
        axis.set_xlim(-0.5, len(ticks) - 0.5)
    axis.set_xlabel("compression level")


def _pie_count_figure(summary: pd.DataFrame, colors: dict[str, str]) -> Figure:
    figure = Figure(figsize=(6.4, 3.6), layout="constrained")
    axis = figure.subplots()
    levels = _numbers(summary, "level")
    x, ticks, labels = _level_positions(levels)
    counts = _numbers(summary, "pie_count")
    losses = summary["loss"].astype(str).to_numpy()
    for loss, color in colors.items():
        chosen = losses == loss
        order = np.argsort(x[chosen], kind="stable")
        axis.plot(
            x[chosen][order], counts[chosen][order], marker="o", color=color, label=_plain(loss)
        )
    _level_axis(axis, levels, ticks, labels)
    axis.set_ylabel("PIEs (test examples)")
    top = max(1.0, float(np.nanmax(counts, initial=0)) * 1.12)
    axis.set_ylim(-0.03 * top, top)  # a little room below 0: zero counts stay visible
    fractions = _numbers(summary, "pie_fraction")
    usable = (counts > 0) & (fractions > 0)
    if usable.any():  # the same axis read as a fraction of the test split
        total = float(np.median(counts[usable] / fractions[usable]))
        secondary = axis.secondary_yaxis(
            "right", functions=(lambda c: c / total, lambda f: f * total)
        )
        secondary.set_ylabel("fraction of the test split")
    axis.grid(alpha=0.3)
    _legend(figure, [axis], "loss")
    return figure


def _top1_figure(summary: pd.DataFrame, losses: list[str]) -> Figure:
    figure, axes = _panels(len(losses), width=4.0, height=3.2)
    levels = _numbers(summary, "level")
    x, ticks, labels = _level_positions(levels)
    names = summary["loss"].astype(str).to_numpy()
    series = (
        ("reference_top1_on_pies", "dense on PIEs", "0.25", "-"),
        ("reference_top1_on_rest", "dense on the rest", "0.25", "--"),
        ("compressed_top1_on_pies", "compressed on PIEs", "#c0392b", "-"),
        ("compressed_top1_on_rest", "compressed on the rest", "#c0392b", "--"),
    )
    for axis, loss in zip(axes, losses, strict=True):
        chosen = names == loss
        order = np.argsort(x[chosen], kind="stable")
        for column, label, color, style in series:
            axis.plot(
                x[chosen][order],
                _numbers(summary, column)[chosen][order],
                marker="o",
                markersize=4,
                color=color,
                linestyle=style,
                label=label,
            )
        _level_axis(axis, levels, ticks, labels)
        axis.set_ylim(-0.03, 1.03)
        axis.set_title(f"loss {_plain(loss)}", fontsize=10)
        axis.set_ylabel("top-1 of the population")
        axis.grid(alpha=0.3)
    _legend(figure, axes)
    return figure


def _impact_section(page: _Page, impact: pd.DataFrame) -> None:
    needed = {"class", "change", "loss"}
    if not len(impact) or not needed <= set(impact.columns):
        page.note("No class impact to show (the impact table is empty).")
        return
    frame = impact.copy()
    frame["level"] = _numbers(frame, "level")
    frame["loss"] = frame["loss"].astype(str)
    if "impacted" in frame:
        marked = frame["impacted"].fillna(False).astype(bool).to_numpy()
        rule = "outlined and starred: p ≤ the run's significance level (column impacted)"
    else:
        marked = _numbers(frame, "p") <= 0.05
        rule = "outlined and starred: p ≤ 0.05"
    classes = list(dict.fromkeys(frame["class"].astype(str)))
    # one row per (level, loss) in the impact table's order; NaN (no level) is unequal to
    # itself and would make every row a new key, so such levels are keyed as None
    levels = [float(level) if np.isfinite(level) else None for level in frame["level"]]
    keys = list(dict.fromkeys(zip(levels, frame["loss"], strict=True)))
    matrix = np.full((len(keys), len(classes)), np.nan)
    stars = np.zeros((len(keys), len(classes)), bool)
    row_of = {key: row for row, key in enumerate(keys)}
    column_of = {name: column for column, name in enumerate(classes)}
    for key, name, change, hit in zip(
        zip(levels, frame["loss"], strict=True),
        frame["class"].astype(str),
        _numbers(frame, "change"),
        marked,
        strict=True,
    ):
        matrix[row_of[key], column_of[name]] = change
        stars[row_of[key], column_of[name]] = bool(hit)
    labels = [
        f"{'no level' if level is None else f'{level:g}'} / {loss} "
        f"({int(stars[row].sum())} impacted)"
        for row, (level, loss) in enumerate(keys)
    ]
    figure, axis = _heatmap_figure(labels, classes)
    image = _heatmap(axis, matrix, labels, classes, stars)
    axis.set_xlabel("class")
    figure.colorbar(image, ax=axis, label="normalised recall change", shrink=0.9)
    page.caption(
        "Per class, the compressed population's mean normalised recall minus the dense one's "
        f"(Welch t-test; {rule}). Rows: compression level / loss."
    )
    page.figure(figure, "class impact heatmap, level and loss by class")
    if not stars.any():
        page.note("No class is disparately impacted at any level.")


def populations_report(
    summary: pd.DataFrame,
    impact: pd.DataFrame,
    galleries: dict[str, str | Path],
    path: str | Path,
    title: str,
    notes: list[str] | None = None,
) -> Path:
    """Write the HTML page of one populations run (PIE counts, top-1 on PIEs and on the rest,
    impacted classes, PIE galleries, the tables) to `path`; returns `path`."""
    page = _Page(title, notes)
    losses = list(dict.fromkeys(summary["loss"].astype(str))) if "loss" in summary else []
    colors = _loss_colors(losses)
    if len(summary) and "pie_count" in summary:
        page.lead(
            f"{len(summary)} (level, loss) pairs; {int(np.nansum(_numbers(summary, 'pie_count')))} "
            "PIEs in all (examples whose modal label differs between the dense and the "
            "compressed population)."
        )

    page.section("PIE count vs compression level")
    page.caption(
        "Pruning Identified Exemplars: test examples on which the dense and the compressed "
        "population's most frequent predictions differ, one line per loss."
    )
    if len(summary) and {"pie_count", "loss"} <= set(summary.columns):
        page.figure(_pie_count_figure(summary, colors), "PIE count against compression level")
        if not np.nansum(_numbers(summary, "pie_count")):
            page.note("No PIEs at any level: the populations agree on every test example.")
    else:
        page.note("No figure: the summary is empty.")

    page.section("Top-1 on PIEs and on the rest")
    page.caption(
        "Top-1 accuracy of the dense (grey) and the compressed (red) population's members on "
        "the PIEs (solid) and on the other test examples (dashed), one panel per loss. Where "
        "there are no PIEs, top-1 on them is undefined and not drawn."
    )
    if len(summary) and losses:
        page.figure(_top1_figure(summary, losses), "top-1 on PIEs and on the rest, per loss")
    else:
        page.note("No figure: the summary is empty.")

    page.section("Impacted classes")
    _impact_section(page, impact)

    page.section("PIE galleries")
    page.caption("PIEs each population is surest about: true label / dense mode / compressed mode.")
    if not galleries:
        page.note("No galleries.")
    for caption, gallery in galleries.items():
        page.subheading(caption)
        gallery = Path(gallery)
        data = gallery.read_bytes() if gallery.is_file() else b""
        if not data.startswith(PNG_SIGNATURE):
            page.note(f"Not shown: {gallery.name} is missing or not a PNG.")
            continue
        page.image(data, caption)

    page.section("Tables")
    page.subheading("PIE summary")
    page.table(summary)
    page.subheading("Class impact")
    hits = impact["impacted"].fillna(False).astype(bool).tolist() if "impacted" in impact else None
    first = [column for column in ("level", "loss") if column in impact]  # the row's key first
    page.table(impact[first + [c for c in impact.columns if c not in first]], hits)
    return page.write(path)
