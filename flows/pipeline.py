"""The pipeline flow: prepare -> reference -> compress -> align -> audit, cached per task.

Every task caches across runs on its inputs' content digests, its own params and its code, so a
rerun with nothing changed finishes with every task Cached, and changing one `align` setting
reruns only the alignments it touches and their audits.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from compalign.compressors import COMPRESSORS
from compalign.config import Params
from compalign.data import load_split, read_manifest
from compalign.report.html import pipeline_report
from compalign.train import resolve_device
from flows import artifacts
from flows.plan import (
    BASELINE_LOSS,
    align_arguments,
    compress_arguments,
    compressed_id,
    compressed_labels,
    grid_by_compression,
    model_grid,
    reference_labels,
    reference_model_name,
)
from flows.runtime import report_finished
from tasks import tracking
from tasks.align import align_task
from tasks.audit import audit_task
from tasks.compress import compress_task
from tasks.costs import costs_task, latency_settings
from tasks.data import prepare_task
from tasks.logs import publish_progress, stage_logger
from tasks.report import publish_summary
from tasks.train import train_reference_task

REPORT_DIR = Path("reports/pipeline")


def log_data_lineage(track: tracking.Tracking, run_id: str, data: dict[str, Any]) -> None:
    """Tag the parent with the data digest and record the prepared dataset as its input."""
    manifest = read_manifest(data["path"], verify=False)
    frames = []
    for split in ("train", "val", "test"):
        part = load_split(data["path"], split, manifest)
        frames.append(
            pd.DataFrame(
                {"example_id": part.example_ids, "split": split, "label": part.labels.numpy()}
            )
        )
    tracking.set_tags(
        track, run_id, {"data_digest": manifest["sha256"], "dataset": manifest["source"]}
    )
    tracking.log_dataset(
        track, run_id, pd.concat(frames, ignore_index=True), manifest, data["path"], "training"
    )


def compressed_future(settings: Params, spec, data, reference, cache: dict, futures: list):
    """The compress task of a spec, submitted once per compress output (see compressed_id)."""
    name = compressed_id(settings, spec)
    if name not in cache:
        needs_data, arguments = compress_arguments(settings, spec)
        cache[name] = compress_task.submit(data if needs_data else None, reference, **arguments)
        futures.append(("compress", name, cache[name]))
    return cache[name]


def artifact_key(params: Params) -> str:
    """The key of the flow run's Prefect artifacts: one history per dataset and model."""
    return artifacts.artifact_key("pipeline", params.data.source, reference_model_name(params))


def run_name(params: Params) -> str:
    return f"pipeline-{params.data.source}-{reference_model_name(params)}"


@flow(name="compalign-pipeline", flow_run_name="{params[data][source]}-{params[reference][model]}")
def pipeline(params: dict[str, Any]) -> dict[str, Any]:
    """Run the whole pipeline for one validated params tree; return where its results are."""
    settings = Params.model_validate(params)
    device = str(resolve_device(settings.run.device))
    track = tracking.setup(settings.run.experiment)
    logger = stage_logger()
    futures = []  # (stage, model, future) of every submitted task
    finished = []  # (stage, model, state) of the tasks run directly
    tags = {
        "orchestrator": "prefect",
        "prefect_flow_run_id": str(flow_run.get_id()),
        "model": reference_model_name(settings),
        "device": device,
        "host": socket.gethostname(),
    }
    with tracking.parent_run(track, run_name(settings), settings.flat(), tags) as parent:
        logger.info("MLflow parent run %s (experiment %s)", parent, track["experiment_id"])
        audit = settings.audit.model_dump()
        data = prepare_task.submit(settings.data.prepare_params())
        reference = train_reference_task.submit(
            data, settings.reference.stage_params(settings.data), device
        )
        reference_audit = audit_task.submit(
            data, reference, None, audit, reference_labels(settings), track, device, parent
        )
        futures += [("prepare", "", data), ("reference", "", reference)]
        futures.append(("audit", "reference", reference_audit))
        log_data_lineage(track, parent, data.result())
        audits = [reference_audit]
        models = {"reference": reference}
        compressed: dict[tuple, Any] = {}
        for specs in grid_by_compression(settings):
            baseline = None  # the `ce` audit at this compression: reduction factors need it
            for spec in specs:  # `ce` first
                compressed_model = compressed_future(
                    settings, spec, data, reference, compressed, futures
                )
                model = compressed_model
                if spec.fine_tuned:
                    model = align_task.submit(
                        data, reference, compressed_model, **align_arguments(settings, spec, device)
                    )
                    futures.append(("align", spec.name, model))
                audit_future = audit_task.submit(
                    data,
                    model,
                    reference_audit,
                    audit,
                    compressed_labels(settings, spec),
                    track,
                    device,
                    parent,
                    baseline,
                )
                if spec.loss == BASELINE_LOSS:
                    baseline = audit_future
                audits.append(audit_future)
                models[spec.name] = model
                futures.append(("audit", spec.name, audit_future))
        publish_progress("planned", count=len(models))  # the costs tasks, after these
        progress = artifacts.Progress(
            artifact_key(settings), len(futures) + 1 + len(model_grid(settings)), "pipeline"
        )
        artifacts.wait_with_progress([future for _, _, future in futures], progress)
        by_name = {result["labels"]["name"]: result for result in (f.result() for f in audits)}
        names = ["reference"] + [spec.name for spec in model_grid(settings)]
        results = [by_name[name] for name in names]
        # costs one model at a time, once nothing else runs: latency is measured undisturbed
        costs = {}
        for name in names:
            state = costs_task(
                data,
                models[name].result(),
                latency_settings(audit),
                name,
                track,
                by_name[name]["run_id"],
                return_state=True,
            )
            finished.append(("costs", name, state))
            report_finished(state)
            costs[name] = state.result()["costs"]
            progress.advance()
        title = (
            f"{settings.data.source} / {reference_model_name(settings)}: what compression changed"
        )
        summary = publish_summary(track, parent, results, REPORT_DIR, costs, title)
        html = pipeline_report(
            summary,
            {result["labels"]["name"]: result["metrics"] for result in results},
            read_manifest(data.result()["path"], verify=False)["class_names"],
            REPORT_DIR / "report.html",
            title,
            notes=[f"MLflow parent run {parent}, experiment {settings.run.experiment!r}."],
        )
        tracking.log_artifacts(track, parent, [("", html)])
    artifacts.publish_pipeline(artifact_key(settings), summary, title, track, parent)
    states = [
        {"stage": stage, "model": name, "state": future.state.name}
        for stage, name, future in futures
    ] + [{"stage": stage, "model": name, "state": state.name} for stage, name, state in finished]
    cached = sum(state["state"] == "Cached" for state in states)
    logger.info("%d tasks: %d Cached, %d run", len(states), cached, len(states) - cached)
    return {
        "parent_run_id": parent,
        "experiment_id": track["experiment_id"],
        "tracking_uri": track["uri"],
        "flow_run_id": str(flow_run.get_id()),
        "tasks": states,
        "summary": summary.to_dict(orient="records"),
        "metrics": {result["labels"]["name"]: result["metrics"] for result in results},
        "class_names": read_manifest(data.result()["path"], verify=False)["class_names"],
    }


def task_workers(params: Params) -> int:
    """`run.workers`, or 1 when a compressor traces with torch.fx: FX patches
    torch.nn.Module.__call__ process-wide while it traces, so tasks in other threads must not
    run models at the same time."""
    if any(COMPRESSORS[method].traces_globally for method in params.compress.methods):
        return 1
    return params.run.workers


def run_pipeline(params: Params) -> dict[str, Any]:
    """Run the flow with a thread pool of `task_workers(params)` tasks at a time."""
    workers = task_workers(params)
    if workers < params.run.workers:
        print(
            f"note: running one task at a time (run.workers={params.run.workers}): "
            "quantize_static traces models with torch.fx, which is not thread-safe"
        )
    runner = ThreadPoolTaskRunner(max_workers=workers)
    return pipeline.with_options(task_runner=runner)(params.model_dump())
