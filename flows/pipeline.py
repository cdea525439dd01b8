"""The pipeline flow: prepare -> reference -> compress -> align -> audit (-> predictions, costs),
cached per task, as the run graph (flows/graph.py) says.

Every task caches across runs on its inputs' content digests, its own params and its code, so a
rerun with nothing changed finishes with every task Cached, and changing one `align` setting
reruns only the alignments it touches and their audits.
"""

from __future__ import annotations

import socket
from typing import Any

import pandas as pd
import torch
from prefect import flow
from prefect.runtime import flow_run

from compalign.compressors import COMPRESSORS
from compalign.config import Params
from compalign.data import load_split, read_manifest
from compalign.report.html import pipeline_report
from compalign.train import resolve_device
from flows import artifacts
from flows.graph import Input, Step, at_once, audited_models, field_of, pipeline_steps, resolve
from flows.plan import reference_model_name
from flows.rerun import MLFLOW_UI, REPORT_DIR, record_run
from flows.runtime import (
    dask_runner,
    report_finished,
    report_when_done,
    retire_workers,
    submit_when_ready,
    thread_pool_runner,
    wait_or_raise_first_failure,
)
from flows.threads import ThreadShare
from tasks import stage
from tasks.infra import tracking
from tasks.infra.logs import publish_progress, stage_logger
from tasks.reports.pipeline import publish_summary

# the stages that train on the run's device: on CUDA, run.gpu_workers of them at a time
DEVICE_STAGES = ("reference", "align")


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
        threads = torch.get_num_threads()  # this thread's: the costs are measured with them
        steps = pipeline_steps(settings, device, track, parent)
        submitted = [step for step in steps if step.stage != "costs"]
        measured = [step for step in steps if step.stage == "costs"]
        publish_progress("planned", count=len(steps))  # the terminal's display
        progress = artifacts.Progress(artifact_key(settings), len(steps), "pipeline")
        shares = step_threads(settings, submitted)
        futures = submit_when_ready(
            submitted,
            after={"prepare": lambda data: log_data_lineage(track, parent, data.result())},
            on_submit=report_when_done,
            on_done=lambda _: progress.advance(),
            threads=lambda step: shares[step.id],
            limit=device_limit(settings, device),
        )
        wait_or_raise_first_failure(list(futures.values()), announce=False)
        results = [futures[f"audit:{name}"].result() for name in audited_models(steps)]
        # costs one model at a time, once nothing else runs: latency is measured undisturbed,
        # and with the pool's threads ended (libgomp: flows.runtime.thread_pool_runner)
        retire_workers()
        torch.set_num_threads(threads)  # this thread's count, as it was
        costs = {}

        def result_of(source: Input) -> Any:
            return field_of(futures[source.step].result(), source)

        for step in measured:
            state = stage("costs").task(**resolve(step.arguments, result_of), return_state=True)
            finished.append(("costs", step.model, state))
            report_finished(state)
            costs[step.model] = state.result()["costs"]
            progress.advance()
        data = futures["prepare"]
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
        {"stage": step.stage, "model": step.model, "state": futures[step.id].state.name}
        for step in submitted
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
        # where each model's audit lies in the store (per-example predictions, probabilities,
        # attribution agreement): what `compalign reproduce` judges its verdicts from
        "audits": {result["labels"]["name"]: result["path"] for result in results},
        # every audited model's per-example predictions, one table (tasks/predictions.py)
        "predictions": futures["predictions"].result()["path"],
        "data_path": data.result()["path"],
    }


def task_workers(params: Params) -> int:
    """`run.workers` ("auto": the cores), or 1 when a compressor traces models (quantize_static:
    torch.export's strict tracing with PT2E, torch.fx with the FX fallback): tracing patches
    process-wide state (FX: torch.nn.Module.__call__), so tasks in other threads must not run
    models at the same time. A LocalCluster gets as many worker processes (tracing there would
    be safe): a run then gets the same thread counts, so the same numbers, on either runner."""
    if any(COMPRESSORS[method].traces_globally for method in params.compress.methods):
        return 1
    return params.run.worker_count()


def step_threads(params: Params, steps: list[Step]) -> dict[str, ThreadShare | None]:
    """How each step's task picks its torch threads as it starts (flows.threads): `run.threads`,
    or the cores not busy with other work (`run.busy_cores`) shared among the most tasks that
    can run beside it (flows.graph.at_once; at most the workers). A task that always runs alone
    (prepare, then the reference) and each task of a one-worker grid get every free core; a
    full grid, one worker per core, one each. What can run, not what happens to run: on a
    quiet machine the same run gets the same counts, so the same numbers, every time and on
    every runner. None (the workers' own settings) on a Dask cluster the run did not start."""
    run = params.run
    if run.runner == "dask" and run.dask_address and run.threads is None:
        return {step.id: None for step in steps}
    workers = task_workers(params)
    most = at_once(steps)
    busy = None if run.busy_cores == "auto" else run.busy_cores
    return {step.id: ThreadShare(min(workers, most[step.id]), run.threads, busy) for step in steps}


def device_limit(params: Params, device: str) -> tuple[tuple[str, ...], int] | None:
    """On CUDA, the training stages run `run.gpu_workers` at a time (submit_when_ready's
    `limit`), whatever `run.workers`: one GPU, each training's own memory, and kernels that
    go to the device's default stream unless a training picks another, so beyond a few
    trainings they mostly queue behind each other (not measured: no GPU was lent). Audits and
    compressions, mostly CPU work, still run `run.workers` at once. None on the CPU."""
    if not device.startswith("cuda"):
        return None
    return DEVICE_STAGES, params.run.gpu_workers


def task_runner(params: Params):
    """The task runner `run.runner` asks for: a local thread pool of `task_workers(params)`
    threads, or Dask (the scheduler at `run.dask_address`, else a LocalCluster of that many
    worker processes on loopback). Each task the flow submits picks its own torch threads
    (`step_threads`); the runner's count, the cores shared among the workers, is for any
    other."""
    workers = task_workers(params)
    threads = params.run.task_threads(workers)
    remote = params.run.runner == "dask" and params.run.dask_address
    if workers < params.run.worker_count() and not remote:
        each = f"{params.run.threads} torch thread(s)" if params.run.threads else "every free core"
        print(
            f"note: running one task at a time, each with {each} (run.workers="
            f"{params.run.workers}): quantize_static traces models (torch.export / torch.fx), "
            "which is not thread-safe"
        )
    if params.run.runner == "dask":
        return dask_runner(params.run.dask_address, workers, threads)
    return thread_pool_runner(workers, threads)


def run_pipeline(params: Params) -> dict[str, Any]:
    """Run the flow on the runner `run.runner` asks for; record the run for the rerun check
    (flows/rerun.py)."""
    result = pipeline.with_options(task_runner=task_runner(params))(params.model_dump())
    links = tracking.ui_links(MLFLOW_UI, result["experiment_id"], result["parent_run_id"])
    record_run(params, {**result, "links": links}, REPORT_DIR)
    return result
