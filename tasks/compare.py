"""Audit of models you bring (`compalign audit`): read the prepared test split, call the core
comparison (compalign.compare), write reports/compare/ and log a child run per model.

Not cached in the store: the models are files outside it, read afresh each run (the prepared
data still comes from the store).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from compalign.compare import REFERENCE, REFERENCE2, check_models, run_comparison
from compalign.config import AuditParams, DataParams
from compalign.data import load_split, read_manifest
from compalign.files import atomic_directory
from tasks.logs import stage_logger
from tasks.store import Artifact, require
from tasks.tracking import Tracking, log_artifacts, log_child_once


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
) -> dict[str, Any]:
    """Audit each candidate spec against the reference spec on the test split; write
    summary.parquet, predictions.parquet, report.html (and models/<name>/) to `report_dir`,
    log a child run per model under `parent_run_id`. Returns the summary rows, every model's
    gate metrics (compalign.gate) and the paths written."""
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
    comparison = run_comparison(prepared)
    title = f"{manifest['source']}: what the candidates changed against {reference}"
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
        )
        shown = "" if name == REFERENCE else f", mismatches {metrics[name]['mismatches']:g}"
        logger.info(
            "%s: accuracy %.4f%s -> MLflow run %s", name, metrics[name]["accuracy"], shown, run_id
        )
    log_artifacts(tracking, parent_run_id, [("", path) for path in written.values()])
    return {
        "summary": comparison.summary.to_dict(orient="records"),
        "metrics": metrics,
        "candidates": comparison.candidates,
        "noise_floor": REFERENCE2 in comparison.metrics,
        "transform": comparison.transform,
        "degenerate": comparison.degenerate,
        "written": {key: str(path) for key, path in written.items()},
    }


audit_brought_models_task = task(
    audit_brought_models,
    name="audit-models",
    task_run_name=lambda parameters: "audit models " + ", ".join(parameters["candidates"]),
    cache_policy=NO_CACHE,
    persist_result=False,
)
