"""Every figure of the project: the pipeline and populations pages', the paper reports', the
attribution agreement grid of an audit and the PIE galleries of a populations run.

Figures are bare matplotlib `Figure`s (never pyplot: no global figure registry, so flows may
build them from worker threads). Functions return the Figure; `figure_png` and `save_png` turn it
into PNG bytes or a file.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from compalign.audit.base import FigureData
from compalign.audit.metrics.attribution import AgreementFigure
from compalign.compressors.base import LEVEL_KINDS
from compalign.losses.base import NO_FINE_TUNING
from compalign.report.values import column_floats, plain_label, reference_row, to_float

DPI = 100
LEVEL_AXIS = LEVEL_KINDS  # what a compressor's level measures, as an axis label
# The costs drawn relative to the reference: (summary column, axis label).
COST_PANELS = (
    ("macs", "MACs"),
    ("size_bytes", "size (bytes)"),
    ("latency_ms_b64", "latency, batch 64"),
)
# Unaligned models get a panel of their own when drawing them with the others would leave the
# others less than 1/SQUASH of the panel's height.
SQUASH = 4.0
IMPACT_P = 0.05  # the significance level of the impact heatmap when the frame has no `impacted`


def figure_png(figure: Figure) -> bytes:
    """PNG bytes of a matplotlib Figure (drawn at 100 dpi, cropped to its content)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # constrained layout warns, harmlessly, when long tick labels crowd small panels
        warnings.simplefilter("ignore", UserWarning)
        figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def save_png(figure: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write `figure` as a PNG to `path` (cropped to its content); returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


# --------------------------------------------------------------------------------------------
# Shared plotting pieces


def loss_colors(losses: Sequence[str]) -> dict[str, str]:
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
    value = column_floats(frame, column)
    below, above = value - column_floats(frame, low), column_floats(frame, high) - value
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
    axis.set_yticks(range(len(rows)), [plain_label(row) for row in rows], fontsize=8)
    axis.set_xticks(
        range(len(columns)),
        [plain_label(column) for column in columns],
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


def _barh(axis: Any, names: list[str], values: np.ndarray, colors: Any, xlabel: str) -> None:
    positions = np.arange(len(names))
    axis.barh(positions, np.nan_to_num(values, nan=0.0), color=colors)
    axis.set_yticks(positions, [plain_label(name) for name in names], fontsize=8)
    axis.invert_yaxis()  # the first model on top, as in the tables
    axis.set_xlabel(xlabel)
    axis.grid(axis="x", alpha=0.3)


# --------------------------------------------------------------------------------------------
# Pipeline page


def compressed_rows(summary: pd.DataFrame) -> pd.DataFrame:
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
    frame["sparsity"] = column_floats(frame, "sparsity")
    return frame


def _squashed(frame: pd.DataFrame, column: str, baseline: tuple[float, str] | None) -> bool:
    """Whether drawing the unaligned models (loss `none`) with the others would leave the others
    less than 1/SQUASH of the panel's height (the baseline, drawn in every panel, counts)."""
    unaligned = (frame["loss"] == NO_FINE_TUNING).to_numpy()
    if not unaligned.any() or unaligned.all():
        return False
    values = column_floats(frame, column)
    extra = [baseline[0]] if baseline is not None and math.isfinite(baseline[0]) else []
    others = np.concatenate([values[~unaligned], extra])
    every = np.concatenate([values, extra])
    others, every = others[np.isfinite(others)], every[np.isfinite(every)]
    if len(others) < 2:
        return False
    spread = float(np.ptp(others))
    return spread > 0 and float(np.ptp(every)) > SQUASH * spread


def _level_panels(count: int, split: Sequence[bool]) -> tuple[Figure, list[Any], list[Any | None]]:
    """`count` panels, at most three a row; where `split` is true a second, lower panel below
    (sharing its x axis). Returns the figure, the panels and the lower panels (None where none)."""
    if not any(split):
        figure, axes = _panels(count)
        return figure, axes, [None] * count
    columns = min(count, 3)
    blocks = -(-count // columns)
    figure = Figure(figsize=(4.3 * columns + 1.4, 5.5 * blocks), layout="constrained")
    grid = figure.add_gridspec(2 * blocks, columns, height_ratios=[3.3, 2.2] * blocks)
    axes, lower = [], []
    for index in range(count):
        row, column = 2 * (index // columns), index % columns
        if split[index]:
            axes.append(figure.add_subplot(grid[row, column]))
            lower.append(figure.add_subplot(grid[row + 1, column], sharex=axes[-1]))
        else:
            axes.append(figure.add_subplot(grid[row : row + 2, column]))
            lower.append(None)
    return figure, axes, lower


def _levelled_lines(
    axis: Any,
    frame: pd.DataFrame,
    column: str,
    colors: dict[str, str],
    interval: bool,
    span: float,
) -> None:
    present = [loss for loss in colors if (frame["loss"] == loss).any()]
    for offset, loss in enumerate(present):
        part = frame[frame["loss"] == loss].sort_values("sparsity")
        # error bars of the losses at one level would hide each other: nudge them apart
        shift = (offset - (len(present) - 1) / 2) * 0.008 * span if interval else 0.0
        axis.errorbar(
            part["sparsity"].to_numpy(float) + shift,
            column_floats(part, column),
            yerr=_error_bars(part, column) if interval else None,
            marker="o",
            markersize=4,
            capsize=3,
            linewidth=1.4,
            color=colors[loss],
            label=plain_label(loss),
        )


def _unlevelled_points(
    axis: Any,
    frame: pd.DataFrame,
    names: list[str],
    column: str,
    colors: dict[str, str],
    interval: bool,
) -> None:
    present = [loss for loss in colors if (frame["loss"] == loss).any()]
    width = 0.8 / max(len(present), 1)
    for offset, loss in enumerate(present):
        part = frame[frame["loss"] == loss]
        shift = (offset - (len(present) - 1) / 2) * width
        axis.errorbar(
            [names.index(name) + shift for name in part["compressor"]],
            column_floats(part, column),
            yerr=_error_bars(part, column) if interval else None,
            fmt="o",
            markersize=5,
            capsize=3,
            color=colors[loss],
            label=plain_label(loss),
        )
    axis.set_xticks(range(len(names)), [plain_label(name) for name in names], rotation=20)
    axis.set_xlim(-0.6, len(names) - 0.4)


def level_figure(
    rows: pd.DataFrame,
    column: str,
    ylabel: str,
    colors: dict[str, str],
    *,
    interval: bool,
    baseline: tuple[float, str] | None,
) -> Figure:
    """`column` against the compression level, one line per loss, one panel per compressor
    with a level; compressors without one (quantizers) share a last panel, one point per loss.
    Where the unaligned models (loss `none`, audited straight after compression) sit so far from
    the rest that they would squash the other lines together, they get a panel of their own,
    on their own scale, below their compressor's."""
    levelled = rows[rows["level_kind"] != "none"]
    unlevelled = rows[rows["level_kind"] == "none"]
    groups: list[tuple[str | None, pd.DataFrame]] = [
        (compressor, levelled[levelled["compressor"] == compressor])
        for compressor in dict.fromkeys(levelled["compressor"])
    ]
    if len(unlevelled):
        groups.append((None, unlevelled))  # None: the quantizers' panel
    split = [_squashed(frame, column, baseline) for _, frame in groups]
    figure, axes, lower = _level_panels(len(groups), split)
    for axis, below, (compressor, frame) in zip(axes, lower, groups, strict=True):
        title = "quantizers" if compressor is None else plain_label(compressor)
        unaligned = frame["loss"] == NO_FINE_TUNING
        parts = [(axis, frame[~unaligned] if below is not None else frame)]
        if below is not None:
            parts.append((below, frame[unaligned]))
            below.set_title(f"{title}: loss {NO_FINE_TUNING} (unaligned)", fontsize=9)
        if compressor is None:
            names = list(dict.fromkeys(frame["compressor"]))
            for panel, part in parts:
                _unlevelled_points(panel, part, names, column, colors, interval)
            xlabel = "compressor (no level)"
        else:
            span = float(np.ptp(frame["sparsity"].to_numpy(float))) or 1.0
            for panel, part in parts:
                _levelled_lines(panel, part, column, colors, interval, span)
                _level_ticks(panel, frame["sparsity"].to_numpy(float))
            kinds = set(frame["level_kind"])
            xlabel = LEVEL_AXIS.get(kinds.pop(), "level") if len(kinds) == 1 else "level"
        (below if below is not None else axis).set_xlabel(xlabel)
        axis.set_title(title, fontsize=10)
    panels = [
        panel for pair in zip(axes, lower, strict=True) for panel in pair if panel is not None
    ]
    for axis in panels:
        if baseline is not None:
            axis.axhline(baseline[0], color="0.35", linestyle="--", linewidth=1, label=baseline[1])
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
    _legend(figure, panels, "loss")
    return figure


def recall_change_figure(
    compressed: pd.DataFrame,
    model_metrics: dict[str, dict[str, float]],
    class_names: list[str],
) -> Figure | None:
    """Heatmap of each model's per-class recall change (`recall_change.<class>` metrics), models
    by classes; None when no model has one."""
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
        return None
    matrix, names = matrix[keep], [name for name, kept in zip(names, keep, strict=True) if kept]
    figure, axis = _heatmap_figure(names, classes)
    image = _heatmap(axis, matrix, names, classes)
    axis.set_xlabel("class")
    figure.colorbar(image, ax=axis, label="recall change", shrink=0.9)
    return figure


def group_columns(model_metrics: dict[str, dict[str, float]]) -> list[str]:
    """The group columns audited (those with `group.<column>.accuracy_gap` metrics), sorted."""
    suffix = ".accuracy_gap"
    return sorted(
        {
            key[len("group.") : -len(suffix)]
            for metrics in model_metrics.values()
            for key in metrics
            if key.startswith("group.") and key.endswith(suffix)
        }
    )


def group_gap_figure(
    summary: pd.DataFrame, model_metrics: dict[str, dict[str, float]], column: str
) -> Figure:
    """Bars of each model's accuracy gap between the groups of `column` and, where measured,
    its change against the reference (red: wider)."""
    order = list(dict.fromkeys(list(summary["name"]) if "name" in summary else []))
    order += [name for name in model_metrics if name not in order]
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
    axes[0].set_title(f"gap between the groups of {plain_label(column)}", fontsize=10)
    if changes:
        values = np.array(list(changes.values()), dtype=float)
        # a wider gap is the harm: red; a narrower one blue
        colors = ["#c0392b" if value > 0 else "#2e6da4" for value in values]
        _barh(axes[1], list(changes), values, colors, "gap change vs reference")
        axes[1].axvline(0, color="0.3", linewidth=1)
        axes[1].set_title("change of the gap (compressed − reference)", fontsize=10)
    return figure


def _cost_ratio(summary: pd.DataFrame, column: str) -> np.ndarray | None:
    """The `<column>_ratio` column, or the ratio to the reference's value when only the raw
    column is there; None when neither gives a finite number."""
    if f"{column}_ratio" in summary:
        ratio = column_floats(summary, f"{column}_ratio")
    else:
        reference = reference_row(summary)
        base = math.nan if reference is None else to_float(reference.get(column))
        if not math.isfinite(base) or base == 0:
            return None
        ratio = column_floats(summary, column) / base
    return ratio if np.isfinite(ratio).any() else None


def costs_figure(summary: pd.DataFrame) -> tuple[Figure | None, list[str]]:
    """Bars of each model's MACs, size and batch-64 latency as a multiple of the reference's,
    and the labels of the costs not measured (left out); no figure when none is."""
    panels = [(label, _cost_ratio(summary, column)) for column, label in COST_PANELS]
    missing = [label for label, ratio in panels if ratio is None]
    panels = [(label, ratio) for label, ratio in panels if ratio is not None]
    if not panels:
        return None, missing
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
    return figure, missing


def candidate_mismatch_figure(summary: pd.DataFrame) -> Figure | None:
    """Bars of each candidate's mismatches against the reference (all, and where the reference
    is right) with their bootstrap intervals; dashed: the second reference's, the noise floor.
    None without candidates (`role` "candidate")."""
    rows = summary[summary["role"] == "candidate"]
    if not len(rows):
        return None
    figure, (axis,) = _panels(1, width=max(4.0, 1.1 * len(rows) + 2.2), height=3.2)
    positions = np.arange(len(rows))
    for offset, column, label in (
        (-0.19, "mismatches", "all"),
        (0.19, "mismatches_ref_correct", "reference right"),
    ):
        values = column_floats(rows, column)
        errors = _error_bars(rows, column)
        axis.bar(
            positions + offset, np.nan_to_num(values), 0.38, yerr=errors, capsize=3, label=label
        )
    floor = summary[summary["role"] == "reference2"]
    if len(floor):
        axis.axhline(
            to_float(floor["mismatches"].iloc[0]),
            color="0.2",
            linestyle="--",
            linewidth=1,
            label="noise floor (reference2)",
        )
    axis.set_xticks(positions, [str(name) for name in rows["name"]])
    axis.set_ylabel("mismatches vs reference")
    axis.legend(fontsize=8)
    return figure


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


def pie_count_figure(summary: pd.DataFrame, colors: dict[str, str]) -> Figure:
    """PIE count against compression level, one line per loss; the right axis reads it as a
    fraction of the test split."""
    figure = Figure(figsize=(6.4, 3.6), layout="constrained")
    axis = figure.subplots()
    levels = column_floats(summary, "level")
    x, ticks, labels = _level_positions(levels)
    counts = column_floats(summary, "pie_count")
    losses = summary["loss"].astype(str).to_numpy()
    for loss, color in colors.items():
        chosen = losses == loss
        order = np.argsort(x[chosen], kind="stable")
        axis.plot(
            x[chosen][order],
            counts[chosen][order],
            marker="o",
            color=color,
            label=plain_label(loss),
        )
    _level_axis(axis, levels, ticks, labels)
    axis.set_ylabel("PIEs (test examples)")
    top = max(1.0, float(np.nanmax(counts, initial=0)) * 1.12)
    axis.set_ylim(-0.03 * top, top)  # a little room below 0: zero counts stay visible
    fractions = column_floats(summary, "pie_fraction")
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


def top1_figure(summary: pd.DataFrame, losses: list[str]) -> Figure:
    """Top-1 of the dense and the compressed population on the PIEs and on the rest against
    compression level, one panel per loss."""
    figure, axes = _panels(len(losses), width=4.0, height=3.2)
    levels = column_floats(summary, "level")
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
                column_floats(summary, column)[chosen][order],
                marker="o",
                markersize=4,
                color=color,
                linestyle=style,
                label=label,
            )
        _level_axis(axis, levels, ticks, labels)
        axis.set_ylim(-0.03, 1.03)
        axis.set_title(f"loss {plain_label(loss)}", fontsize=10)
        axis.set_ylabel("top-1 of the population")
        axis.grid(alpha=0.3)
    _legend(figure, axes)
    return figure


def impact_marks(impact: pd.DataFrame) -> np.ndarray:
    """Which rows of the class impact table are disparately impacted: its `impacted` column, or
    p <= IMPACT_P when it has none."""
    if "impacted" in impact:
        return impact["impacted"].fillna(False).astype(bool).to_numpy()
    return column_floats(impact, "p") <= IMPACT_P


def class_impact_figure(impact: pd.DataFrame) -> Figure:
    """Heatmap of the normalised recall change per class (columns) and (level, loss) (rows),
    impacted cells outlined and starred. `impact` needs columns class, change and loss."""
    frame = impact.copy()
    frame["level"] = column_floats(frame, "level")
    frame["loss"] = frame["loss"].astype(str)
    marked = impact_marks(impact)
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
        column_floats(frame, "change"),
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
    return figure


def pie_gallery(
    images: Any,
    labels: np.ndarray,
    reference_modes: np.ndarray,
    compressed_modes: np.ndarray,
    class_names: list[str],
    path: str | Path,
    title: str = "",
    limit: int = 24,
    columns: int = 8,
) -> None:
    """PNG of up to `limit` PIEs, each titled with its true label and both modal labels.
    `images` are uint8 [n, C, H, W] (a CPU tensor or an array) with C = 1 or 3."""
    images = np.asarray(images)
    count = min(limit, len(labels))
    rows = max(1, -(-count // columns))
    figure = Figure(figsize=(1.6 * columns, 1.9 * rows + (0.4 if title else 0)))
    if title:
        figure.suptitle(title, fontsize=9)
    for index in range(rows * columns):
        axis = figure.add_subplot(rows, columns, index + 1)
        axis.axis("off")
        if index >= count:
            continue
        image = images[index].transpose(1, 2, 0)
        axis.imshow(
            image[..., 0] if image.shape[2] == 1 else image,
            cmap="gray" if image.shape[2] == 1 else None,
        )
        axis.set_title(
            f"y {class_names[labels[index]]}\ndense {class_names[reference_modes[index]]} / "
            f"comp {class_names[compressed_modes[index]]}",
            fontsize=7,
        )
    if count == 0:
        figure.text(0.5, 0.5, "no PIEs", ha="center", va="center")
    save_png(figure, path, dpi=100)


# --------------------------------------------------------------------------------------------
# Audit


# The agreement grid's geometry, in pixels at DPI: each cell a square panel under its caption.
CELL = (200, 190)  # height, width
PANEL = 150  # the longer side of a panel
CAPTION = 36  # the band above a panel that holds its caption
BORDER = (64, 64, 64)  # the frame drawn around each panel


def _fit(values: np.ndarray, side: int) -> np.ndarray:
    """`values` ([H, W] or [H, W, 3]) resized, nearest neighbour, to fit a `side` square with
    its aspect kept (what imshow shows when it magnifies a small image)."""
    height, width = values.shape[:2]
    scale = side / max(height, width)
    rows = np.minimum((np.arange(max(1, round(height * scale))) / scale).astype(int), height - 1)
    columns = np.minimum((np.arange(max(1, round(width * scale))) / scale).astype(int), width - 1)
    return values[rows[:, None], columns[None, :]]


def _heat(values: np.ndarray) -> np.ndarray:
    """An attribution map as uint8 RGB: inferno from 0 to the map's own maximum (imshow with
    vmin=0), white where it is NaN."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    top = values[finite].max() if finite.any() else 0.0
    scaled = np.clip(values / top, 0.0, 1.0) if top > 0 else np.zeros_like(values)
    rgb = colormaps["inferno"](np.where(finite, scaled, 0.0))[..., :3]
    rgb[~finite] = 1.0
    return np.round(rgb * 255).astype(np.uint8)


def draw_agreement(figure: AgreementFigure, path: str | Path) -> None:
    """The attribution metric's side-by-side figure (agreement_figure) from its data."""
    agreement_figure(figure.images, figure.maps, figure.captions, path, figure.examples)


# How each kind of figure data an audit metric leaves (compalign.audit.base.FigureData) is drawn
AUDIT_FIGURES: dict[type, Callable[[Any, Path], None]] = {AgreementFigure: draw_agreement}


def draw_figures(outputs: Mapping[str, Any], directory: str | Path) -> list[Path]:
    """Draw the figures an audit's metrics left in their outputs (the FigureData values; the
    other outputs are data files, compalign.audit.write_outputs) into `directory`, each under its
    name; returns the files written."""
    written = []
    for name, value in outputs.items():
        if not isinstance(value, FigureData):
            continue
        if type(value) not in AUDIT_FIGURES:
            raise TypeError(
                f"{name}: no drawing for {type(value).__name__}; add it to AUDIT_FIGURES"
            )
        AUDIT_FIGURES[type(value)](value, Path(directory) / name)
        written.append(Path(directory) / name)
    return written


def agreement_figure(
    images: Any,
    maps: dict[str, tuple[np.ndarray, np.ndarray]],
    captions: list[str],
    path: str | Path,
    examples: int = 6,
) -> None:
    """PNG grid of the first `examples` examples: the image, then per method reference and
    compressed maps side by side. `images` are uint8 [n, C, H, W] (a CPU tensor or an array)
    with C = 1 or 3.

    The panels are composed as pixels and drawn as one image, captions on top: a grid of
    matplotlib axes cost about a second per audited model, more than the rest of its audit."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [n, 1 or 3, H, W], got shape {tuple(images.shape)}")
    rows = min(examples, len(images))
    if rows < 1:
        raise ValueError("agreement_figure needs at least one example")
    if len(captions) < rows:
        raise ValueError(f"{rows} examples but {len(captions)} captions")
    for method, (reference, compressed) in maps.items():
        if len(reference) < rows or len(compressed) < rows:
            raise ValueError(f"maps[{method!r}] has fewer than {rows} examples")

    columns = 1 + 2 * len(maps)
    (cell_height, cell_width), height, width = CELL, CELL[0] * rows, CELL[1] * columns
    placed: list[tuple[int, int, np.ndarray]] = []  # (top, left, panel pixels)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    pixels = images[:rows].transpose(0, 2, 3, 1).astype(np.uint8)

    def place(row: int, column: int, rgb: np.ndarray, caption: str) -> None:
        # Each map panel is scaled to its own maximum: the models' gradient scales differ, and
        # the comparison is about where the attribution sits.
        panel = _fit(rgb, PANEL)
        top = row * cell_height + CAPTION
        left = column * cell_width + (cell_width - panel.shape[1]) // 2
        placed.append((top, left, panel))
        figure.text(
            (column + 0.5) * cell_width / width,
            1 - (row * cell_height + CAPTION - 8) / height,
            caption,
            ha="center",
            va="bottom",
            fontsize=7,
        )

    for row in range(rows):
        image = pixels[row]
        place(row, 0, np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image, captions[row])
        column = 1
        for method, pair in maps.items():
            for which, values in zip(("ref", "comp"), pair, strict=True):
                place(row, column, _heat(values[row]), f"{method} {which}")
                column += 1
    # the captions drawn by Agg on white, the panels pasted over it as pixels
    drawn = FigureCanvasAgg(figure)
    drawn.draw()
    page = np.asarray(drawn.buffer_rgba())[..., :3].copy()
    for top, left, panel in placed:
        panel_height, panel_width = panel.shape[:2]
        page[top - 1 : top + panel_height + 1, left - 1 : left + panel_width + 1] = BORDER
        page[top : top + panel_height, left : left + panel_width] = panel
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(page).save(path, format="PNG")


# --------------------------------------------------------------------------------------------
# Paper reports


def joseph_mismatch_figure(compressed: pd.DataFrame, floor: float | None = None) -> Figure:
    """Joseph et al.: mismatches against sparsity per loss, one panel per compressor, with their
    intervals (clipped at 0: a count is never negative) and the noise floor of two references."""
    methods = sorted(compressed.compressor.unique())
    figure = Figure(figsize=(5.2 * len(methods), 3.8))
    for index, method in enumerate(methods):
        axis = figure.add_subplot(1, len(methods), index + 1)
        for loss, group in compressed[compressed.compressor == method].groupby("loss"):
            group = group.sort_values("sparsity")
            low = np.maximum(group.mismatches_ci_low, 0)
            errors = [group.mismatches - low, group.mismatches_ci_high - group.mismatches]
            axis.errorbar(
                group.sparsity, group.mismatches, yerr=errors, marker="o", capsize=3, label=loss
            )
        if floor is not None:
            axis.axhline(floor, color="grey", linestyle=":", label="two references")
        axis.set_ylim(bottom=0)
        axis.set_title(method)
        axis.set_xlabel("sparsity")
        axis.set_ylabel("mismatches with the reference (test)")
        axis.legend()
    return figure


def meyer_group_figure(table: pd.DataFrame, group: str) -> Figure:
    """Meyer & Wong: the change of the gap between the groups of `group`, and accuracy, against
    the fraction of FLOPs removed, one line per loss."""
    figure = Figure(figsize=(10, 3.8))
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for loss, part in table.groupby("loss"):
        left.plot(part["FLOPs removed"], part["gap change vs reference"], marker="o", label=loss)
        right.plot(part["FLOPs removed"], part["accuracy"], marker="o", label=loss)
    left.axhline(0, color="grey", linewidth=0.8)
    left.set_xlabel("fraction of FLOPs removed")
    left.set_ylabel(f"accuracy gap between {group} groups: change")
    right.set_xlabel("fraction of FLOPs removed")
    right.set_ylabel("accuracy")
    left.legend()
    right.legend()
    return figure


def _interval_bars(axis: Any, x: Any, low: Any, high: Any, color: str) -> None:
    """Vertical bars from `low` to `high` at `x`, with caps (an interval, drawn apart from its
    point estimate)."""
    axis.vlines(x, low, high, color=color, linewidth=1)
    axis.plot(x, low, marker="_", color=color, linestyle="none", markersize=8)
    axis.plot(x, high, marker="_", color=color, linestyle="none", markersize=8)


def hooker_pie_figure(
    pruning: pd.DataFrame,
    quantization: dict[str, int],
    floor: tuple[float, float, float] | None = None,
    pruning_summary: pd.DataFrame | None = None,
) -> Figure:
    """Hooker et al.: PIE counts against sparsity with their intervals (`pie_low`, `pie_high`),
    the noise floor of a second dense population at sparsity 0, quantizers as dashed levels;
    and top-1 of the dense and the pruned population on PIEs and on the rest."""
    figure = Figure(figsize=(10, 3.8))
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    # a count over a population's modal labels can lie outside its interval from resampling
    # the members (resampling adds disagreement): the intervals are drawn as bars of their own,
    # never as errors around the point (which would be negative)
    if "pie_low" in pruning:
        _interval_bars(left, pruning.level, pruning.pie_low, pruning.pie_high, "C0")
    left.plot(pruning.level, pruning.pie_count, marker="o", color="C0", label="pruning")
    if floor is not None:
        count, low, high = floor
        _interval_bars(left, [0.0], [low], [high], "grey")
        left.plot([0.0], [count], marker="s", color="grey", label="second dense population")
    for method, count in quantization.items():
        left.axhline(count, linestyle="--", linewidth=1, label=method)
    left.set_ylim(bottom=0)
    left.set_xlabel("sparsity")
    left.set_ylabel("PIEs (test examples)")
    left.legend(fontsize=8)
    summary = pruning_summary if pruning_summary is not None else pruning
    if {"reference_top1_on_pies", "compressed_top1_on_pies"} <= set(summary.columns):
        right.plot(
            summary.level, summary.reference_top1_on_pies, marker="o", label="dense, on PIEs"
        )
        right.plot(
            summary.level, summary.reference_top1_on_rest, marker="o", label="dense, on the rest"
        )
        right.plot(
            summary.level, summary.compressed_top1_on_pies, marker="s", label="pruned, on PIEs"
        )
        right.plot(
            summary.level, summary.compressed_top1_on_rest, marker="s", label="pruned, on the rest"
        )
        right.legend(fontsize=8)
    right.set_xlabel("sparsity")
    right.set_ylabel("mean top-1 of the population")
    return figure


def draw_comparison_figures(comparison: Any, directory: str | Path) -> list[Path]:
    """Draw the figures of every model of a compalign.compare.Comparison into
    `directory`/models/<name>/, beside the files Comparison.write put there."""
    written: list[Path] = []
    for name, outputs in comparison.outputs.items():
        written += draw_figures(outputs, Path(directory) / "models" / name)
    return written
