"""Self-contained HTML pages of a pipeline run and of a populations run.

A page is built section by section here (headings, captions, notes, figures, tables) and
rendered by templates/page.html.j2 with autoescaping on, so every piece of text reaches the
HTML escaped. Figures come from `compalign.report.figures` and are inlined as base64 PNGs; the
page has no scripts and links nothing outside itself, so it opens offline, as an MLflow artifact
or a mail attachment.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from compalign.costs import COST_METRICS
from compalign.report.figures import (
    candidate_mismatch_figure,
    class_impact_figure,
    compressed_rows,
    costs_figure,
    figure_png,
    group_columns,
    group_gap_figure,
    impact_marks,
    level_figure,
    loss_colors,
    pie_count_figure,
    recall_change_figure,
    top1_figure,
)
from compalign.report.values import cell_text, column_floats, reference_row, to_float

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("compalign.report", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


class _Page:
    """An HTML page built section by section: captions, notes, figures, tables."""

    def __init__(
        self, title: str, notes: Sequence[str] | None, template: str = "page.html.j2"
    ) -> None:
        self.title = title
        self.leads = [str(note) for note in notes or []]
        self.sections: list[dict[str, Any]] = []
        self.template = template
        self.extra: dict[str, Any] = {}  # what a page's own template shows beyond the sections

    def lead(self, sentence: str) -> None:
        self.leads.append(sentence)

    def section(self, heading: str) -> None:
        anchor = f"section-{len(self.sections) + 1}"
        self.sections.append({"anchor": anchor, "heading": heading, "parts": []})

    def _add(self, kind: str, **part: Any) -> None:
        self.sections[-1]["parts"].append({"kind": kind, **part})

    def subheading(self, text: str) -> None:
        self._add("subheading", text=text)

    def caption(self, sentence: str) -> None:
        self._add("caption", text=sentence)

    def note(self, sentence: str) -> None:
        self._add("note", text=sentence)

    def figure(self, figure: Figure, alt: str) -> None:
        self.image(figure_png(figure), alt)

    def image(self, data: bytes, alt: str) -> None:
        self._add("image", png_base64=base64.b64encode(data).decode("ascii"), alt=alt)

    def table(self, frame: pd.DataFrame, highlight: Sequence[bool] | None = None) -> None:
        """`frame` as an HTML table; rows where `highlight` is true are shaded."""
        if not len(frame.columns):
            self.note("The table is empty.")
            return
        text = [
            not pd.api.types.is_numeric_dtype(frame[column])
            or pd.api.types.is_bool_dtype(frame[column])
            for column in frame.columns
        ]  # left-aligned: names, labels, flags
        head = [
            {"value": str(column), "text": left}
            for column, left in zip(frame.columns, text, strict=True)
        ]
        rows = [
            {
                "cells": [
                    {"value": cell_text(value), "text": left}
                    for value, left in zip(values, text, strict=True)
                ],
                "hit": highlight is not None and bool(highlight[position]),
            }
            for position, values in enumerate(frame.itertuples(index=False, name=None))
        ]
        self._add("table", head=head, rows=rows)
        if not len(frame):
            self.note("No rows.")

    def render(self) -> str:
        return _TEMPLATES.get_template(self.template).render(
            title=self.title, leads=self.leads, sections=self.sections, **self.extra
        )

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(), encoding="utf-8")
        return path


# --------------------------------------------------------------------------------------------
# Pipeline page


def _finite_rows(rows: pd.DataFrame, column: str, what: str) -> tuple[pd.DataFrame, list[str]]:
    """The rows whose `column` is finite, and a note naming the others."""
    values = column_floats(rows, column)
    keep = np.isfinite(values)
    notes = []
    if (~keep).any():
        left = ", ".join(
            f"{name} ({cell_text(value)})"
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
        level_figure(shown, column, ylabel, colors, interval=interval, baseline=baseline),
        f"{ylabel} against compression level, per loss and compressor",
    )
    for note in notes:
        page.note(note)


def _recall_section(
    page: _Page,
    compressed: pd.DataFrame,
    model_metrics: dict[str, dict[str, float]],
    class_names: list[str],
) -> None:
    figure = recall_change_figure(compressed, model_metrics, class_names)
    if figure is None:
        page.note("No figure: no model has per-class recall changes (recall_change.<class>).")
        return
    page.figure(figure, "per-class recall change, models by classes")


def _group_section(
    page: _Page, summary: pd.DataFrame, model_metrics: dict[str, dict[str, float]]
) -> None:
    columns = group_columns(model_metrics)
    if not columns:
        page.note("This run audits no groups (no group.<column>.accuracy_gap metrics).")
        return
    for column in columns:
        figure = group_gap_figure(summary, model_metrics, column)
        page.subheading(f"Group column {column}")
        page.figure(figure, f"accuracy gap between the groups of {column} and its change")


def _costs_section(page: _Page, summary: pd.DataFrame) -> None:
    figure, missing = costs_figure(summary)
    if figure is None:
        page.note("No figure: this summary has no cost measurements (MACs, size, latency).")
        return
    if missing:
        page.note(f"Not measured, left out: {', '.join(missing)}.")
    page.figure(figure, "MACs, size and batch-64 latency relative to the reference")


def _reference_sentence(reference: pd.Series | None, compressed: pd.DataFrame) -> str:
    parts = []
    if reference is not None:
        parts.append(f"Reference accuracy {cell_text(reference.get('accuracy', math.nan))}")
        if math.isfinite(to_float(reference.get("macs"))):
            parts.append(
                f"{cell_text(reference.get('params_total'))} parameters, "
                f"{cell_text(reference.get('macs'))} MACs"
            )
    parts.append(f"{len(compressed)} compressed models")
    if len(compressed):
        parts.append("compressors: " + ", ".join(dict.fromkeys(compressed["compressor"])))
        parts.append("losses: " + ", ".join(dict.fromkeys(compressed["loss"])))
    return "; ".join(parts) + "."


def _is_cost(column: str) -> bool:
    return column in COST_METRICS or column.removesuffix("_ratio") in COST_METRICS


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
    reference = reference_row(summary)
    compressed = compressed_rows(summary)
    colors = loss_colors(list(compressed["loss"]))
    accuracy = math.nan if reference is None else to_float(reference.get("accuracy"))
    page.lead(_reference_sentence(reference, compressed))

    page.section("Accuracy vs compression level")
    page.caption(
        "Test accuracy of each compressed model against its compression level: one line per "
        "alignment loss, one panel per compressor; quantizers (no level) get a panel of their "
        "own. Where the unaligned models (loss none, audited straight after compression) sit so "
        "far below the others that they would flatten their lines, they are drawn in a panel of "
        "their own, on their own scale, below their compressor's. Dashed: the reference."
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
        "with bootstrap confidence intervals as error bars. Lower is better. Far-off unaligned "
        "models (loss none) get a panel of their own, as above."
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


# --------------------------------------------------------------------------------------------
# Populations page


def _impact_section(page: _Page, impact: pd.DataFrame) -> None:
    needed = {"class", "change", "loss"}
    if not len(impact) or not needed <= set(impact.columns):
        page.note("No class impact to show (the impact table is empty).")
        return
    if "impacted" in impact:
        rule = (
            "outlined and starred: Benjamini-Hochberg adjusted p ≤ the run's significance level "
            "(column impacted; raw p in column p)"
        )
    else:
        rule = "outlined and starred: p ≤ 0.05"
    figure = class_impact_figure(impact)
    page.caption(
        "Per class, the compressed population's mean normalised recall minus the dense one's "
        f"(Welch t-test; {rule}). Rows: compression level / loss."
    )
    page.figure(figure, "class impact heatmap, level and loss by class")
    if not impact_marks(impact).any():
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
    colors = loss_colors(losses)
    if len(summary) and "pie_count" in summary:
        page.lead(
            f"{len(summary)} (level, loss) pairs; "
            f"{int(np.nansum(column_floats(summary, 'pie_count')))} PIEs in all (examples whose "
            "modal label differs between the dense and the compressed population)."
        )

    page.section("PIE count vs compression level")
    page.caption(
        "Pruning Identified Exemplars: test examples on which the dense and the compressed "
        "population's most frequent predictions differ, one line per loss."
    )
    if len(summary) and {"pie_count", "loss"} <= set(summary.columns):
        page.figure(pie_count_figure(summary, colors), "PIE count against compression level")
        if not np.nansum(column_floats(summary, "pie_count")):
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
        page.figure(top1_figure(summary, losses), "top-1 on PIEs and on the rest, per loss")
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


# --------------------------------------------------------------------------------------------
# Compare page (compalign audit)


def _interval(row: pd.Series, column: str) -> str:
    value = to_float(row.get(column))
    if not math.isfinite(value):
        return "–"
    low, high = to_float(row.get(f"{column}_ci_low")), to_float(row.get(f"{column}_ci_high"))
    if not (math.isfinite(low) and math.isfinite(high)):
        return cell_text(value)
    return f"{cell_text(value)} [{cell_text(low)}, {cell_text(high)}]"


def _card(row: pd.Series, with_floor: bool) -> dict[str, Any]:
    """A candidate's card: accuracy change, mismatches with their interval, the noise floor.
    Flagged when even the low end of its mismatches' interval is above the noise floor (or,
    without a second reference, above zero)."""
    change = to_float(row.get("accuracy_change"))
    rows = [
        ["accuracy", cell_text(to_float(row.get("accuracy")))],
        ["Δ accuracy", "–" if not math.isfinite(change) else f"{change:+.4f}"],
        ["mismatches [95% CI]", _interval(row, "mismatches")],
        ["…reference right", _interval(row, "mismatches_ref_correct")],
    ]
    floor = to_float(row.get("noise_floor_mismatches"))
    if with_floor:
        rows.append(["noise floor (reference2)", cell_text(floor)])
    rows += [
        ["worst class Δ recall", cell_text(to_float(row.get("worst_class_recall_change")))],
        ["ECE Δ", cell_text(to_float(row.get("ece_change")))],
    ]
    low = to_float(row.get("mismatches_ci_low"))
    bound = floor if with_floor and math.isfinite(floor) else 0.0
    return {
        "name": str(row["name"]),
        "spec": f"{row.get('source', '')}: {row.get('spec', '')}",
        "flag": math.isfinite(low) and low > bound,
        "rows": rows,
    }


def compare_report(
    summary: pd.DataFrame,
    model_metrics: dict[str, dict[str, float]],
    class_names: list[str],
    path: str | Path,
    title: str,
    notes: list[str] | None = None,
    attribution_pngs: dict[str, bytes] | None = None,
    layers: dict[str, pd.DataFrame] | None = None,
    layer_notes: dict[str, list[str]] | None = None,
) -> Path:
    """Write the HTML page of `compalign audit` / compalign.audit_models (one card per
    candidate, mismatches against the noise floor, per-class recall and group gap changes,
    costs, attribution maps, the layers that flip labels when localized, the summary table) to
    `path`; returns `path`."""
    page = _Page(title, notes, template="compare.html.j2")
    candidates = summary[summary["role"] == "candidate"]
    with_floor = bool((summary["role"] == "reference2").any())
    page.extra["cards"] = [_card(row, with_floor) for _, row in candidates.iterrows()]
    reference = reference_row(summary)
    if reference is not None:
        page.lead(
            f"Reference {reference.get('spec')} ({reference.get('source')}): accuracy "
            f"{cell_text(to_float(reference.get('accuracy')))}. A red card: even the low end "
            "of the candidate's mismatch interval is above "
            + ("the noise floor." if with_floor else "zero.")
        )

    page.section("Mismatches")
    page.caption(
        "Test examples on which each candidate's prediction differs from the reference's, all "
        "and where the reference is right, with paired bootstrap 95% intervals. Dashed: the "
        "second reference's mismatches (retrained with another seed), the noise floor."
    )
    figure = candidate_mismatch_figure(summary)
    if figure is None:
        page.note("No candidate.")
    else:
        page.figure(figure, "mismatches of each candidate against the reference")

    page.section("Per-class recall change")
    page.caption("Recall of each class, candidate minus reference (red: the class lost recall).")
    _recall_section(page, summary[summary["role"] != "reference"], model_metrics, class_names)

    page.section("Accuracy gap between groups")
    page.caption(
        "Per group column: the largest difference in accuracy between its groups, for every "
        "model, and how the candidate changed it (red: the gap widened)."
    )
    _group_section(page, summary, model_metrics)

    page.section("Costs relative to the reference")
    page.caption(
        "MACs (PyTorch modules only), size of the model's files and CPU latency at batch 64, as "
        "a multiple of the reference's (dashed: 1). A format that does not let a cost be "
        "measured (MACs of TorchScript, torch.export or ONNX) leaves it out."
    )
    _costs_section(page, summary)

    if attribution_pngs:
        page.section("Attribution maps")
        page.caption(
            "Saliency and integrated gradients of the reference and each differentiable "
            "candidate on a fixed sample of test images, explaining the reference's prediction."
        )
        for name, png in attribution_pngs.items():
            page.subheading(name)
            page.image(png, f"attribution maps of the reference and {name}")

    if layers:
        from compalign.report.search import layers_section

        layers_section(page, layers, layer_notes or {})

    page.section("Comparison table")
    page.caption("One row per model (intervals: bootstrap; costs: NaN where not measurable).")
    metric_columns = [column for column in summary.columns if not _is_cost(column)]
    cost_columns = [column for column in summary.columns if _is_cost(column)]
    page.subheading("Metrics")
    page.table(summary[metric_columns])
    if cost_columns:
        page.subheading("Costs")
        page.table(summary[["name", *cost_columns]])
    return page.write(path)
