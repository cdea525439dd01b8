"""Stage `audit`: test-set predictions and metrics of one model, logged as an MLflow child run.

The reference is audited on its own (accuracy, per-class recall); a compressed model also against
the reference's predictions (mismatches, mismatches where the reference is right).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task

from compalign.audit import comparison_frame, mismatch_metrics, model_metrics, predictions_frame
from compalign.checkpoint import load_checkpoint, read_checkpoint_manifest
from compalign.data import load_split, read_manifest
from compalign.files import sha256_file
from compalign.train import predict_logits
from tasks.logs import stage_logger
from tasks.options import task_options
from tasks.store import MANIFEST, Artifact, code_digest, materialize, require, stage_key
from tasks.tracking import Tracking, log_child_once

PREDICTIONS_FILE = "predictions.parquet"
METRICS_FILE = "metrics.json"


def _build_audit(
    scratch: Path,
    data: Artifact,
    model: Artifact,
    reference_audit: dict[str, Any] | None,
    audit: dict[str, Any],
    labels: dict[str, str],
    device: str,
) -> None:
    data_dir = require(data, "prepared dataset")
    model_dir = require(model, "checkpoint")
    manifest = read_manifest(data_dir)
    test = load_split(data_dir, "test", manifest)
    logits = predict_logits(load_checkpoint(model_dir), test, audit["batch_size"], device)
    frame = predictions_frame(test.example_ids, test.labels, logits)
    metrics = model_metrics(frame, manifest["class_names"])
    checkpoint = read_checkpoint_manifest(model_dir)
    if "measured_sparsity" in checkpoint:
        metrics["weight_sparsity"] = checkpoint["measured_sparsity"]
    table = frame
    if reference_audit is not None:
        reference_dir = require(reference_audit, "reference audit")
        reference_frame = pd.read_parquet(reference_dir / PREDICTIONS_FILE)
        metrics.update(mismatch_metrics(reference_frame, frame))
        reference_metrics = json.loads((reference_dir / METRICS_FILE).read_text())
        metrics["accuracy_change"] = metrics["accuracy"] - reference_metrics["accuracy"]
        table = comparison_frame(reference_frame, frame)
    table.to_parquet(scratch / PREDICTIONS_FILE, index=False)
    (scratch / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    (scratch / MANIFEST).write_text(
        json.dumps(
            {
                "file": PREDICTIONS_FILE,
                "sha256": sha256_file(scratch / PREDICTIONS_FILE),
                "labels": labels,
                "checkpoint_sha256": checkpoint["sha256"],
            },
            indent=2,
        )
        + "\n"
    )


def audit_model(
    data: Artifact,
    model: Artifact,
    reference_audit: dict[str, Any] | None,
    audit: dict[str, Any],
    labels: dict[str, str],
    tracking: Tracking,
    device: str,
    parent_run_id: str,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """Audit one model and log it as a child of `parent_run_id` (once per cache key).

    `labels` names the model: name, role (reference/compressed), compressor, sparsity, loss,
    dataset, model. `reference_audit` is the reference's own audit result (None for the reference).
    Returns the audit artifact with the child's `run_id`, `metrics` and `labels`.
    """
    parameters = {
        "data": data,
        "model": model,
        "reference_audit": reference_audit,
        "audit": audit,
        "labels": labels,
        "tracking": tracking,
        "device": device,
    }

    def build(scratch: Path) -> None:
        _build_audit(scratch, data, model, reference_audit, audit, labels, device)

    artifact = materialize("audit", parameters, build, out_dir)
    directory = Path(artifact["path"])
    metrics = json.loads((directory / METRICS_FILE).read_text())
    data_dir, model_dir = Path(data["path"]), Path(model["path"])
    tags = {
        **labels,
        "data_digest": read_manifest(data_dir, verify=False)["sha256"],
        "checkpoint_sha256": read_checkpoint_manifest(model_dir)["sha256"],
        "code_digest.audit": code_digest("audit"),
    }
    if reference_audit is not None:
        tags["reference_run_id"] = reference_audit["run_id"]

    def test_examples() -> tuple[pd.DataFrame, dict[str, Any], str]:
        test = load_split(data_dir, "test")
        frame = pd.DataFrame(
            {"example_id": test.example_ids, "split": "test", "label": test.labels.numpy()}
        )
        return frame, read_manifest(data_dir, verify=False), str(data_dir)

    run_id, newly = log_child_once(
        tracking,
        parent_run_id,
        stage_key("audit", parameters),
        labels["name"],
        tags,
        metrics,
        {"": directory / PREDICTIONS_FILE, "checkpoint": model_dir},
        model=lambda: load_checkpoint(model_dir),
        dataset=test_examples,
    )
    stage_logger().info(
        "%s: accuracy %.4f%s -> MLflow run %s%s",
        labels["name"],
        metrics["accuracy"],
        f", mismatches {metrics['mismatches']}" if "mismatches" in metrics else "",
        run_id,
        "" if newly else " (already logged)",
    )
    return {**artifact, "run_id": run_id, "metrics": metrics, "labels": labels}


audit_task = task(audit_model, **task_options("audit"))
