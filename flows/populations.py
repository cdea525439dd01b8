"""The populations flow: K dense members and K compressed members per level and loss, each its
own cached task, then Pruning Identified Exemplars and disparately impacted classes.

`populations.protocol` says where a compressed member comes from: `from_scratch` (Hooker et
al.'s) trains it from its own seed with the pruning inside the training run (tasks.pruned),
`from_dense` compresses dense member k and fine-tunes it (tasks.compress, tasks.align).

Runs on a local thread pool or on Dask (prefect-dask): an existing scheduler by address, or a
LocalCluster of worker processes started for the run. Members already trained, by this flow or
by the pipeline (same stage keys), are never trained again.
"""

from __future__ import annotations

import socket
from typing import Any

import numpy as np
from prefect import flow
from prefect.runtime import flow_run

from compalign.compressors import COMPRESSORS
from compalign.config import Params, cores
from compalign.data import read_manifest
from compalign.report.html import populations_report
from compalign.train import resolve_device
from flows import artifacts
from flows.graph import population_steps
from flows.plan import protocol_used
from flows.runtime import (
    dask_runner,
    report_when_done,
    submit_when_ready,
    thread_pool_runner,
    wait_or_raise_first_failure,
)
from flows.threads import ThreadShare
from tasks.infra import tracking
from tasks.infra.logs import publish_progress, stage_logger
from tasks.infra.paths import POPULATIONS_REPORT_DIR
from tasks.predict import load_predictions
from tasks.reports.populations import analyse, publish

REPORT_DIR = POPULATIONS_REPORT_DIR
PROTOCOLS = {
    "from_scratch": "each compressed member trained from its own seed, pruned inside its "
    "training run, as Hooker et al.",
    "from_dense": "each compressed member is dense member k compressed, then fine-tuned",
}
# the steps that always run alone: every core is theirs (the vectorised dense members)
ALONE = ("prepare", "reference:population")


@flow(name="compalign-populations", flow_run_name="populations-{params[data][source]}")
def populations_flow(params: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse) every member, predict the test split with each, analyse the PIEs."""
    settings = Params.model_validate(params)
    population = settings.populations
    device = str(resolve_device(settings.run.device))
    track = tracking.setup(settings.run.experiment)
    tags = {
        "orchestrator": "prefect",
        "kind": "populations",
        "runner": population.runner,
        "prefect_flow_run_id": str(flow_run.get_id()),
        "model": settings.reference.model,
        "compressor": population.compressor,
        "protocol": protocol_used(settings),
        "host": socket.gethostname(),
    }
    name = f"populations-{settings.data.source}-{settings.reference.model}-{population.compressor}"
    logger = stage_logger()
    key = artifacts.artifact_key(
        "populations", settings.data.source, settings.reference.model, population.compressor
    )
    title = (
        f"Populations of {population.size} {settings.reference.model} on {settings.data.source}: "
        f"{population.compressor}"
    )
    steps = population_steps(settings, device)
    # every task with its torch threads: the cores for those that run alone (prepare, the
    # vectorised dense members), the cores shared among the workers for the others
    alone, shared = task_threads(settings, alone=True), task_threads(settings)
    with tracking.parent_run(track, name, settings.flat(), tags) as parent:
        logger.info("MLflow parent run %s: %d members per population", parent, population.size)
        progress = artifacts.Progress(key, len(steps), "populations")
        publish_progress("planned", count=len(steps))  # the terminal's display
        futures = submit_when_ready(
            steps,
            on_submit=report_when_done,
            on_done=lambda _: progress.advance(),
            threads=lambda step: alone if step.id in ALONE else shared,
        )
        wait_or_raise_first_failure(
            [futures[step.id] for step in steps if step.id in futures], announce=False
        )
        data = futures["prepare"]
        reference_predictions: dict[int, Any] = {}
        member_predictions: dict[tuple[float | None, str], dict[int, Any]] = {}
        for step in steps:
            if step.stage == "predict":
                group, seed = step.about["group"], step.about["seed"]
                if group is None:
                    reference_predictions[seed] = futures[step.id]
                else:
                    member_predictions.setdefault(group, {})[seed] = futures[step.id]
        dense = np.stack(
            [load_predictions(reference_predictions[s].result()) for s in population.seeds]
        )
        compressed_arrays = {
            group: np.stack([load_predictions(by_seed[s].result()) for s in population.seeds])
            for group, by_seed in member_predictions.items()
        }
        analysis = analyse(
            data.result()["path"],
            dense,
            compressed_arrays,
            population.significance,
            population.gallery_examples,
            REPORT_DIR,
        )
        galleries = {
            path.stem.removeprefix("gallery-"): path
            for path in analysis["files"]
            if path.name.startswith("gallery-")
        }
        html = populations_report(
            analysis["summary"],
            analysis["impact"],
            galleries,
            REPORT_DIR / "report.html",
            title,
            notes=[
                f"MLflow parent run {parent}, experiment {settings.run.experiment!r}.",
                f"Protocol: {protocol_used(settings)} ({PROTOCOLS[protocol_used(settings)]}).",
            ],
        )
        analysis["files"].append(html)
        publish(track, parent, analysis)
    artifacts.publish_populations(key, analysis["summary"], title, track, parent)
    states = [
        {"stage": step.stage, "model": step.model, "state": futures[step.id].state.name}
        for step in steps
    ]
    cached = sum(state["state"] == "Cached" for state in states)
    logger.info("%d tasks: %d Cached, %d run", len(states), cached, len(states) - cached)
    return {
        "parent_run_id": parent,
        "experiment_id": track["experiment_id"],
        "tracking_uri": track["uri"],
        "protocol": protocol_used(settings),
        "data_path": data.result()["path"],
        "class_names": read_manifest(data.result()["path"], verify=False)["class_names"],
        "tasks": states,
        "summary": analysis["summary"].to_dict(orient="records"),
        "impact": analysis["impact"].to_dict(orient="records"),
        "dense_predictions": dense.tolist(),
        "compressed_predictions": {
            f"{k[0]}|{k[1]}": v.tolist() for k, v in compressed_arrays.items()
        },
    }


def task_workers(settings: Params) -> int:
    """Tasks at once: `dask_workers` processes on Dask; else `workers` (default: the cores), or 1
    when the compressor traces models (process-wide: see flows.pipeline.task_workers)."""
    population = settings.populations
    if population.runner == "dask":
        return population.dask_workers
    if COMPRESSORS[population.compressor].traces_globally:
        return 1
    return population.workers or cores()


def task_threads(settings: Params, alone: bool = False) -> ThreadShare | None:
    """How a task picks its torch threads (flows.threads): `threads_per_task`, or the cores not
    busy with other work (`run.busy_cores`) shared among the workers, all of them for a task
    that runs `alone`; None (the workers' own settings) on a Dask cluster the run did not
    start."""
    population = settings.populations
    if population.runner == "dask" and population.dask_address and not population.threads_per_task:
        return None
    busy = None if settings.run.busy_cores == "auto" else settings.run.busy_cores
    return ThreadShare(1 if alone else task_workers(settings), population.threads_per_task, busy)


def task_runner(settings: Params):
    """The Prefect task runner `populations.runner` asks for; every task the flow submits picks
    its own torch threads (`task_threads`); the runner's count is for any other."""
    population = settings.populations
    workers = task_workers(settings)
    threads = population.threads_per_task or max(1, cores() // workers)
    if population.runner == "dask":
        return dask_runner(population.dask_address, workers, threads)
    return thread_pool_runner(workers, threads)


def run_populations(settings: Params) -> dict[str, Any]:
    """Run the populations flow on the runner the params choose."""
    return populations_flow.with_options(task_runner=task_runner(settings))(settings.model_dump())
