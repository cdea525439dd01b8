"""The record of a `compalign search`: reports/search/{probes.parquet, chosen.json, report.html}
written whole or not at all, and the same on the search's MLflow parent run (its artifacts,
the chosen model's numbers as metrics, the answer as its description)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from compalign.files import atomic_directory
from compalign.report.search import probes_table, search_figure, search_report
from tasks.infra.tracking import (
    Tracking,
    log_artifacts,
    log_figure,
    log_metrics,
    log_table,
    set_description,
    set_tags,
)

PROBES_FILE = "probes.parquet"
CHOSEN_FILE = "chosen.json"
REPORT_FILE = "report.html"


def headline(chosen: dict[str, Any]) -> str:
    """The answer in Markdown: the chosen model, the probe above it, the test audit."""
    lines = [f"## compalign search: {chosen['method']} with loss {chosen['loss']}", ""]
    lines.append(f"Rules (validation split): {', '.join(f'`{r}`' for r in chosen['rules'])}.")
    lines.append("")
    lines.append(f"**Answer: {chosen['answer']}.**")
    if chosen["chosen"] is None:
        least = chosen["least_compressed"]
        lines.append("")
        lines += [f"- {least['name']}: {r['rule']} = {r['value']}" for r in least["rules"]]
        return "\n".join(lines) + "\n"
    answer = chosen["chosen"]
    if answer["float_layers"]:
        lines.append(f"Layers kept in float: {', '.join(answer['float_layers'])}.")
    following = chosen.get("next")
    if following is not None:
        values = ", ".join(f"{r['rule']} = {r['value']}" for r in following["rules"])
        lines.append(f"The probe above it fails: {following['name']} ({values}).")
    test = chosen["test_audit"]
    if test is not None:
        metrics = test["metrics"]
        lines.append(
            f"Test split: mismatches {metrics.get('mismatches')} "
            f"[{metrics.get('mismatches_ci_low')}, {metrics.get('mismatches_ci_high')}], "
            f"accuracy {metrics.get('accuracy')}."
        )
    lines.append(f"{chosen['probes']} probes ({chosen['probes_run']} computed by this run).")
    return "\n".join(lines) + "\n"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def publish_search(
    tracking: Tracking,
    parent_run_id: str,
    probes: pd.DataFrame,
    chosen: dict[str, Any],
    out_dir: str | Path,
    title: str,
) -> dict[str, Any]:
    """Write probes.parquet, chosen.json and report.html to `out_dir` (replaced whole), log
    them on the parent run with the chosen model's test numbers as metrics and the answer as
    its description; return the table and headline for the flow's Prefect artifacts."""
    chosen = _json_safe(chosen)
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as scratch:
        probes.to_parquet(scratch / PROBES_FILE, index=False)
        (scratch / CHOSEN_FILE).write_text(json.dumps(chosen, indent=2) + "\n")
        search_report(
            probes,
            chosen,
            scratch / REPORT_FILE,
            title,
            notes=[f"MLflow parent run {parent_run_id}."],
        )
    written = {name: out_dir / name for name in (PROBES_FILE, CHOSEN_FILE, REPORT_FILE)}
    log_artifacts(tracking, parent_run_id, [("", path) for path in written.values()])
    table = probes_table(probes, chosen["rules"])
    log_table(tracking, parent_run_id, table, "probes.json")
    figure = search_figure(
        probes,
        None if chosen["chosen"] is None else chosen["chosen"]["name"],
        chosen.get("reference_costs"),
    )
    if figure is not None:
        log_figure(tracking, parent_run_id, figure, "figures/mismatches_vs_cost.png")
    metrics = {"probes": float(chosen["probes"]), "probes_run": float(chosen["probes_run"])}
    answer = chosen["chosen"]
    if answer is not None:
        if answer["level"] is not None:
            metrics["chosen_level"] = float(answer["level"])
        metrics["chosen_float_layers"] = float(len(answer["float_layers"]))
        for key, value in (chosen["test_audit"] or {}).get("metrics", {}).items():
            if isinstance(value, int | float):
                metrics[f"test/{key}"] = float(value)
    log_metrics(tracking, parent_run_id, metrics)
    tags = {"search.answer": chosen["answer"]}
    if answer is not None:
        tags["search.chosen_run_id"] = (chosen["test_audit"] or {}).get("run_id", "")
        tags["search.float_layers"] = ",".join(answer["float_layers"])
    set_tags(tracking, parent_run_id, tags)
    text = headline(chosen)
    set_description(tracking, parent_run_id, text)
    return {"table": table, "headline": text, "chosen": chosen, "written": written}
