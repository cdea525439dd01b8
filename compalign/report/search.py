"""The page of a `compalign search` (reports/search/report.html) and the layer table section of
`compalign audit --localize`: the probes with each rule's value and bound, mismatches against
cost with the chosen model marked, the layers kept in float, the test audit."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from compalign.report.figures import _error_bars, _panels
from compalign.report.page import Page
from compalign.report.values import cell_text, column_floats, to_float

# the costs mismatches are drawn against, in this order of preference: (column, axis label)
COST_AXES = (
    ("size_gzip_bytes", "size, gzip-compressed (bytes)"),
    ("latency_ms_b64", "CPU latency at batch 64 (ms)"),
    ("macs", "MACs"),
)


def search_figure(
    probes: pd.DataFrame, chosen: str | None, reference_costs: dict[str, Any] | None = None
) -> Figure | None:
    """Mismatches on the validation split (bootstrap intervals) of every probe against its
    cost, one panel per cost that varies between probes; green: meets the rules, red: fails;
    the chosen probe ringed, the reference drawn at 0 mismatches. None without probes."""
    if not len(probes):
        return None
    axes_shown = [
        (column, label)
        for column, label in COST_AXES
        if np.unique(column_floats(probes, column)[np.isfinite(column_floats(probes, column))]).size
        > 1
    ] or [COST_AXES[0]]
    figure, axes = _panels(len(axes_shown), width=4.6, height=3.4)
    passes = probes["passes"].astype(bool).to_numpy()
    mismatches = column_floats(probes, "mismatches")
    errors = _error_bars(probes, "mismatches")
    for axis, (column, label) in zip(axes, axes_shown, strict=True):
        cost = column_floats(probes, column)
        for mask, color, text in (
            (passes, "tab:green", "meets the rules"),
            (~passes, "tab:red", "fails"),
        ):
            if mask.any():
                axis.errorbar(
                    cost[mask],
                    mismatches[mask],
                    yerr=None if errors is None else errors[:, mask],
                    fmt="o",
                    color=color,
                    capsize=3,
                    label=text,
                )
        if chosen is not None and (probes["name"] == chosen).any():
            row = probes["name"] == chosen
            axis.scatter(
                cost[row],
                mismatches[row],
                s=220,
                facecolors="none",
                edgecolors="black",
                linewidths=1.6,
                label="chosen",
                zorder=5,
            )
        for x, y, text in zip(cost, mismatches, _point_labels(probes), strict=True):
            if math.isfinite(x) and math.isfinite(y):
                axis.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        base = to_float((reference_costs or {}).get(column))
        if math.isfinite(base):
            axis.scatter([base], [0.0], marker="s", color="0.4", label="reference", zorder=4)
        axis.set_xlabel(label)
        axis.set_ylabel("mismatches vs reference (validation)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return figure


def _point_labels(probes: pd.DataFrame) -> list[str]:
    """What each probe's point is labelled with: its level, or the layers it keeps in float."""
    levels = column_floats(probes, "level")
    kept = probes["float_layers"] if "float_layers" in probes else pd.Series([""] * len(probes))
    return [
        f"{level:g}" if math.isfinite(level) else (f"float {layers}" if layers else "all int8")
        for level, layers in zip(levels, kept, strict=True)
    ]


def _rule_columns(probes: pd.DataFrame, rules: Sequence[str]) -> pd.DataFrame:
    """Each rule's column as `value (bound)` text, with a mark where it fails."""
    from compalign.gate import parse_rule

    shown = pd.DataFrame(index=probes.index)
    for text in rules:
        rule = parse_rule(text)
        values = column_floats(probes, text)
        shown[text] = [
            f"{cell_text(value)} {'✓' if rule.holds(value) else '✗'}" for value in values
        ]
    return shown


def probes_table(probes: pd.DataFrame, rules: Sequence[str]) -> pd.DataFrame:
    """The probes as the page and the Prefect artifact show them: what was probed, each rule's
    value (✓/✗ against its bound), mismatches with their interval, costs."""
    columns = [c for c in ("probe", "name", "level", "float_layers", "tried_layer") if c in probes]
    table = probes[columns].copy()
    if "recovered" in probes:
        table["recovered"] = probes["recovered"]
    table = table.join(_rule_columns(probes, rules))
    table["passes"] = probes["passes"].astype(bool)
    table["mismatches [CI]"] = [
        f"{cell_text(m)} [{cell_text(lo)}, {cell_text(hi)}]"
        for m, lo, hi in zip(
            column_floats(probes, "mismatches"),
            column_floats(probes, "mismatches_ci_low"),
            column_floats(probes, "mismatches_ci_high"),
            strict=True,
        )
    ]
    for column in ("accuracy", "size_bytes", "size_gzip_bytes", "latency_ms_b1", "latency_ms_b64"):
        if column in probes:
            table[column] = probes[column]
    if "cached" in probes:
        table["cached"] = probes["cached"].astype(bool)
    return table


def search_report(
    probes: pd.DataFrame,
    chosen: dict[str, Any],
    path: str | Path,
    title: str,
    notes: Sequence[str] | None = None,
) -> Path:
    """Write the page of one search (chosen.json's record `chosen`, probes.parquet's table)."""
    page = Page(title, notes)
    rules = chosen["rules"]
    page.lead(
        f"Rules, checked on the validation split: {', '.join(rules)}. Search: {chosen['search']}; "
        f"{chosen['probes']} probes, {chosen['probes_run']} of them computed by this run (the "
        "others came from the store)."
    )
    page.lead(f"Answer: {chosen['answer']}.")
    page.section("The answer")
    if chosen["chosen"] is None:
        least = chosen["least_compressed"]
        page.note(
            f"No model meets the rules: the least compressed probe {least['name']} has "
            f"{_rule_values(least['rules'])}."
        )
    else:
        answer = chosen["chosen"]
        page.caption(f"Chosen on validation: {answer['name']} ({_rule_values(answer['rules'])}).")
        if answer["float_layers"]:
            page.caption(f"Layers kept in float: {', '.join(answer['float_layers'])}.")
        following = chosen.get("next")
        if following is not None:
            page.caption(
                f"The probe above it, {following['name']}, fails: "
                f"{_rule_values(following['rules'])}."
            )
        test = chosen["test_audit"]
        if test is not None:
            metrics = test["metrics"]
            page.caption(
                f"Audited once on the test split ({test['name']}, MLflow run {test['run_id']}): "
                f"accuracy {cell_text(to_float(metrics.get('accuracy')))}, mismatches "
                f"{cell_text(to_float(metrics.get('mismatches')))} "
                f"[{cell_text(to_float(metrics.get('mismatches_ci_low')))}, "
                f"{cell_text(to_float(metrics.get('mismatches_ci_high')))}], where the "
                f"reference is right {cell_text(to_float(metrics.get('mismatches_ref_correct')))}"
                f" [{cell_text(to_float(metrics.get('mismatches_ref_correct_ci_low')))}, "
                f"{cell_text(to_float(metrics.get('mismatches_ref_correct_ci_high')))}]; size "
                f"{cell_text(to_float(metrics.get('size_bytes')))} bytes, latency at batch 1 "
                f"{cell_text(to_float(metrics.get('latency_ms_b1')))} ms."
            )
            rows = pd.DataFrame(test["rules"])
            if len(rows):
                page.subheading("The rules on the test split")
                page.table(rows)
    for pair in chosen.get("monotonicity_violations", []):
        page.note(
            f"Not monotone: level {pair[0]:g} meets the rules although level {pair[1]:g} fails; "
            "the answer is the highest passing level below the lowest failing one."
        )

    page.section("Mismatches against cost")
    page.caption(
        "Every probe's mismatches against the reference on the validation split (paired "
        "bootstrap intervals) against its cost; ringed: the chosen model; grey square: the "
        "reference."
    )
    figure = search_figure(
        probes,
        None if chosen["chosen"] is None else chosen["chosen"]["name"],
        chosen.get("reference_costs"),
    )
    if figure is None:
        page.note("No probes.")
    else:
        page.figure(figure, "mismatches against cost, per probe")

    page.section("Probes")
    page.caption(
        "In the order they were made (probes read from the store before the search first). "
        "Each rule's column: its value on the validation split, ✓ where it meets its bound."
    )
    page.table(probes_table(probes, rules), probes["passes"].astype(bool).tolist())
    return page.write(path)


def layers_section(
    page: Page, layers: dict[str, pd.DataFrame], notes: dict[str, list[str]]
) -> None:
    """The layer table of each localized candidate (compalign.localize), on an audit page."""
    page.section("Layers that flip labels")
    page.caption(
        "Per layer of each candidate: the mismatches it recovers when that one layer is the "
        "reference's again (weights restored; for an int8 layer, the model quantized again with "
        "it in float), and the SQNR of its output against the reference's on the test inputs "
        "(dB; low: far off; it includes what the layers before it changed)."
    )
    for name, frame in layers.items():
        page.subheading(name)
        for note in notes.get(name, []):
            page.note(note)
        page.table(frame, (pd.to_numeric(frame["recovered"]) > 0).tolist())


def _rule_values(rules: list[dict[str, Any]]) -> str:
    """ "metric = value (bound <= 10)" for each rule of a probe summary (chosen.json)."""
    from compalign.gate import parse_rule

    shown = []
    for entry in rules:
        rule = parse_rule(entry["rule"])
        shown.append(
            f"{rule.metric} = {cell_text(to_float(entry['value']))} "
            f"(bound {rule.operator} {rule.bound:g})"
        )
    return ", ".join(shown)


def answer_lines(chosen: dict[str, Any]) -> tuple[list[str], bool]:
    """What `compalign search` prints after its table (chosen.json's record): the answer, the
    probe above it, the test audit; and whether no model met the rules (exit code 1)."""
    if chosen["chosen"] is None:
        least = chosen["least_compressed"]
        return [
            f"none: the least compressed probe already fails ({least['name']}: "
            f"{_rule_values(least['rules'])})"
        ], True
    answer = chosen["chosen"]
    what = (
        f"level {answer['level']:g}"
        if answer["level"] is not None
        else f"{len(answer['float_layers'])} of {len(chosen.get('layers', []))} layers kept in "
        f"float: {', '.join(answer['float_layers']) or 'none'}"
    )
    lines = [
        f"Answer: {chosen['answer']} ({what}), the most compressed probe that meets every rule "
        f"on the validation split ({_rule_values(answer['rules'])})."
    ]
    layers = chosen.get("layers") or []
    if layers and len(answer["float_layers"]) == len(layers):
        lines.append(
            "Every layer is in float: no int8 layer fits this budget (the answer is the float "
            "model, as exported)."
        )
    following = chosen.get("next")
    if following is not None:
        lines.append(
            f"The probe above it fails: {following['name']} ({_rule_values(following['rules'])})."
        )
    for pair in chosen.get("monotonicity_violations", []):
        lines.append(
            f"warning: not monotone: level {pair[0]:g} meets the rules although the lower level "
            f"{pair[1]:g} fails (the answer stays below the lowest failing level)"
        )
    test = chosen["test_audit"]
    if test is not None:
        metrics = test["metrics"]

        def number(key: str) -> str:
            return cell_text(to_float(metrics.get(key)))

        held = ", ".join(f"{r['rule']} {'holds' if r['holds'] else 'FAILS'}" for r in test["rules"])
        lines.append(
            f"Test split, audited once: accuracy {number('accuracy')}, mismatches "
            f"{number('mismatches')} [{number('mismatches_ci_low')}, "
            f"{number('mismatches_ci_high')}], where the reference is right "
            f"{number('mismatches_ref_correct')} [{number('mismatches_ref_correct_ci_low')}, "
            f"{number('mismatches_ref_correct_ci_high')}]; size {number('size_bytes')} bytes, "
            f"gzip {number('size_gzip_bytes_ratio')} of the reference's, latency batch 1 "
            f"{number('latency_ms_b1')} ms; on test: {held}. MLflow run {test['run_id']}."
        )
        examples = chosen.get("examples") or {}
        if examples.get("val") and examples.get("test") and examples["val"] != examples["test"]:
            lines.append(
                f"(Counts scale with the split: validation has {examples['val']} examples, test "
                f"{examples['test']}; a bound on a count is tighter on the larger one.)"
            )
    lines.append(
        f"{chosen['probes']} probes, {chosen['probes_run']} computed by this run "
        "(the rest from the store)."
    )
    return lines, False


def print_probes(probes: pd.DataFrame, rules: Sequence[str], console: Any = None) -> None:
    """The probes as a terminal table (rich): each rule's value, ✓ or ✗ against its bound."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Probes (validation split)")
    shown = probes_table(probes, rules) if len(probes) else pd.DataFrame()
    layered = "float_layers" in shown and shown["float_layers"].astype(bool).any()
    keep = [
        column
        for column in shown.columns
        if column not in ("level", "accuracy", "latency_ms_b1", "size_gzip_bytes")
        and not (column == "name" and layered)  # the float layers say which probe it is
        and not (column in ("float_layers", "tried_layer") and not shown[column].astype(bool).any())
        and not (column == "recovered" and shown[column].isna().all())
    ]
    for column in keep:
        table.add_column(str(column), justify="left" if column in ("name",) else "right")
    for _, row in shown[keep].iterrows():
        table.add_row(*(cell_text(value) for value in row))
    (console or Console(width=160)).print(table)


def print_layers(
    layers: dict[str, list[dict[str, Any]]],
    notes: dict[str, list[str]] | None = None,
    shown: int = 5,
    console: Any = None,
) -> None:
    """Each localized candidate's first layers (the most recovered mismatches first), as
    terminal tables (rich); the whole table is layers.parquet."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=120)
    for name, rows in layers.items():
        frame = pd.DataFrame(rows)
        total = int(frame["mismatches"].iloc[0]) if len(frame) else 0
        table = Table(title=f"{name}: layers that flip labels ({total} mismatches on test)")
        for column in ("layer", "kind", "recovered", "mismatches_after", "sqnr_db"):
            table.add_column(column, justify="left" if column in ("layer", "kind") else "right")
        for _, row in frame.head(shown).iterrows():
            table.add_row(
                str(row["layer"]),
                str(row["kind"]),
                cell_text(row["recovered"]),
                cell_text(row["mismatches_after"]),
                cell_text(float(row["sqnr_db"])),
            )
        console.print(table)
        for note in (notes or {}).get(name, []):
            console.print(f"note: {note}")
        if len(frame) > shown:
            console.print(f"({len(frame) - shown} more layers in layers.parquet)")
