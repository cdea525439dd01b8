"""Stage `audit`: what one model keeps and loses, logged as an MLflow child run.

The reference is audited on its own (accuracy, per-class recall, calibration, group metrics, and
the attribution maps of a fixed sample of test images). A compressed model is also compared with
the reference (mismatches with bootstrap intervals, class and group fairness changes, attribution
agreement) and, when the run has a `ce` model at the same compression, with that baseline
(reduction factors of Joseph et al., with paired bootstrap intervals).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from prefect import task

from compalign.attribution import (
    attribution_maps,
    attribution_sample,
    spearman_agreement,
    topk_iou,
)
from compalign.audit import (
    bootstrap_indices,
    class_fairness,
    comparison_frame,
    count_interval,
    expected_calibration_error,
    mismatch_metrics,
    model_metrics,
    predictions_frame,
    reduction_factor,
    reduction_factor_interval,
)
from compalign.checkpoint import load_checkpoint, read_checkpoint_manifest
from compalign.data import Split, load_split, read_manifest
from compalign.errors import UserError
from compalign.fairness import group_changes, group_metrics
from compalign.files import sha256_file
from compalign.report.figures import agreement_figure
from compalign.train import predict_logits
from tasks.logs import stage_logger
from tasks.options import task_options
from tasks.store import MANIFEST, Artifact, code_digest, materialize, require, stage_key
from tasks.tracking import Tracking, log_child_once

PREDICTIONS_FILE = "predictions.parquet"
METRICS_FILE = "metrics.json"
ATTRIBUTIONS_FILE = "attributions.npz"  # the reference's maps, reused by every compressed model
AGREEMENT_FILE = "attribution_agreement.parquet"
FIGURE_FILE = "attribution_agreement.png"
TUNING_FILE = "tuning.csv"


def _groups(test: Split, audit: dict[str, Any]) -> pd.DataFrame:
    """The group columns to audit: `audit.groups`, or every group column of the dataset."""
    available = list(test.groups.columns)
    wanted = available if audit["groups"] is None else audit["groups"]
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise UserError(
            f"audit.groups: {missing} are not group columns of the prepared dataset "
            f"(it has {available or 'none'}; add some with data.label_groups)"
        )
    return test.groups[wanted]


def _attributions(model, test: Split, indices: np.ndarray, targets: np.ndarray, audit, device):
    images = test.normalise(test.images[indices]).to(device)
    model = model.to(device)
    return {
        method: attribution_maps(
            model, images, torch.as_tensor(targets), method, audit["integrated_gradients_steps"]
        )
        for method in audit["attribution_methods"]
    }


def attributable(model) -> bool:
    """Gradient attributions need a differentiable model: int8 kernels have no gradients, so
    quantized models get no attribution agreement (half-precision ones do)."""
    return not any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


def _json_safe(metrics: dict[str, float]) -> dict[str, float | str]:
    """JSON has no inf/NaN: such values are written as the strings "inf", "-inf", "nan"."""
    return {k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()}


def _audit_reference(scratch: Path, model, test: Split, frame: pd.DataFrame, audit, device) -> dict:
    """Attribution maps of the reference on the fixed sample, saved for the compressed models."""
    if not audit["attribution_samples"]:
        return {}
    indices = attribution_sample(len(test), audit["attribution_samples"], audit["seed"])
    targets = frame["prediction"].to_numpy()[indices]  # both models explain the reference's label
    maps = _attributions(model, test, indices, targets, audit, device)
    np.savez_compressed(scratch / ATTRIBUTIONS_FILE, indices=indices, targets=targets, **maps)
    return {}


def _audit_compressed(
    scratch: Path,
    model,
    test: Split,
    frame: pd.DataFrame,
    reference_dir: Path,
    baseline_dir: Path | None,
    class_names: list[str],
    audit: dict[str, Any],
    labels: dict[str, str],
    device: str,
) -> tuple[dict[str, float], pd.DataFrame]:
    reference_frame = pd.read_parquet(reference_dir / PREDICTIONS_FILE)
    reference_metrics = read_metrics(reference_dir)
    table = comparison_frame(reference_frame, frame)
    metrics = mismatch_metrics(reference_frame, frame)
    metrics["accuracy_change"] = (
        float((frame.prediction == frame.label).mean()) - reference_metrics["accuracy"]
    )
    level = audit["confidence_level"]
    resamples = bootstrap_indices(len(table), audit["bootstrap_samples"], audit["seed"])
    mismatch = table["mismatch"].to_numpy()
    reference_right = (table.reference_prediction == table.label).to_numpy()
    for name, indicator in (
        ("mismatches", mismatch),
        ("mismatches_ref_correct", mismatch & reference_right),
    ):
        metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = count_interval(
            indicator, resamples, level
        )
    metrics.update(class_fairness(reference_frame, frame, class_names))
    metrics["ece_reference"] = reference_metrics["ece"]
    if baseline_dir is not None:
        baseline = pd.read_parquet(baseline_dir / PREDICTIONS_FILE)
        if not baseline["example_id"].equals(table["example_id"]):
            raise ValueError("the ce baseline was audited on other examples")
        base = baseline["mismatch"].to_numpy()
        for suffix, keep in (("", np.ones_like(base)), ("_ref_correct", reference_right)):
            metrics[f"reduction_factor{suffix}"] = reduction_factor(base & keep, mismatch & keep)
            low, high = reduction_factor_interval(base & keep, mismatch & keep, resamples, level)
            metrics[f"reduction_factor{suffix}_ci_low"] = low
            metrics[f"reduction_factor{suffix}_ci_high"] = high
    metrics.update(_agreement(scratch, model, test, reference_dir, table, audit, labels, device))
    return metrics, table


def _agreement(
    scratch, model, test, reference_dir, table, audit, labels, device
) -> dict[str, float]:
    """Attribution agreement with the reference on its fixed sample: per-example Spearman rank
    correlation and top-k IoU per method, their mean and quantiles, a table and a figure."""
    path = reference_dir / ATTRIBUTIONS_FILE
    if not audit["attribution_samples"] or not path.is_file() or not attributable(model):
        return {}
    saved = np.load(path)
    indices, targets = saved["indices"], saved["targets"]
    maps = _attributions(model, test, indices, targets, audit, device)
    rows = {"example_id": table["example_id"].to_numpy()[indices]}
    metrics: dict[str, float] = {}
    pairs = {}
    for method, compressed_maps in maps.items():
        reference_maps = saved[method]
        pairs[method] = (reference_maps, compressed_maps)
        for name, values in (
            ("spearman", spearman_agreement(reference_maps, compressed_maps)),
            ("iou", topk_iou(reference_maps, compressed_maps, audit["top_fraction"])),
        ):
            rows[f"{method}_{name}"] = values
            metrics[f"attribution.{method}.{name}_mean"] = float(np.nanmean(values))
            for quantile in (10, 50, 90):
                metrics[f"attribution.{method}.{name}_p{quantile}"] = float(
                    np.nanpercentile(values, quantile)
                )
    pd.DataFrame(rows).to_parquet(scratch / AGREEMENT_FILE, index=False)
    if audit["figure_examples"]:
        sample = table.iloc[indices]
        captions = [
            f"y {row.label} / ref {row.reference_prediction} / comp {row.compressed_prediction}"
            for row in sample.itertuples()
        ]
        agreement_figure(
            test.images[indices], pairs, captions, scratch / FIGURE_FILE, audit["figure_examples"]
        )
    return metrics


def _build_audit(
    scratch: Path,
    data: Artifact,
    model: Artifact,
    reference_audit: dict[str, Any] | None,
    baseline_audit: dict[str, Any] | None,
    audit: dict[str, Any],
    labels: dict[str, str],
    device: str,
) -> None:
    data_dir = require(data, "prepared dataset")
    model_dir = require(model, "checkpoint")
    manifest = read_manifest(data_dir)
    test = load_split(data_dir, "test", manifest)
    network = load_checkpoint(model_dir)
    frame = predictions_frame(
        test.example_ids, test.labels, predict_logits(network, test, audit["batch_size"], device)
    )
    metrics: dict[str, float] = model_metrics(frame, manifest["class_names"])
    metrics["ece"] = expected_calibration_error(
        frame["confidence"].to_numpy(),
        (frame.prediction == frame.label).to_numpy(),
        audit["calibration_bins"],
    )
    groups = group_metrics(frame, _groups(test, audit))
    metrics.update(groups)
    checkpoint = read_checkpoint_manifest(model_dir)
    if "measured_sparsity" in checkpoint:
        metrics["weight_sparsity"] = checkpoint["measured_sparsity"]
    table = frame
    if reference_audit is None:
        _audit_reference(scratch, network, test, frame, audit, device)
    else:
        reference_dir = require(reference_audit, "reference audit")
        baseline_dir = None if baseline_audit is None else require(baseline_audit, "ce audit")
        compared, table = _audit_compressed(
            scratch,
            network,
            test,
            frame,
            reference_dir,
            baseline_dir,
            manifest["class_names"],
            audit,
            labels,
            device,
        )
        metrics.update(compared)
        metrics["ece_change"] = metrics["ece"] - metrics["ece_reference"]
        metrics.update(group_changes(read_metrics(reference_dir), groups))
    table.to_parquet(scratch / PREDICTIONS_FILE, index=False)
    (scratch / METRICS_FILE).write_text(json.dumps(_json_safe(metrics), indent=2) + "\n")
    manifest_out = {
        "file": PREDICTIONS_FILE,
        "sha256": sha256_file(scratch / PREDICTIONS_FILE),
        "labels": labels,
        "checkpoint_sha256": checkpoint["sha256"],
    }
    (scratch / MANIFEST).write_text(json.dumps(manifest_out, indent=2) + "\n")


def read_metrics(directory: str | Path) -> dict[str, float]:
    """An audit entry's metrics as floats ("inf"/"nan" strings read back as such)."""
    raw = json.loads((Path(directory) / METRICS_FILE).read_text())
    return {k: float(v) for k, v in raw.items()}


def audit_model(
    data: Artifact,
    model: Artifact,
    reference_audit: dict[str, Any] | None,
    audit: dict[str, Any],
    labels: dict[str, str],
    tracking: Tracking,
    device: str,
    parent_run_id: str,
    baseline_audit: dict[str, Any] | None = None,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """Audit one model and log it as a child of `parent_run_id` (once per cache key).

    `labels` names the model: name, role (reference/compressed), compressor, sparsity, loss,
    dataset, model. `reference_audit` is the reference's own audit result (None for the
    reference); `baseline_audit` the `ce` model's audit at the same compression, for reduction
    factors. Returns the audit artifact with the child's `run_id`, `metrics` and `labels`.
    """
    parameters = {
        "data": data,
        "model": model,
        "reference_audit": reference_audit,
        "audit": audit,
        "labels": labels,
        "tracking": tracking,
        "device": device,
        "baseline_audit": baseline_audit,
    }

    def build(scratch: Path) -> None:
        _build_audit(scratch, data, model, reference_audit, baseline_audit, audit, labels, device)

    artifact = materialize("audit", parameters, build, out_dir)
    directory = Path(artifact["path"])
    metrics = read_metrics(directory)
    data_dir, model_dir = Path(data["path"]), Path(model["path"])
    checkpoint = read_checkpoint_manifest(model_dir)
    tags = {
        **labels,
        "data_digest": read_manifest(data_dir, verify=False)["sha256"],
        "checkpoint_sha256": checkpoint["sha256"],
        "code_digest.audit": code_digest("audit"),
        "tuned": str(checkpoint.get("tuned", False)).lower(),
    }
    if reference_audit is not None:
        tags["reference_run_id"] = reference_audit["run_id"]
    if baseline_audit is not None:
        tags["baseline_run_id"] = baseline_audit["run_id"]
    params = {f"loss.{k}": v for k, v in checkpoint.get("hyperparameters", {}).items()}
    artifacts = [("checkpoint", model_dir)]  # (artifact folder, local path)
    for name in (PREDICTIONS_FILE, METRICS_FILE, AGREEMENT_FILE, FIGURE_FILE):
        if (directory / name).is_file():
            artifacts.append(("", directory / name))
    if (model_dir / TUNING_FILE).is_file():
        artifacts.append(("", model_dir / TUNING_FILE))

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
        artifacts,
        params=params,
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
