"""Audit of models you bring (`compalign audit`): read the prepared test split, call the core
comparison (compalign.compare), write reports/compare/ (its files and page) and log a child run
per model; `log_to_mlflow` logs a comparison made from Python (compalign.audit_models).

Not cached in the store: the models are files outside it, read afresh each run (the prepared
data still comes from the store).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from compalign.compare import (
    REFERENCE,
    REFERENCE2,
    REPORT_FILE,
    Comparison,
    check_models,
    run_comparison,
)
from compalign.config import AuditParams, DataParams
from compalign.data import load_split, read_manifest
from compalign.errors import UserError
from compalign.files import atomic_directory
from compalign.localize import checkpoint_kind
from compalign.report.html import write_comparison
from tasks.infra.logs import stage_logger, step_reporter
from tasks.infra.store import Artifact, require
from tasks.infra.tracking import (
    Tracking,
    log_artifacts,
    log_child_once,
    log_metrics,
    log_table,
    set_description,
    set_tags,
)


def audit_brought_models(
    data: Artifact,
    reference: str,
    candidates: dict[str, str],
    reference2: str | None,
    data_params: dict[str, Any],
    audit: dict[str, Any],
    device: str,
    tracking: Tracking,
    parent_run_id: str,
    report_dir: str,
    localize: dict[str, Any] | None = None,
    rules: list[str] | None = None,
    dataset: str | None = None,
    progress_artifact: str | None = None,
) -> dict[str, Any]:
    """Audit each candidate spec against the reference spec on the test split; check the
    release `rules` (compalign.gate) on every candidate; write summary.parquet,
    predictions.parquet, gate.json, report.html (and models/<name>/) to `report_dir`, log a
    child run per model under `parent_run_id` and, on the parent, each model's headline
    numbers, the gate's verdicts and the headline as its description. Each step (a model's
    predictions, each metric, its costs) is a line of the task's log, a progress event and,
    with `progress_artifact`, that Prefect artifact's percentage. With `localize` (the
    calibration settings of the `compress` section: batches, batch_size), also find each
    candidate's layers that flip labels (layers.parquet; compalign.localize). Returns the
    summary rows, every model's gate metrics, the verdicts and the paths written. `dataset`
    names the data in titles (default: the prepared data's source)."""
    data_dir = require(data, "prepared dataset")
    manifest = read_manifest(data_dir)
    test = load_split(data_dir, "test", manifest)
    settings = DataParams.model_validate(data_params)
    prepared = check_models(
        reference,
        candidates,
        test,
        reference2=reference2,
        class_names=manifest["class_names"],
        class_map=settings.class_names,
        transform=settings.transform,
        options=AuditParams.model_validate(audit),
        device=device,
    )
    logger = stage_logger()
    logger.info("preprocessing: %s", prepared.transform)
    comparison = run_comparison(prepared, progress=step_reporter(progress_artifact))
    if localize is not None:
        calibration = None
        if any(
            checkpoint_kind(model.loaded) == "quantize_static" for model in prepared.models.values()
        ):
            from compalign.calibration import calibration_sample

            # the pipeline's seeded sample of training batches: what its int8 models saw
            train = load_split(data_dir, "train", manifest)
            sample = calibration_sample(train, localize["batches"], localize["batch_size"])
            calibration = sample.batches
        for name, frame in comparison.localize(prepared, calibration).items():
            top = frame.iloc[0] if len(frame) else None
            logger.info(
                "%s: localized to %d layers%s",
                name,
                len(frame),
                ""
                if top is None
                else f"; restoring {top['layer']} alone recovers {top['recovered']} of "
                f"{top['mismatches']} mismatches",
            )
    refused = None
    if rules:
        try:
            comparison.apply_gate(rules)
        except UserError as error:  # a rule on an unknown metric: said after the files are written
            refused = error
    title = audit_title(dataset or manifest["source"], reference)
    # the folder is replaced whole: never half-written, never another audit's models beside
    with atomic_directory(report_dir) as scratch:
        files = write_comparison(comparison, scratch, title)
        written = {key: Path(report_dir) / path.relative_to(scratch) for key, path in files.items()}
    metrics = {name: comparison.gate_metrics(name) for name in comparison.metrics}
    for row in comparison.summary.to_dict(orient="records"):
        name = row["name"]
        folder = Path(report_dir) / "models" / name
        tags = {
            "role": "reference" if name == REFERENCE else row["role"],
            "model_source": row["source"],
            "spec": row["spec"],
            "model_sha256": row["sha256"],
            "data_digest": manifest["sha256"],
            "transform": comparison.transform,
        }
        run_id, _ = log_child_once(
            tracking,
            parent_run_id,
            f"audit-models-{parent_run_id}-{name}",
            name,
            tags,
            metrics[name],
            [("", path) for path in sorted(folder.iterdir()) if path.is_file()],
            params=child_params(pd.Series(row)),
        )
        if name in comparison.layers:  # the child has layers.parquet; this shows it as a table
            log_table(tracking, run_id, comparison.layers[name], "layers.json")
        shown = "" if name == REFERENCE else f", mismatches {metrics[name]['mismatches']:g}"
        logger.info(
            "%s: accuracy %.4f%s -> MLflow run %s", name, metrics[name]["accuracy"], shown, run_id
        )
    log_artifacts(tracking, parent_run_id, [("", path) for path in written.values()])
    parent_metrics, parent_tags, description = parent_record(comparison, title)
    log_metrics(tracking, parent_run_id, parent_metrics)
    set_tags(tracking, parent_run_id, parent_tags)
    set_description(tracking, parent_run_id, description)
    for verdict in comparison.verdicts:
        logger.info("gate: %s", verdict.line())
    if refused is not None:
        raise refused
    return {
        "summary": comparison.summary.to_dict(orient="records"),
        "metrics": metrics,
        "candidates": comparison.candidates,
        "noise_floor": REFERENCE2 in comparison.metrics,
        "transform": comparison.transform,
        "degenerate": comparison.degenerate,
        "written": {key: str(path) for key, path in written.items()},
        "layers": {
            name: frame.to_dict(orient="records") for name, frame in comparison.layers.items()
        },
        "layer_notes": comparison.layer_notes,
        "verdicts": [verdict.record() for verdict in comparison.verdicts],
        "title": title,
        "headline": description,
    }


def audit_title(dataset: str, reference: str) -> str:
    """The title of an audit's page, headline and artifacts."""
    return f"{dataset}: what the candidates changed against {reference}"


audit_brought_models_task = task(
    audit_brought_models,
    name="audit-models",
    task_run_name=lambda parameters: "audit models " + ", ".join(parameters["candidates"]),
    cache_policy=NO_CACHE,
    persist_result=False,
)


def log_to_mlflow(comparison: Comparison, experiment: str = "compalign") -> str:
    """Log a comparison (what compalign.audit_models returns) to MLflow, its current tracking
    URI: a parent run with the summary, the predictions and the page, each model's headline
    numbers and the gate's verdicts (`parent_record`), a nested child per model with its
    metrics. Returns the parent's run id."""
    import tempfile

    import mlflow

    mlflow.set_experiment(experiment)
    metrics, tags, description = parent_record(comparison, "audit-models")
    with mlflow.start_run(run_name="audit-models", description=description) as parent:
        mlflow.set_tags({"role": "audit", "transform": comparison.transform, **tags})
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as scratch:
            write_comparison(comparison, scratch)
            mlflow.log_artifacts(scratch)
        for name in comparison.metrics:
            row = comparison.summary.set_index("name").loc[name]
            with mlflow.start_run(run_name=name, nested=True):
                mlflow.set_tags({"role": str(row["role"]), "source": str(row["source"])})
                mlflow.log_params(child_params(row))
                finite = {
                    _mlflow_name(key): float(value)
                    for key, value in comparison.gate_metrics(name).items()
                    if math.isfinite(value)
                }
                mlflow.log_metrics(finite)
        return parent.info.run_id


# the numbers of each model an audit's parent run repeats as `<model>/<column>`
PARENT_COLUMNS = (
    "accuracy",
    "accuracy_change",
    "mismatches",
    "mismatches_ci_high",
    "mismatches_ref_correct",
    "mismatches_ref_correct_ci_high",
    "worst_class_recall_change",
    "attribution_agreement",
    "ece",
    "ece_change",
    "size_bytes_ratio",
    "latency_ms_b64_ratio",
)


def child_params(row: pd.Series) -> dict[str, str]:
    """What a model's child run records as parameters (MLflow's Compare lists them): its
    spec, format and file digest."""
    return {key: str(row[key]) for key in ("spec", "source", "sha256") if key in row}


def parent_record(
    comparison: Comparison, title: str
) -> tuple[dict[str, float], dict[str, str], str]:
    """What an audit's MLflow parent run shows: metrics (each model's headline numbers as
    `<model>/<column>`; per candidate and rule `gate/<candidate>/<metric>`, the value the rule
    read, and `gate/<candidate>/passed`, 1 or 0; `gate/passed`), tags (`gate`: passed, failed or
    no rules; `gate.rules`; `gate.<candidate>`: passed, or the rules it failed) and the
    description (the headline and the gate, Markdown)."""
    from compalign.gate import gate_status
    from compalign.report.headline import audit_headline

    metrics: dict[str, float] = {}
    for row in comparison.summary.to_dict(orient="records"):
        for column in PARENT_COLUMNS:
            value = row.get(column)
            if isinstance(value, int | float) and math.isfinite(value):
                metrics[_mlflow_name(f"{row['name']}/{column}")] = float(value)
    verdicts = comparison.verdicts
    tags = {"gate": gate_status(verdicts)}
    if verdicts:
        tags["gate.rules"] = "; ".join(dict.fromkeys(str(v.rule) for v in verdicts))
        metrics["gate/passed"] = float(tags["gate"] == "passed")
        for name in comparison.candidates:
            mine = [v for v in verdicts if v.candidate == name]
            failed = [v for v in mine if not v.passed]
            metrics[_mlflow_name(f"gate/{name}/passed")] = float(not failed)
            for verdict in mine:
                if math.isfinite(verdict.value):
                    metrics[_mlflow_name(f"gate/{name}/{verdict.rule.metric}")] = verdict.value
            tags[_mlflow_name(f"gate.{name}")] = (
                "failed: "
                + "; ".join(
                    f"{v.rule.metric} = {v.shown}, bound {v.rule.operator} {v.rule.bound:g}"
                    for v in failed
                )
                if failed
                else "passed"
            )
    return metrics, tags, audit_headline(comparison.summary, title, verdicts)


def _mlflow_name(name: str) -> str:
    """A metric or tag name MLflow accepts (other characters become `_`)."""
    return re.sub(r"[^\w\-./ ]", "_", name)
