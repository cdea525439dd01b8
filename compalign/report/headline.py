"""The headline of a run: what compression changed, per loss, in a few lines of Markdown; and
which compressed model of each loss changed its reference least at the highest level.

Used by the Prefect artifacts, the MLflow run description and the registered models' aliases;
pure pandas (no Prefect, MLflow or DVC here).
"""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

from compalign.audit.base import number

REFERENCE_ROLE = "reference"


def _finite(value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value


def _interval(row: pd.Series, column: str, digits: int = 0) -> str:
    """`12 [8, 17]`, or the count alone when the summary has no interval for it."""
    low, high = _finite(row.get(f"{column}_ci_low")), _finite(row.get(f"{column}_ci_high"))
    text = number(_finite(row.get(column)), digits)
    if math.isfinite(low) and math.isfinite(high):
        text += f" [{number(low, digits)}, {number(high, digits)}]"
    return text


def compressed(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary's rows that are not the reference."""
    if "role" not in summary:
        return summary
    return summary[summary["role"] != REFERENCE_ROLE]


def highest_level(summary: pd.DataFrame) -> pd.DataFrame:
    """The compressed rows at the highest level of their compressor (a compressor without
    levels, a quantizer, has one level: all its rows)."""
    rows = compressed(summary)
    if not len(rows) or "compressor" not in rows:
        return rows
    kinds = rows.get("level_kind", pd.Series("weight_sparsity", index=rows.index))
    levels = rows["sparsity"].astype(float).where(kinds != "none", 0.0)
    top = levels.groupby(rows["compressor"]).transform("max")
    return rows[levels == top]


def fewest_mismatches_per_loss(summary: pd.DataFrame) -> dict[str, str]:
    """{loss: name of the model with the fewest mismatches where the reference is right}, among
    the models at the highest level (ties: fewer mismatches overall, then higher accuracy, then
    the grid's order). Losses whose models have no finite count are left out."""
    rows = highest_level(summary)
    if not len(rows) or not {"mismatches_ref_correct", "loss"} <= set(rows.columns):
        return {}
    rows = rows.assign(
        _ref=rows["mismatches_ref_correct"].astype(float),
        _all=rows.get("mismatches", rows["mismatches_ref_correct"]).astype(float),
        _acc=-rows.get("accuracy", pd.Series(0.0, index=rows.index)).astype(float),
        _order=range(len(rows)),
    )
    rows = rows[rows["_ref"].notna()]
    ranked = rows.sort_values(["_ref", "_all", "_acc", "_order"], kind="stable")
    return {loss: group["name"].iloc[0] for loss, group in ranked.groupby("loss", sort=False)}


def _level_text(row: pd.Series) -> str:
    if "compressor" not in row:  # models you bring: their names
        return str(row.get("name", "model"))
    if row.get("level_kind", "weight_sparsity") == "none":
        return str(row["compressor"])
    return f"{row['compressor']} {float(row['sparsity']):g}"


def headline_markdown(summary: pd.DataFrame, title: str) -> str:
    """Markdown: the reference's accuracy, then per loss at the highest level what compression
    changed (accuracy and its change, mismatches and those where the reference is right, with
    their intervals), and which loss kept the reference's labels best."""
    lines = [f"## {title}", ""]
    reference = summary[summary["role"] == REFERENCE_ROLE] if "role" in summary else summary[:0]
    if len(reference):
        lines += [f"Reference accuracy: {number(_finite(reference['accuracy'].iloc[0]), 4)}.", ""]
    rows = highest_level(summary)
    if not len(rows):
        return "\n".join(lines + ["No compressed model in this run."]) + "\n"
    lines += [
        "At the highest compression level, per loss (intervals: bootstrap 95%):",
        "",
        "| model | loss | accuracy | Δ accuracy | mismatches | where the reference is right |",
        "|---|---|---|---|---|---|",
    ]
    for _, row in rows.iterrows():
        change = _finite(row.get("accuracy_change"))
        lines.append(
            f"| {_level_text(row)} | {row.get('loss', '–')} "
            f"| {number(_finite(row.get('accuracy')), 4)} "
            f"| {'–' if math.isnan(change) else f'{change:+.4f}'} "
            f"| {_interval(row, 'mismatches')} | {_interval(row, 'mismatches_ref_correct')} |"
        )
    best = fewest_mismatches_per_loss(summary)
    if best:
        by_count = rows.set_index("name")["mismatches_ref_correct"].astype(float)
        winner = min(best.values(), key=lambda name: by_count[name])
        lines += [
            "",
            f"Fewest mismatches where the reference is right: **{winner}** "
            f"({number(by_count[winner], 0)}).",
        ]
    return "\n".join(lines) + "\n"


def populations_headline(summary: pd.DataFrame, title: str) -> str:
    """Markdown: per loss at the highest level, the PIE count and fraction and the compressed
    population's top-1 against the dense one's."""
    lines = [f"## {title}", ""]
    if not len(summary):
        return "\n".join(lines + ["The populations' summary is empty."]) + "\n"
    levels = summary["level"].astype(float)
    top = summary[levels.isna() | (levels == levels.max())] if levels.notna().any() else summary
    lines += [
        f"Dense population top-1: {number(_finite(summary['reference_top1'].iloc[0]), 4)}.",
        "",
        "| level | loss | PIEs | PIE fraction | compressed top-1 | impacted classes |",
        "|---|---|---|---|---|---|",
    ]
    for _, row in top.iterrows():
        level = _finite(row["level"])
        lines.append(
            f"| {'–' if math.isnan(level) else f'{level:g}'} | {row['loss']} "
            f"| {number(_finite(row['pie_count']), 0)} | {number(_finite(row['pie_fraction']), 4)} "
            f"| {number(_finite(row['compressed_top1']), 4)} "
            f"| {number(_finite(row['impacted_classes']), 0)} |"
        )
    return "\n".join(lines) + "\n"


def code(text: Any) -> str:
    """`text` as a Markdown code span: shown as it is (a model spec's `@` is no mail link, its
    `_` no emphasis)."""
    text = str(text)
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if fence == "`" else f"{fence} {text} {fence}"


def gate_markdown(verdicts: list[Any]) -> list[str]:
    """The release gate as Markdown lines: a sentence per candidate, then every rule on every
    candidate with the value it read, its bound and whether it holds (none: no lines)."""
    if not verdicts:
        return []
    candidates = list(dict.fromkeys(v.candidate for v in verdicts))
    passed = [name for name in candidates if all(v.passed for v in verdicts if v.candidate == name)]
    rules = list(dict.fromkeys(str(v.rule) for v in verdicts))
    failed = [name for name in candidates if name not in passed]
    sentence = (
        f"**Release gate: {'failed' if failed else 'passed'}** "
        f"({len(rules)} rule{'s' if len(rules) != 1 else ''} on {len(candidates)} "
        f"candidate{'s' if len(candidates) != 1 else ''}"
        + (f"; failed: {', '.join(code(name) for name in failed)}" if failed else "")
        + ")."
    )
    lines = [sentence, "", "| candidate | rule | value | bound | result |", "|---|---|--:|--:|---|"]
    for verdict in verdicts:
        lines.append(
            f"| {code(verdict.candidate)} | {code(verdict.rule.metric)} | {verdict.shown} "
            f"| {verdict.rule.operator} {verdict.rule.bound:g} "
            f"| {'passed' if verdict.passed else '**FAILED**'} |"
        )
    return lines


def audit_headline(summary: pd.DataFrame, title: str, verdicts: list[Any] | None = None) -> str:
    """Markdown of an audit of models you bring: the reference's accuracy and the noise floor
    (a second reference), per candidate what it changed (accuracy and its change, mismatches
    and those where the reference is right, with their intervals) and its gate result, then
    the release gate's every rule. Names and specs are code spans (no mail links)."""
    verdicts = list(verdicts or [])
    # a model spec in the title (torchvision:resnet18@weights.pt) as code: no mail link
    lines = ["## " + re.sub(r"(\S*@\S*)", lambda found: code(found.group(1)), title), ""]
    roles = summary["role"] if "role" in summary else pd.Series("candidate", index=summary.index)
    reference = summary[roles == REFERENCE_ROLE]
    if len(reference):
        row = reference.iloc[0]
        lines += [
            f"Reference {code(row.get('spec', 'reference'))}: accuracy "
            f"{number(_finite(row.get('accuracy')), 4)}.",
            "",
        ]
    floor = summary[roles == "reference2"]
    if len(floor):
        lines += [
            f"Noise floor: a second reference ({code(floor.iloc[0].get('spec', ''))}, retrained "
            f"with another seed) differs from it on {_interval(floor.iloc[0], 'mismatches')} "
            "test examples.",
            "",
        ]
    candidates = summary[roles == "candidate"]
    if not len(candidates):
        return "\n".join(lines + ["No candidate in this audit."]) + "\n"
    gate = bool(verdicts)
    lines += [
        "What each candidate changed (intervals: paired bootstrap 95%):",
        "",
        "| candidate | accuracy | Δ accuracy | mismatches | where the reference is right"
        + (" | gate |" if gate else " |"),
        "|---|--:|--:|--:|--:|" + ("---|" if gate else ""),
    ]
    for _, row in candidates.iterrows():
        change = _finite(row.get("accuracy_change"))
        cells = [
            code(row.get("name", "model")),
            number(_finite(row.get("accuracy")), 4),
            "–" if math.isnan(change) else f"{change:+.4f}",
            _interval(row, "mismatches"),
            _interval(row, "mismatches_ref_correct"),
        ]
        if gate:
            mine = [v for v in verdicts if v.candidate == row.get("name")]
            cells.append("passed" if all(v.passed for v in mine) else "**FAILED**")
        lines.append("| " + " | ".join(cells) + " |")
    if gate:
        lines += ["", *gate_markdown(verdicts)]
    return "\n".join(lines) + "\n"
