"""The HTML page of a comparison (compalign.compare): self-contained, rendered by Jinja2 with
autoescaping, figures inlined as base64 PNGs, no scripts and no links out."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 78rem; padding: 0 1rem;
       color: #222; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0 1.5rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; }
th.text, td.text { text-align: left; }
tr.hit td { background: #fdecea; }
.scroll { overflow-x: auto; }
.caption { color: #444; }
.note { color: #666; font-size: 0.9rem; }
img { max-width: 100%; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
{% for sentence in leads %}<p>{{ sentence }}</p>
{% endfor %}
{% for section in sections %}
<section>
<h2>{{ section.heading }}</h2>
{% for part in section.parts %}
{% if part.kind == "caption" %}<p class="caption">{{ part.text }}</p>
{% elif part.kind == "note" %}<p class="note">{{ part.text }}</p>
{% elif part.kind == "image" %}<img src="data:image/png;base64,{{ part.png }}" alt="{{ part.alt }}">
{% elif part.kind == "table" %}<div class="scroll"><table>
<thead><tr>{% for column in part.head %}<th{% if column.text %} class="text"{% endif %}>{{ column.value }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in part.rows %}<tr{% if row.hit %} class="hit"{% endif %}>{% for value in row.cells %}<td{% if value.text %} class="text"{% endif %}>{{ value.value }}</td>{% endfor %}</tr>
{% endfor %}
</tbody></table></div>
{% endif %}
{% endfor %}
</section>
{% endfor %}
</body>
</html>
"""
_TEMPLATES = jinja2.Environment(
    loader=jinja2.DictLoader({"compare.html.j2": PAGE}),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return f"{value:.4g}"
    return str(value)


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class _Page:
    def __init__(self, title: str) -> None:
        self.title = title
        self.leads: list[str] = []
        self.sections: list[dict[str, Any]] = []

    def section(self, heading: str) -> None:
        self.sections.append({"heading": heading, "parts": []})

    def add(self, kind: str, **part: Any) -> None:
        self.sections[-1]["parts"].append({"kind": kind, **part})

    def table(self, frame: pd.DataFrame, highlight: list[bool] | None = None) -> None:
        text = [not pd.api.types.is_numeric_dtype(frame[column]) for column in frame.columns]
        head = [{"value": str(c), "text": t} for c, t in zip(frame.columns, text, strict=True)]
        rows = [
            {
                "cells": [
                    {"value": _text(v), "text": t} for v, t in zip(values, text, strict=True)
                ],
                "hit": bool(highlight[position]) if highlight is not None else False,
            }
            for position, values in enumerate(frame.itertuples(index=False, name=None))
        ]
        self.add("table", head=head, rows=rows)

    def write(self, path: Path) -> Path:
        html = _TEMPLATES.get_template("compare.html.j2").render(
            title=self.title, leads=self.leads, sections=self.sections
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html, encoding="utf-8")
        return path


def mismatch_figure(summary: pd.DataFrame) -> Figure | None:
    """Mismatches of each candidate (all, and where the reference is right) with their
    bootstrap intervals; the second reference's, the noise floor, dashed."""
    rows = summary[summary["role"] == "candidate"]
    if not len(rows):
        return None
    figure = Figure(figsize=(max(4.0, 1.2 * len(rows) + 2), 3.2), layout="constrained")
    axis = figure.subplots()
    positions = np.arange(len(rows))
    for offset, column, label in (
        (-0.18, "mismatches", "all"),
        (0.18, "mismatches_ref_correct", "reference right"),
    ):
        values = rows[column].to_numpy(dtype=float)
        low = values - rows[f"{column}_ci_low"].to_numpy(dtype=float)
        high = rows[f"{column}_ci_high"].to_numpy(dtype=float) - values
        errors = np.nan_to_num(np.vstack([low, high]))
        axis.bar(positions + offset, values, 0.36, yerr=errors, capsize=3, label=label)
    floor = summary[summary["role"] == "reference2"]
    if len(floor):
        axis.axhline(
            float(floor["mismatches"].iloc[0]), color="k", linestyle="--", label="reference2"
        )
    axis.set_xticks(positions, list(rows["name"]))
    axis.set_ylabel("mismatches")
    axis.legend(fontsize=8)
    return figure


def compare_report(comparison: Any, path: str | Path, title: str | None = None) -> Path:
    """Write the page of a `Comparison`: the headline, mismatches against the noise floor, the
    summary table, per-class recall changes, group gaps, costs, attribution figures."""
    summary = comparison.summary
    page = _Page(title or "What compression changed: audit of the candidates")
    reference = summary[summary["role"] == "reference"].iloc[0]
    page.leads.append(
        f"Reference {reference['spec']} ({reference['source']}): accuracy "
        f"{_text(reference['accuracy'])} on {len(comparison.predictions)} test examples. "
        f"Preprocessing: {comparison.transform}."
    )
    floor = summary[summary["role"] == "reference2"]
    if len(floor):
        page.leads.append(
            f"A second reference ({floor['spec'].iloc[0]}) disagrees with the first on "
            f"{_text(floor['mismatches'].iloc[0])} examples: the noise floor of retraining."
        )
    page.leads += comparison.notes

    page.section("Mismatches")
    page.add(
        "caption",
        text="Test examples on which each candidate's prediction differs from the reference's, "
        "with paired bootstrap intervals; dashed: the second reference's (noise floor).",
    )
    figure = mismatch_figure(summary)
    if figure is not None:
        page.add("image", png=_png(figure), alt="mismatches per candidate")
    columns = [
        "name",
        "role",
        "source",
        "accuracy",
        "accuracy_change",
        "mismatches",
        "mismatches_ci_low",
        "mismatches_ci_high",
        "mismatches_ref_correct",
        "noise_floor_mismatches",
        "worst_class_recall_change",
        "group",
        "group_gap_change",
        "attribution_agreement",
        "ece",
        "ece_change",
    ]
    page.section("Summary")
    page.table(summary[[column for column in columns if column in summary]])

    page.section("Per-class recall change")
    page.add("caption", text="Recall of each class, candidate minus reference (rows: classes).")
    recall = pd.DataFrame({"class": comparison.class_names})
    for name in comparison.metrics:
        if name == "reference":
            continue
        recall[name] = [
            comparison.metrics[name].get(f"recall_change.{cls}", math.nan)
            for cls in comparison.class_names
        ]
    worst = recall.drop(columns="class").min(axis=1, skipna=True).to_numpy()
    page.table(recall, highlight=list(np.nan_to_num(worst) < 0))

    groups = sorted(
        {
            key.split(".")[1]
            for metrics in comparison.metrics.values()
            for key in metrics
            if key.startswith("group.") and key.endswith(".accuracy_gap")
        }
    )
    if groups:
        page.section("Accuracy gap between groups")
        table = pd.DataFrame({"model": list(comparison.metrics)})
        for column in groups:
            for suffix in ("accuracy_gap", "accuracy_gap_change"):
                table[f"{column} {suffix}"] = [
                    metrics.get(f"group.{column}.{suffix}", math.nan)
                    for metrics in comparison.metrics.values()
                ]
        page.table(table)

    cost_columns = [c for c in summary.columns if c.startswith(("params", "macs", "size", "lat"))]
    if cost_columns:
        page.section("Costs")
        page.add(
            "caption",
            text="Parameters, MACs (PyTorch modules only), size of the model's files, CPU "
            "latency; `_ratio`: relative to the reference. –: not measurable for the format.",
        )
        page.table(summary[["name", *cost_columns]])

    figures = {
        name: outputs["attribution_agreement.png"]
        for name, outputs in comparison.outputs.items()
        if "attribution_agreement.png" in outputs
    }
    if figures:
        import tempfile

        page.section("Attribution maps")
        for name, write in figures.items():
            with tempfile.TemporaryDirectory() as scratch:
                file = Path(scratch) / "figure.png"
                write(file)
                encoded = base64.b64encode(file.read_bytes()).decode("ascii")
            page.add("caption", text=f"{name}: reference and candidate maps side by side.")
            page.add("image", png=encoded, alt=f"attribution maps of {name}")
    return page.write(Path(path))
