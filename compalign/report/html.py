"""Self-contained HTML pages of a pipeline run, a populations run and an audit of models you
bring, each a `compalign.report.page.Page` built section by section from the figures of
`compalign.report.figures` and the tables of a run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from compalign.costs import COST_METRICS
from compalign.report.figures import (
    candidate_mismatch_figure,
    class_impact_figure,
    compressed_rows,
    costs_figure,
    group_columns,
    group_gap_figure,
    impact_marks,
    level_figure,
    loss_colors,
    pie_count_figure,
    recall_change_figure,
    top1_figure,
)
from compalign.report.page import Page
from compalign.report.search import layers_section
from compalign.report.values import cell_text, column_floats, metric_text, reference_row, to_float

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
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
    page: Page,
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
    page: Page,
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
    page: Page, summary: pd.DataFrame, model_metrics: dict[str, dict[str, float]]
) -> None:
    columns = group_columns(model_metrics)
    if not columns:
        page.note("This run audits no groups (no group.<column>.accuracy_gap metrics).")
        return
    for column in columns:
        figure = group_gap_figure(summary, model_metrics, column)
        page.subheading(f"Group column {column}")
        page.figure(figure, f"accuracy gap between the groups of {column} and its change")


def _costs_section(page: Page, summary: pd.DataFrame) -> None:
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
    page = Page(title, notes)
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


def _impact_section(page: Page, impact: pd.DataFrame) -> None:
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
    page = Page(title, notes)
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
        return metric_text(column, value)
    return f"{metric_text(column, value)} [{metric_text(column, low)}, {metric_text(column, high)}]"


def _latency_text(row: pd.Series, size: int) -> str:
    """ "20.03 ms (19.8–21.3)", or with a fixed-batch model "1,165.00 ms (batch 1 x 64)"."""
    from compalign.costs import batching_label

    column = f"latency_ms_b{size}"
    value = to_float(row.get(column))
    if not math.isfinite(value):
        return "–"
    text = metric_text(column, value)
    low, high = to_float(row.get(f"{column}_p10")), to_float(row.get(f"{column}_p90"))
    if math.isfinite(low) and math.isfinite(high):
        text += f" ({metric_text(column, low)}–{metric_text(column, high)})"
    label = batching_label({"latency_fixed_batch": to_float(row.get("latency_fixed_batch"))}, size)
    return f"{text}, {label}" if label else text


def _verdict_value(verdict: Any) -> str:
    """The value a rule read, in its metric's number format ("not measured" for NaN)."""
    return (
        verdict.shown
        if math.isnan(verdict.value)
        else metric_text(verdict.rule.metric, verdict.value)
    )


def _card(
    row: pd.Series, with_floor: bool, verdicts: Sequence[Any], reference: pd.Series | None = None
) -> dict[str, Any]:
    """A candidate's card: the gate's verdict on it (each rule, its value and bound), accuracy
    change, mismatches with their interval, the noise floor, the other headline numbers.
    Red when a rule failed, green when every rule held; without rules, red when even the low
    end of its mismatches' interval is above the noise floor (or, without a second reference,
    above zero)."""
    name = str(row["name"])
    rows = [
        ["accuracy", metric_text("accuracy", row.get("accuracy"))],
        ["Δ accuracy", metric_text("accuracy_change", row.get("accuracy_change"))],
        ["mismatches [95% CI]", _interval(row, "mismatches")],
        ["…reference right", _interval(row, "mismatches_ref_correct")],
    ]
    floor = to_float(row.get("noise_floor_mismatches"))
    if with_floor:
        rows.append(["noise floor (reference2)", _interval(row, "noise_floor_mismatches")])
    rows += [
        [
            "worst class Δ recall",
            metric_text("worst_class_recall_change", row.get("worst_class_recall_change")),
        ],
    ]
    if math.isfinite(to_float(row.get("attribution_agreement"))):
        rows.append(
            [
                "attribution agreement ρ",
                metric_text("attribution_agreement", row.get("attribution_agreement")),
            ]
        )
    rows.append(["ECE Δ", metric_text("ece_change", row.get("ece_change"))])
    if math.isfinite(to_float(row.get("size_bytes_ratio"))):
        rows.append(
            ["size × reference", metric_text("size_bytes_ratio", row.get("size_bytes_ratio"))]
        )
    if math.isfinite(to_float(row.get("latency_ms_b64_ratio"))):
        from compalign.costs import batching_label, unreliable

        value = metric_text("latency_ms_b64_ratio", row.get("latency_ms_b64_ratio"))
        fixed = {"latency_fixed_batch": to_float(row.get("latency_fixed_batch"))}
        notes = [batching_label(fixed, 64)]
        loads = [row] + ([reference] if reference is not None else [])
        if any(
            unreliable(
                {
                    "latency_load": to_float(timed.get("latency_load")),
                    "latency_cores": to_float(timed.get("latency_cores")),
                }
            )
            for timed in loads
        ):
            notes.append("unreliable: load")
        shown = ", ".join(note for note in notes if note)
        rows.append(["latency b64 × reference", f"{value} ({shown})" if shown else value])
    low = to_float(row.get("mismatches_ci_low"))
    bound = floor if with_floor and math.isfinite(floor) else 0.0
    mine = [verdict for verdict in verdicts if verdict.candidate == name]
    if mine:
        status = "fail" if any(not verdict.passed for verdict in mine) else "pass"
    else:
        status = "flag" if math.isfinite(low) and low > bound else ""
    gate = [
        [
            verdict.rule.metric,
            f"{_verdict_value(verdict)} {verdict.rule.operator} {verdict.rule.bound:g}",
            "passed" if verdict.passed else "FAILED",
        ]
        for verdict in mine
    ]
    return {
        "name": name,
        "spec": f"{row.get('source', '')}: {row.get('spec', '')}",
        "status": status,
        "gate": gate,
        "rows": rows,
    }


# the comparison table's metric columns, in this order first (the rest of the summary's
# metric columns follow); the models' files come last, in a table of their own
LEADING = (
    "name",
    "role",
    "accuracy",
    "accuracy_change",
    "mismatches",
    "mismatches_ci_low",
    "mismatches_ci_high",
    "mismatches_ref_correct",
    "mismatches_ref_correct_ci_low",
    "mismatches_ref_correct_ci_high",
    "noise_floor_mismatches",
    "mismatches_above_noise_floor",
    "worst_class_recall_change",
    "attribution_agreement",
    "ece",
    "ece_change",
)
FILE_COLUMNS = ("name", "source", "spec", "sha256")


def _formatted(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell as text in its column's number format (compalign.report.values)."""
    return pd.DataFrame(
        {
            column: [
                value if column in ("name", "role") else metric_text(column, value)
                for value in frame[column]
            ]
            for column in frame.columns
        }
    )


def _costs_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Each model's costs as text: counts, sizes, latency with its spread, load and batching,
    compiled latency where measured, ratios to the reference."""
    from compalign.costs import unreliable

    sizes = sorted(
        int(column.removeprefix("latency_ms_b"))
        for column in summary.columns
        if column.startswith("latency_ms_b") and column.removeprefix("latency_ms_b").isdigit()
    )
    rows = []
    for _, row in summary.iterrows():
        shown = {
            "model": str(row["name"]),
            "load (1 min)": "–",
            "threads": metric_text("latency_threads", row.get("latency_threads")),
            "parameters": metric_text("params_total", row.get("params_total")),
            "nonzero": metric_text("params_nonzero", row.get("params_nonzero")),
            "MACs": metric_text("macs", row.get("macs")),
            "size (bytes)": metric_text("size_bytes", row.get("size_bytes")),
            "size ×": metric_text("size_bytes_ratio", row.get("size_bytes_ratio")),
        }
        for size in sizes:
            shown[f"latency b{size} ms: median (p10–p90)"] = _latency_text(row, size)
            shown[f"b{size} ×"] = metric_text(
                f"latency_ms_b{size}_ratio", row.get(f"latency_ms_b{size}_ratio")
            )
            compiled = to_float(row.get(f"latency_compiled_ms_b{size}"))
            if math.isfinite(compiled):
                shown[f"compiled b{size} ms"] = metric_text("latency_ms_b1", compiled)
        note = row.get("latency_compiled_note")
        if isinstance(note, str) and note:
            shown["compiled"] = note
        load = to_float(row.get("latency_load"))
        cores = to_float(row.get("latency_cores"))
        if math.isfinite(load):
            costs = {"latency_load": load, "latency_cores": cores}
            shown["load (1 min)"] = (
                f"{metric_text('latency_load', load)} on {metric_text('latency_cores', cores)} cores"
                + (": unreliable" if unreliable(costs) else "")
            )
        rows.append(shown)
    return pd.DataFrame(rows).fillna("–")


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
    verdicts: Sequence[Any] = (),
) -> Path:
    """Write the HTML page of `compalign audit` / compalign.audit_models to `path`: one card
    per candidate (the release gate's verdict on it, mismatches against the noise floor, the
    other headline numbers), then the gate's every rule, mismatches, per-class recall and group
    gap changes, costs (with their spread, the load they were taken at and how a fixed-batch
    model was timed), attribution maps, the layers that flip labels when localized, and the
    summary table, metrics first and the models' files last. A section with nothing to show is
    left out. Returns `path`."""
    from compalign.costs import unreliable

    page = Page(title, notes, template="compare.html.j2")
    candidates = summary[summary["role"] == "candidate"]
    with_floor = bool((summary["role"] == "reference2").any())
    reference = reference_row(summary)
    page.extra["cards"] = [
        _card(row, with_floor, verdicts, reference) for _, row in candidates.iterrows()
    ]
    if reference is not None:
        page.lead(
            f"Reference {reference.get('spec')} ({reference.get('source')}): accuracy "
            f"{metric_text('accuracy', reference.get('accuracy'))}."
        )
    if verdicts:
        failed = list(dict.fromkeys(v.candidate for v in verdicts if not v.passed))
        rules = list(dict.fromkeys(str(v.rule) for v in verdicts))
        page.lead(
            f"Release gate: {'failed by ' + ', '.join(failed) if failed else 'passed'} "
            f"({len(rules)} rule{'s' if len(rules) != 1 else ''}: {'; '.join(rules)}). A red "
            "card: a rule failed; green: every rule held."
        )
    else:
        page.lead(
            "No release rules were given (--fail-on). A red card: even the low end of the "
            "candidate's mismatch interval is above "
            + ("the noise floor." if with_floor else "zero.")
        )

    if verdicts:
        page.section("Release gate")
        page.caption(
            "Every rule on every candidate: the value the rule read, its bound, and whether it "
            "holds (a value the candidate's format cannot give fails its rule)."
        )
        rows = pd.DataFrame(
            [
                {
                    "candidate": v.candidate,
                    "rule": str(v.rule),
                    "value": _verdict_value(v),
                    "bound": f"{v.rule.operator} {v.rule.bound:g}",
                    "verdict": "passed" if v.passed else "FAILED",
                }
                for v in verdicts
            ]
        )
        page.table(rows, highlight=[not v.passed for v in verdicts], numbers=("value", "bound"))

    figure = candidate_mismatch_figure(summary)
    if figure is not None:
        page.section("Mismatches")
        page.caption(
            "Test examples on which each candidate's prediction differs from the reference's, "
            "all and where the reference is right, with paired bootstrap 95% intervals. Dashed: "
            "the second reference's mismatches (retrained with another seed), the noise floor."
        )
        page.figure(figure, "mismatches of each candidate against the reference")

    recall = recall_change_figure(
        summary[summary["role"] != "reference"], model_metrics, class_names
    )
    if recall is not None:
        page.section("Per-class recall change")
        page.caption(
            "Recall of each class, candidate minus reference (red: the class lost recall)."
        )
        page.figure(recall, "per-class recall change, models by classes")

    if group_columns(model_metrics):
        page.section("Accuracy gap between groups")
        page.caption(
            "Per group column: the largest difference in accuracy between its groups, for every "
            "model, and how the candidate changed it (red: the gap widened)."
        )
        _group_section(page, summary, model_metrics)

    costs_figure_, missing = costs_figure(summary)
    if costs_figure_ is not None:
        page.section("Costs relative to the reference")
        page.caption(
            "MACs (PyTorch modules only), size of the model's files and CPU latency at batch "
            "64, as a multiple of the reference's (dashed: 1). Latency: the median of the timed "
            "passes, with the 10th and 90th percentiles; a model that only accepts one batch "
            'size is timed at that size and N images cost the calls they take ("batch 1 x '
            "64\"). Taken under more load than the machine's cores, a latency is marked "
            "unreliable."
        )
        if missing:
            page.note(f"Not measured, left out: {', '.join(missing)}.")
        loads = [
            {
                "latency_load": to_float(row.get("latency_load")),
                "latency_cores": to_float(row.get("latency_cores")),
            }
            for _, row in summary.iterrows()
        ]
        if any(unreliable(load) for load in loads):
            page.note(
                "Unreliable latency: the load average was above the cores while some models "
                "were timed (column load): other work shared the CPUs. Time them again on a "
                "quiet machine before comparing milliseconds."
            )
        page.figure(costs_figure_, "MACs, size and batch-64 latency relative to the reference")
        table = _costs_table(summary)
        page.table(
            table,
            numbers=[c for c in table.columns if c not in ("model", "compiled", "load (1 min)")],
        )

    if attribution_pngs:
        page.section("Attribution maps")
        page.caption(
            "Saliency and integrated gradients of the reference and each differentiable "
            "candidate, explaining the reference's prediction, on the examples of the fixed "
            "sample where the two models disagree most: first where their predictions differ, "
            "then the lowest rank correlation ρ of their maps (printed above each row). Click a "
            "model to unfold its figure."
        )
        for name, png in attribution_pngs.items():
            agreement = (
                to_float(summary.set_index("name")["attribution_agreement"].get(name))
                if "attribution_agreement" in summary
                else math.nan
            )
            label = f"{name}: mean ρ {metric_text('attribution_agreement', agreement)}"
            page.image(png, f"attribution maps of the reference and {name}", folded=label)

    if layers:
        layers_section(page, layers, layer_notes or {})

    page.section("Comparison table")
    page.caption(
        "One row per model (intervals: paired bootstrap 95%; – where not measured). The "
        "models' files and their sha256 digests follow."
    )
    metric_columns = [column for column in summary.columns if not _is_cost(column)]
    metric_columns = [c for c in metric_columns if c not in FILE_COLUMNS or c == "name"]
    metric_columns = [c for c in metric_columns if not c.startswith("latency_")]
    leading = [column for column in LEADING if column in metric_columns]
    ordered = leading + [column for column in metric_columns if column not in leading]
    page.subheading("Metrics")
    page.table(
        _formatted(summary[ordered]), numbers=[c for c in ordered if c not in ("name", "role")]
    )
    page.subheading("Model files")
    page.table(summary[[column for column in FILE_COLUMNS if column in summary]])
    return page.write(path)


def comparison_page(comparison: Any, path: str | Path, title: str | None = None) -> Path:
    """Write the self-contained HTML page of a compalign.compare.Comparison (what
    compalign.audit_models returns) to `path`: compare_report with its attribution figures
    drawn and its preprocessing noted. Returns `path`."""
    import tempfile

    from compalign.audit.metrics.attribution import FIGURE_FILE
    from compalign.report.figures import draw_figures

    pngs = {}
    for name, outputs in comparison.outputs.items():
        if FIGURE_FILE in outputs:
            with tempfile.TemporaryDirectory() as scratch:
                draw_figures({FIGURE_FILE: outputs[FIGURE_FILE]}, scratch)
                pngs[name] = (Path(scratch) / FIGURE_FILE).read_bytes()
    notes = [f"Preprocessing of every model: {comparison.transform}.", *comparison.notes]
    return compare_report(
        comparison.summary,
        comparison.metrics,
        comparison.class_names,
        path,
        title or "What the candidates changed against the reference",
        notes=notes,
        attribution_pngs=pngs,
        layers=comparison.layers,
        layer_notes=comparison.layer_notes,
        verdicts=comparison.verdicts,
    )


def write_comparison(
    comparison: Any, directory: str | Path, title: str | None = None
) -> dict[str, Path]:
    """Write everything of a compalign.compare.Comparison under `directory`: its tables and
    per-model files (Comparison.write), the figures its metrics left (the attribution
    agreement PNG in models/<name>/) and the HTML page (report.html). Returns the written
    paths by kind, the page's as "report"."""
    from compalign.compare import REPORT_FILE
    from compalign.report.figures import draw_comparison_figures

    written = comparison.write(directory)
    draw_comparison_figures(comparison, directory)
    written["report"] = comparison_page(comparison, Path(directory) / REPORT_FILE, title)
    return written
