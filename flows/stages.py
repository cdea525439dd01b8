"""The pipeline's stages as DVC runs them: `compalign stage <name>`, fixed output paths.

The same task functions as the Prefect flow (called plainly, without the Prefect engine) and the
same content-addressed store: a stage whose output the flow already made is copied from the store
instead of recomputed. dvc.yaml declares these paths as the stages' deps and outs.
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from compalign.config import Params
from compalign.data import read_manifest
from compalign.report.html import pipeline_report
from compalign.report.plot_data import write_plot_data
from compalign.report.tables import print_summary
from compalign.train import resolve_device
from flows.plan import (
    BASELINE_LOSS,
    align_arguments,
    compress_arguments,
    compressed_id,
    compressed_labels,
    grid_by_compression,
    model_grid,
    reference_labels,
)
from tasks import tracking
from tasks.align import align
from tasks.audit import METRICS_FILE, PREDICTIONS_FILE, audit_model
from tasks.compress import compress
from tasks.costs import latency_settings, measure_costs
from tasks.data import prepare
from tasks.report import publish_summary
from tasks.store import artifact_of
from tasks.train import train_reference

DATA_DIR = Path("data/prepared")
REFERENCE_DIR = Path("models/reference")
COMPRESSED_DIR = Path("models/compressed")
ALIGNED_DIR = Path("models/aligned")
AUDIT_MODELS_DIR = Path("reports/audit/models")
AUDIT_METRICS_DIR = Path("reports/audit/metrics")
AUDIT_SUMMARY_DIR = Path("reports/audit/summary")
AUDIT_PLOTS_DIR = Path("reports/audit/plots")  # dvc.yaml's `plots:` read these


def _device(params: Params) -> str:
    return str(resolve_device(params.run.device))


def _fresh(directory: Path) -> Path:
    """An empty output directory (DVC removes outs before a stage runs; a direct call may not)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def stage_prepare(params: Params) -> None:
    prepare(params.data.prepare_params(), out_dir=str(DATA_DIR))


def stage_reference(params: Params) -> None:
    train_reference(
        artifact_of(DATA_DIR),
        params.reference.stage_params(params.data),
        _device(params),
        out_dir=str(REFERENCE_DIR),
    )


def stage_compress(params: Params) -> None:
    _fresh(COMPRESSED_DIR)
    data, reference = artifact_of(DATA_DIR), artifact_of(REFERENCE_DIR)
    done = set()
    for spec in model_grid(params):
        name = compressed_id(params, spec)
        if name not in done:
            needs_data, arguments = compress_arguments(params, spec)
            compress(
                data if needs_data else None,
                reference,
                **arguments,
                out_dir=str(COMPRESSED_DIR / name),
            )
            done.add(name)


def stage_align(params: Params) -> None:
    _fresh(ALIGNED_DIR)
    data, reference = artifact_of(DATA_DIR), artifact_of(REFERENCE_DIR)
    for spec in model_grid(params):
        if spec.fine_tuned:
            align(
                data,
                reference,
                artifact_of(COMPRESSED_DIR / compressed_id(params, spec)),
                **align_arguments(params, spec, _device(params)),
                out_dir=str(ALIGNED_DIR / spec.name),
            )


def stage_audit(params: Params) -> None:
    """Audit every model, write one metrics JSON per model for `dvc metrics show` and the
    tables of `dvc plots show` (compalign.report.plot_data), log to MLflow."""
    _fresh(AUDIT_MODELS_DIR)
    _fresh(AUDIT_METRICS_DIR)
    device, audit = _device(params), params.audit.model_dump()
    data = artifact_of(DATA_DIR)
    track = tracking.setup(params.run.experiment)
    tags = {
        "orchestrator": "dvc",
        "model": params.reference.model,
        "device": device,
        "host": socket.gethostname(),
    }
    name = f"dvc-{params.data.source}-{params.reference.model}"
    with tracking.parent_run(track, name, params.flat(), tags) as parent:
        labels = reference_labels(params)
        reference_audit = audit_model(
            data,
            artifact_of(REFERENCE_DIR),
            None,
            audit,
            labels,
            track,
            device,
            parent,
            out_dir=str(AUDIT_MODELS_DIR / labels["name"]),
        )
        results = [reference_audit]
        model_dirs = {"reference": REFERENCE_DIR}
        for specs in grid_by_compression(params):
            baseline = None
            for spec in specs:  # the `ce` baseline first: the others' reduction factors need it
                model_dir = (
                    ALIGNED_DIR / spec.name
                    if spec.fine_tuned
                    else COMPRESSED_DIR / compressed_id(params, spec)
                )
                result = audit_model(
                    data,
                    artifact_of(model_dir),
                    reference_audit,
                    audit,
                    compressed_labels(params, spec),
                    track,
                    device,
                    parent,
                    baseline,
                    out_dir=str(AUDIT_MODELS_DIR / spec.name),
                )
                if spec.loss == BASELINE_LOSS:
                    baseline = result
                results.append(result)
                model_dirs[spec.name] = model_dir
        by_name = {result["labels"]["name"]: result for result in results}
        results = [by_name["reference"]] + [by_name[spec.name] for spec in model_grid(params)]
        costs = {}
        for result in results:  # one at a time, after the audits, like the flow
            name = result["labels"]["name"]
            costs[name] = measure_costs(
                data,
                artifact_of(model_dirs[name]),
                latency_settings(audit),
                name,
                track,
                result["run_id"],
            )["costs"]
            metrics = json.loads((Path(result["path"]) / METRICS_FILE).read_text())
            metrics.update(costs[name])
            (AUDIT_METRICS_DIR / f"{name}.json").write_text(json.dumps(metrics, indent=2) + "\n")
        title = f"{params.data.source} / {params.reference.model}: what compression changed"
        summary = publish_summary(track, parent, results, AUDIT_SUMMARY_DIR, costs, title)
        write_plot_data(
            summary,
            {
                result["labels"]["name"]: pd.read_parquet(Path(result["path"]) / PREDICTIONS_FILE)
                for result in results
            },
            read_manifest(DATA_DIR, verify=False)["class_names"],
            params.audit.confidence_level,
            _fresh(AUDIT_PLOTS_DIR),
        )
        html = pipeline_report(
            summary,
            {result["labels"]["name"]: result["metrics"] for result in results},
            read_manifest(DATA_DIR, verify=False)["class_names"],
            AUDIT_SUMMARY_DIR / "report.html",
            f"{title} (DVC)",
            notes=[f"MLflow parent run {parent}, experiment {params.run.experiment!r}."],
        )
        tracking.log_artifacts(track, parent, [("", html)])
    print_summary(summary)
    print(f"MLflow parent run {parent} (experiment {params.run.experiment!r}, {track['uri']})")


STAGES: dict[str, Callable[[Params], None]] = {
    "prepare": stage_prepare,
    "reference": stage_reference,
    "compress": stage_compress,
    "align": stage_align,
    "audit": stage_audit,
}
