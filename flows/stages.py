"""The pipeline's stages as DVC runs them: `compalign stage <name>`, fixed output paths.

DVC stage `<name>` runs the steps of the run graph (flows/graph.py `pipeline_steps`: the same
calls as the Prefect flow, with the same arguments) whose stage is `<name>`, or runs within it
(costs, in `audit`), each into its DVC path (the stage's declared `out`, tasks/infra/paths.py).
The same task functions as the flow's (called plainly, without the Prefect engine) and the same
content-addressed store: a step whose output the flow already made is copied from the store
instead of recomputed. A step's inputs made by an earlier DVC stage are read from that stage's
paths, dvc.yaml's deps.

The audit stage also records the run: an MLflow parent run for the audits and costs, one
metrics file per model (`dvc metrics show`), the tables of `dvc plots show`, the summary and the
HTML report.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pandas as pd

from compalign.config import Params
from compalign.data import read_manifest
from compalign.train import resolve_device
from flows.graph import Input, Step, audited_models, field_of, pipeline_steps, resolve
from tasks import stage
from tasks.audit import METRICS_FILE, PREDICTIONS_FILE
from tasks.infra.paths import (
    AUDIT_METRICS_DIR,
    AUDIT_PLOTS_DIR,
    AUDIT_SUMMARY_DIR,
    DATA_DIR,
)
from tasks.infra.store import artifact_of


def dvc_stage_of(name: str) -> str | None:
    """The DVC stage that runs stage `name`'s calls (its own, or the one it runs within)."""
    declared = stage(name)
    return name if declared.out is not None else declared.dvc_stage


def _fresh(directory: Path) -> Path:
    """An empty output directory (DVC removes outs before a stage runs; a direct call may not)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def run_steps(name: str, steps: list[Step]) -> dict[str, Any]:
    """Run, in graph order, the steps that DVC stage `name` runs; a step's inputs come from the
    steps run here, or from the DVC path of the step that made them. Returns the results by
    step id."""
    results: dict[str, Any] = {}
    by_id = {step.id: step for step in steps}
    mine = [step for step in steps if dvc_stage_of(step.stage) == name]
    for each in dict.fromkeys(step.stage for step in mine):
        out = stage(each).out
        if out is not None and out.endswith("/{model}"):  # what an earlier run left is removed
            _fresh(Path(out).parent)

    def lookup(source: Input) -> Any:
        if source.step in results:
            return field_of(results[source.step], source)
        made = by_id[source.step]
        return artifact_of(stage(made.stage).dvc_path(made.model))

    for step in mine:
        declared = stage(step.stage)
        arguments = resolve(step.arguments, lookup)
        if declared.out is not None:
            arguments["out_dir"] = declared.dvc_path(step.model)
        results[step.id] = declared.function(**arguments)
    return results


def run_stage(name: str, params: Params) -> None:
    """Run DVC stage `name` (one of tasks.dvc_stages()) with `params`."""
    if name == "audit":
        run_audit(params)
        return
    device = str(resolve_device(params.run.device))
    run_steps(name, pipeline_steps(params, device, {}, None))


def run_audit(params: Params) -> None:
    """Audit every model and measure its costs under one MLflow parent run, then write one
    metrics JSON per model for `dvc metrics show`, the tables of `dvc plots show`
    (compalign.report.plot_data), the summary and the HTML report."""
    # here, not at the top: the other stages' processes import neither MLflow nor the report
    from compalign.report.html import pipeline_report
    from compalign.report.plot_data import write_plot_data
    from compalign.report.tables import print_summary
    from tasks.infra import tracking
    from tasks.reports.pipeline import publish_summary

    _fresh(AUDIT_METRICS_DIR)
    device = str(resolve_device(params.run.device))
    track = tracking.setup(params.run.experiment)
    tags = {
        "orchestrator": "dvc",
        "model": params.reference.model,
        "device": device,
        "host": socket.gethostname(),
    }
    run_name = f"dvc-{params.data.source}-{params.reference.model}"
    with tracking.parent_run(track, run_name, params.flat(), tags) as parent:
        steps = pipeline_steps(params, device, track, parent)
        found = run_steps("audit", steps)
        results = [found[f"audit:{name}"] for name in audited_models(steps)]
        costs = {}
        for result in results:
            name = result["labels"]["name"]
            costs[name] = found[f"costs:{name}"]["costs"]
            metrics = json.loads((Path(result["path"]) / METRICS_FILE).read_text())
            metrics.update(costs[name])
            (AUDIT_METRICS_DIR / f"{name}.json").write_text(json.dumps(metrics, indent=2) + "\n")
        title = f"{params.data.source} / {params.reference.model}: what compression changed"
        summary = publish_summary(track, parent, results, AUDIT_SUMMARY_DIR, costs, title)
        class_names = read_manifest(DATA_DIR, verify=False)["class_names"]
        write_plot_data(
            summary,
            {
                result["labels"]["name"]: pd.read_parquet(Path(result["path"]) / PREDICTIONS_FILE)
                for result in results
            },
            class_names,
            params.audit.confidence_level,
            _fresh(AUDIT_PLOTS_DIR),
        )
        html = pipeline_report(
            summary,
            {result["labels"]["name"]: result["metrics"] for result in results},
            class_names,
            AUDIT_SUMMARY_DIR / "report.html",
            f"{title} (DVC)",
            notes=[f"MLflow parent run {parent}, experiment {params.run.experiment!r}."],
        )
        tracking.log_artifacts(track, parent, [("", html)])
    print_summary(summary)
    print(f"MLflow parent run {parent} (experiment {params.run.experiment!r}, {track['uri']})")
