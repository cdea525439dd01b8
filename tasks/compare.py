"""Audit of models you bring (`compalign audit`): read the prepared test split, call the core
comparison (compalign.compare), write reports/compare/ and log a child run per model.

Not cached in the store: the models are files outside it, read afresh each run (the prepared
data still comes from the store).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from compalign.compare import (
    REFERENCE,
    REFERENCE2,
    check_models,
    child_params,
    parent_record,
    run_comparison,
)
from compalign.config import AuditParams, DataParams
from compalign.data import load_split, read_manifest
from compalign.errors import UserError
from compalign.files import atomic_directory
from compalign.localize import checkpoint_kind
from tasks.logs import stage_logger, step_reporter
from tasks.store import Artifact, require
from tasks.tracking import (
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
            from tasks.compress import calibration_data

            # the pipeline's seeded sample of training batches: what its int8 models saw
            calibration = calibration_data(data, data_dir, localize, None, None).batches
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
        written = {
            key: Path(report_dir) / path.relative_to(scratch)
            for key, path in comparison.write(scratch, title).items()
        }
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
