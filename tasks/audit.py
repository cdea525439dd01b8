"""Stage `audit`: what one model keeps and loses, logged as an MLflow child run.

The task reads the model, the test split and the audits it is compared with (the reference's;
the `ce` model's at the same compression, for reduction factors), runs the core audit
(compalign.audit: every registered metric), stores its numbers, table and files, and logs them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from compalign.audit import AuditInputs, ReferenceAudit, audit, predictions_frame
from compalign.audit.metrics import METRICS
from compalign.audit.metrics.attribution import AGREEMENT_FILE, FIGURE_FILE, MAPS_FILE
from compalign.audit.metrics.auroc import PROBABILITIES_FILE
from compalign.checkpoint import load_checkpoint, read_checkpoint_manifest
from compalign.config import AuditParams
from compalign.data import load_split, read_manifest
from compalign.files import sha256_file
from compalign.report.figures import draw_figures
from compalign.train import predict_logits
from tasks.infra import paths
from tasks.infra.code import code_digest
from tasks.infra.logs import stage_logger
from tasks.infra.stage import Stage
from tasks.infra.store import MANIFEST, Artifact, materialize, require, stage_key

if TYPE_CHECKING:
    from tasks.infra.tracking import Tracking

SPLITS = ("test", "val")  # what an audit may be on: the test split, or validation for a search
PREDICTIONS_FILE = "predictions.parquet"
METRICS_FILE = "metrics.json"
TUNING_FILE = "tuning.csv"


def _json_safe(metrics: dict[str, float]) -> dict[str, float | str]:
    """JSON has no inf/NaN: such values are written as the strings "inf", "-inf", "nan"."""
    return {k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()}


def _reference_audit(directory: Path) -> ReferenceAudit:
    """The reference's audit entry as the core audit reads it."""
    maps = directory / MAPS_FILE
    return ReferenceAudit(
        frame=pd.read_parquet(directory / PREDICTIONS_FILE),
        metrics=read_metrics(directory),
        attributions=dict(np.load(maps)) if maps.is_file() else None,
    )


def _build_audit(
    scratch: Path,
    data: Artifact,
    model: Artifact,
    reference_audit: dict[str, Any] | None,
    baseline_audit: dict[str, Any] | None,
    audit_params: dict[str, Any],
    labels: dict[str, str],
    device: str,
    split: str = "test",
) -> None:
    options = AuditParams.model_validate(audit_params)
    data_dir = require(data, "prepared dataset")
    model_dir = require(model, "checkpoint")
    manifest = read_manifest(data_dir)
    test = load_split(data_dir, split, manifest)
    network = load_checkpoint(model_dir)
    logits = predict_logits(network, test, options.batch_size, device)
    reference = baseline = None
    if reference_audit is not None:
        reference = _reference_audit(require(reference_audit, "reference audit"))
        if baseline_audit is not None:
            baseline = pd.read_parquet(require(baseline_audit, "ce audit") / PREDICTIONS_FILE)
    inputs = AuditInputs(
        frame=predictions_frame(test.example_ids, test.labels, logits),
        class_names=manifest["class_names"],
        groups=test.groups,
        options=options,
        reference=reference,
        baseline=baseline,
        model=network,
        images=test.images,
        normalise=test.normalise,
        device=device,
        logits=logits,
    )
    result = audit(inputs)
    metrics = result.metrics
    checkpoint = read_checkpoint_manifest(model_dir)
    if "measured_sparsity" in checkpoint:
        metrics["weight_sparsity"] = checkpoint["measured_sparsity"]
    metrics.update(checkpoint.get("compression_record", {}))
    result.write_outputs(scratch)
    draw_figures(result.outputs, scratch)
    result.table.to_parquet(scratch / PREDICTIONS_FILE, index=False)
    (scratch / METRICS_FILE).write_text(json.dumps(_json_safe(metrics), indent=2) + "\n")
    manifest_out = {
        "file": PREDICTIONS_FILE,
        "sha256": sha256_file(scratch / PREDICTIONS_FILE),
        "labels": labels,
        "checkpoint_sha256": checkpoint["sha256"],
        # the torch threads that trained the model: they round its sums (README, same numbers)
        "checkpoint_torch_threads": checkpoint.get("torch_threads"),
    }
    (scratch / MANIFEST).write_text(json.dumps(manifest_out, indent=2) + "\n")


def read_metrics(directory: str | Path) -> dict[str, float]:
    """An audit entry's metrics as floats ("inf"/"nan" strings read back as such)."""
    raw = json.loads((Path(directory) / METRICS_FILE).read_text())
    return {k: float(v) for k, v in raw.items()}


def read_outcomes(directory: str | Path, example_ids: list[str]) -> dict[str, Any]:
    """A model's per-example outcomes as its audit stored them, in the order of `example_ids`
    (the test split's): `predictions` (its labels), `probabilities` ([N, C], None when the audit
    has none), `attribution` (integrated-gradients agreement with the reference on the fixed
    sample, NaN elsewhere; None without attributions) and `torch_threads` (that trained it)."""
    directory = Path(directory)
    table = pd.read_parquet(directory / PREDICTIONS_FILE)
    if table["example_id"].tolist() != list(example_ids):
        raise ValueError(f"{directory}: audited on other test examples than the run's")
    column = "compressed_prediction" if "compressed_prediction" in table else "prediction"
    manifest = json.loads((directory / MANIFEST).read_text())
    outcomes: dict[str, Any] = {
        "predictions": table[column].to_numpy(dtype=np.int64),
        "probabilities": None,
        "attribution": None,
        "torch_threads": manifest.get("checkpoint_torch_threads"),
    }
    if (directory / PROBABILITIES_FILE).is_file():
        with np.load(directory / PROBABILITIES_FILE, allow_pickle=False) as saved:
            outcomes["probabilities"] = saved["probabilities"]
    if (directory / AGREEMENT_FILE).is_file():
        agreement = pd.read_parquet(directory / AGREEMENT_FILE)
        column = next(
            (c for c in ("integrated_gradients_spearman", "saliency_spearman") if c in agreement),
            None,
        )
        if column is not None:
            values = np.full(len(example_ids), np.nan)
            position = {example: index for index, example in enumerate(example_ids)}
            for example, value in zip(agreement["example_id"], agreement[column], strict=True):
                values[position[example]] = value
            outcomes["attribution"] = values
    return outcomes


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
    split: str = "test",
) -> dict[str, Any]:
    """Audit one model and log it as a child of `parent_run_id` (once per cache key).

    `labels` names the model: name, role (reference/compressed), compressor, sparsity, loss,
    dataset, model. `reference_audit` is the reference's own audit result (None for the
    reference), on the same `split`; `baseline_audit` the `ce` model's audit at the same
    compression, for reduction factors. `split` is the test split unless a search probes on
    "val" (compalign search). Returns the audit artifact with the child's `run_id`, `metrics`
    and `labels`.
    """
    from tasks.infra.tracking import EXAMPLE_SIZE, log_child_once, registered_model_name

    if split not in SPLITS:
        raise ValueError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    parameters = {
        "data": data,
        "model": model,
        "reference_audit": reference_audit,
        "audit": audit,
        "labels": labels,
        "tracking": tracking,
        "device": device,
        "baseline_audit": baseline_audit,
        "split": split,  # in the key only when not "test" (tasks.infra.store.ONLY_WHEN)
    }

    def build(scratch: Path) -> None:
        _build_audit(
            scratch, data, model, reference_audit, baseline_audit, audit, labels, device, split
        )

    artifact = materialize("audit", parameters, build, out_dir)
    directory = Path(artifact["path"])
    metrics = read_metrics(directory)
    data_dir, model_dir = Path(data["path"]), Path(model["path"])
    checkpoint = read_checkpoint_manifest(model_dir)
    tags = {
        **labels,
        "data_digest": read_manifest(data_dir, verify=False)["sha256"],
        "checkpoint_sha256": checkpoint["sha256"],
        "code_digest.audit": code_digest("audit", parameters),
        "tuned": str(checkpoint.get("tuned", False)).lower(),
    }
    if "torch_threads" in checkpoint:  # the threads that made it (compalign.checkpoint)
        tags["checkpoint_torch_threads"] = str(checkpoint["torch_threads"])
    if reference_audit is not None:
        tags["reference_run_id"] = reference_audit["run_id"]
    if baseline_audit is not None:
        tags["baseline_run_id"] = baseline_audit["run_id"]
    params = {f"loss.{k}": v for k, v in checkpoint.get("hyperparameters", {}).items()}
    artifacts = [("checkpoint", model_dir)]  # (artifact folder, local path)
    for name in STAGE.logs:
        if (directory / name).is_file():
            artifacts.append(("", directory / name))
    if (model_dir / TUNING_FILE).is_file():
        artifacts.append(("", model_dir / TUNING_FILE))

    probe = split != "test"

    def test_examples() -> tuple[pd.DataFrame, dict[str, Any], str]:
        test = load_split(data_dir, split)
        frame = pd.DataFrame(
            {"example_id": test.example_ids, "split": split, "label": test.labels.numpy()}
        )
        return frame, read_manifest(data_dir, verify=False), str(data_dir)

    def input_example() -> np.ndarray:
        test = load_split(data_dir, split)
        return test.normalise(test.images[:EXAMPLE_SIZE]).numpy()

    run_id, newly = log_child_once(
        tracking,
        parent_run_id,
        stage_key("audit", parameters),
        labels["name"],
        tags,
        metrics,
        artifacts,
        params=params,
        # a search's probes on the validation split are no release candidates: their checkpoint
        # is an artifact, but no MLflow model is logged or registered for them
        model=None if probe else lambda: load_checkpoint(model_dir),
        dataset=test_examples,
        input_example=None if probe else input_example,
        registered_model=None
        if probe
        else registered_model_name(labels["dataset"], labels["model"]),
        dataset_context="validation" if probe else "test",
        version_tags=labels
        | {"checkpoint_sha256": checkpoint["sha256"]}
        | {
            name: f"{metrics[name]:g}"
            for entry in METRICS.values()
            for name in entry.headline
            if name in metrics
        },
        metric_history=checkpoint.get("loss_trajectory"),  # e.g. SoftAdapt's weights per epoch
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


def metric_keys() -> frozenset[str]:
    """The keys of the `audit` section an audit reads: the settings every metric shares
    (compalign.audit.base.AuditSettings) and each metric's options, as the metric registry
    declares them (a section named after a metric counts whole). The latency settings are the
    costs stage's, not these."""
    from compalign.audit.base import AuditSettings

    keys = set(AuditSettings.model_fields) | set(METRICS)
    for entry in METRICS.values():
        keys |= set(entry.options.model_fields)
    return frozenset(keys)


def metric_settings(parameters: Mapping[str, Any]) -> Mapping[str, Any]:
    """The parameters an audit's key covers: every one, the `audit` section cut to the keys the
    metrics read (changing audit.latency_repeats reruns the costs, not the audits)."""
    audit = parameters.get("audit")
    if not isinstance(audit, Mapping):
        return parameters
    keys = metric_keys()
    return {**parameters, "audit": {key: value for key, value in audit.items() if key in keys}}


def audit_code(parameters: Mapping[str, Any] | None) -> list[Any]:
    """Every metric, and the compressor that rebuilds the checkpoint (every one: None)."""
    from compalign.compressors import COMPRESSORS

    if parameters is None:
        return [*METRICS.values(), *COMPRESSORS.values()]
    compressor = (parameters.get("labels") or {}).get("compressor")
    named = [COMPRESSORS[compressor]] if compressor in COMPRESSORS else []
    return [*METRICS.values(), *named]


STAGE = Stage(
    name="audit",
    function=audit_model,
    run_name=lambda p: f"audit {p['labels']['name']}",
    inputs=("data", "model", "reference_audit", "baseline_audit"),
    code=audit_code,
    key=metric_settings,
    params=(
        "audit",
        "align.losses",
        "align.quantization_aware",
        "compress",
        "data.source",
        "reference.model",
        "run.device",
        "run.experiment",
    ),
    logs=(PREDICTIONS_FILE, METRICS_FILE, AGREEMENT_FILE, FIGURE_FILE),
    out=(paths.AUDIT_MODELS_DIR / "{model}").as_posix(),
)
