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
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow
from prefect.runtime import flow_run

from compalign.compressors import COMPRESSORS
from compalign.config import NO_FINE_TUNING, Params, cores
from compalign.data import read_manifest
from compalign.errors import UserError
from compalign.losses import LOSSES
from compalign.report.html import populations_report
from compalign.train import resolve_device
from flows import artifacts
from flows.plan import ModelSpec, align_arguments, compress_arguments, compressed_id
from flows.runtime import dask_runner, thread_pool_runner
from flows.threads import ThreadShare, with_torch_threads
from tasks import tracking
from tasks.align import align_task
from tasks.compress import compress_task
from tasks.data import prepare_task
from tasks.logs import stage_logger
from tasks.populations import analyse, publish
from tasks.predict import load_predictions, predict_task
from tasks.pruned import pruned_seed, train_pruned_task
from tasks.train import train_population_task, train_reference_task

REPORT_DIR = Path("reports/populations")
PROTOCOLS = {
    "from_scratch": "each compressed member trained from its own seed, pruned inside its "
    "training run, as Hooker et al.",
    "from_dense": "each compressed member is dense member k compressed, then fine-tuned",
}


def member_reference(settings: Params, seed: int) -> dict[str, Any]:
    """The `reference` section of the dense member with `seed`."""
    return {**settings.reference.stage_params(settings.data), "seed": seed}


def trains_from_scratch(settings: Params) -> bool:
    """Whether the compressed members are trained from scratch with the compression inside
    the run: protocol `from_scratch` and a compressor whose family can (gradual pruning)."""
    family = COMPRESSORS[settings.populations.compressor].family
    return settings.populations.protocol == "from_scratch" and family.train_pruned is not None


def protocol_used(settings: Params) -> str:
    """The protocol the compressed members really follow (a post-training compressor always
    compresses dense member k, whatever `populations.protocol` says)."""
    return "from_scratch" if trains_from_scratch(settings) else "from_dense"


def population_losses(settings: Params) -> list[str]:
    """The population's losses; a post-training quantizer's members are audited as they are
    (`none`) unless align.quantization_aware fine-tunes them (as in the pipeline)."""
    compressor = COMPRESSORS[settings.populations.compressor]
    if compressor.family.quantized and not settings.align.quantization_aware:
        return [NO_FINE_TUNING]
    if trains_from_scratch(settings) and NO_FINE_TUNING in settings.populations.losses:
        raise UserError(
            f"populations.losses: {NO_FINE_TUNING!r} (no training) has no meaning with "
            "populations.protocol=from_scratch, which trains every compressed member; drop it or "
            "set populations.protocol=from_dense"
        )
    return settings.populations.losses


def levels(settings: Params) -> list[float | None]:
    """The population compressor's levels (None once for a quantizer)."""
    compressor = COMPRESSORS[settings.populations.compressor]
    return list(settings.populations.sparsities) if compressor.uses_level else [None]


@flow(name="compalign-populations", flow_run_name="populations-{params[data][source]}")
def populations_flow(params: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse) every member, predict the test split with each, analyse the PIEs."""
    settings = Params.model_validate(params)
    population = settings.populations
    device = str(resolve_device(settings.run.device))
    batch = settings.audit.batch_size
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
    futures: list[tuple[str, str, Any]] = []
    # every task with its torch threads: the cores for those that run alone (prepare, the
    # vectorised dense members), the cores shared among the workers for the others
    alone, shared = task_threads(settings, alone=True), task_threads(settings)
    prepare_alone = with_torch_threads(prepare_task, alone)
    train_population = with_torch_threads(train_population_task, alone)
    train_reference = with_torch_threads(train_reference_task, shared)
    train_pruned = with_torch_threads(train_pruned_task, shared)
    compress = with_torch_threads(compress_task, shared)
    align = with_torch_threads(align_task, shared)
    predict = with_torch_threads(predict_task, shared)
    with tracking.parent_run(track, name, settings.flat(), tags) as parent:
        logger.info("MLflow parent run %s: %d members per population", parent, population.size)
        data = prepare_alone.submit(settings.data.prepare_params())
        futures.append(("prepare", "", data))
        # Every training task is submitted before any prediction: a pool thread that runs a
        # task first waits for its inputs, so a prediction submitted next to its model would hold
        # a thread idle while that model trains (one member training at a time on 2 workers).
        references: dict[int, Any] = {}
        to_predict: list[tuple[str, tuple[float | None, str] | None, int, Any]] = []
        if population.vectorise:  # one task trains every dense member as one batched model
            group = train_population.submit(
                data, settings.reference.stage_params(settings.data), population.seeds, device
            )
            futures.append(("reference", "population", group))
            members = dict(zip(population.seeds, group.result(), strict=True))
        for seed in population.seeds:
            if population.vectorise:
                references[seed] = members[seed]
            else:
                references[seed] = train_reference.submit(
                    data, member_reference(settings, seed), device
                )
                futures.append(("reference", f"seed {seed}", references[seed]))
            to_predict.append((f"dense {seed}", None, seed, references[seed]))
        from_scratch = trains_from_scratch(settings)
        for level in levels(settings):
            for seed in population.seeds:
                compressed: dict[str, Any] = {}
                for loss in population_losses(settings):
                    if from_scratch:
                        model = train_pruned.submit(
                            data,
                            member_reference(settings, pruned_seed(seed, level)),
                            population.compressor,
                            level,
                            settings.compress.options(population.compressor),
                            loss,
                            settings.align.loss_hyperparameters(loss),
                            references[seed] if LOSSES[loss].uses_reference else None,
                            device,
                        )
                        futures.append(("pruned", f"{level:g}-{loss} seed {seed}", model))
                        to_predict.append(
                            (f"{level:g}-{loss} seed {seed}", (level, loss), seed, model)
                        )
                        continue
                    spec = ModelSpec(population.compressor, level, loss)
                    name = compressed_id(settings, spec)
                    if name not in compressed:
                        needs_data, arguments = compress_arguments(settings, spec)
                        compressed[name] = compress.submit(
                            data if needs_data else None, references[seed], **arguments
                        )
                        futures.append(("compress", f"{name} seed {seed}", compressed[name]))
                    model = compressed[name]
                    if loss != NO_FINE_TUNING:
                        model = align.submit(
                            data, references[seed], model, **align_arguments(settings, spec, device)
                        )
                        futures.append(("align", f"{spec.name} seed {seed}", model))
                    to_predict.append((f"{spec.name} seed {seed}", (level, loss), seed, model))
        reference_predictions: dict[int, Any] = {}
        member_predictions: dict[tuple[float | None, str], dict[int, Any]] = {}
        for label, group, seed, model in to_predict:
            prediction = predict.submit(data, model, batch, device)
            futures.append(("predict", label, prediction))
            if group is None:
                reference_predictions[seed] = prediction
            else:
                member_predictions.setdefault(group, {})[seed] = prediction
        progress = artifacts.Progress(key, len(futures), "populations")
        artifacts.wait_with_progress([future for _, _, future in futures], progress)
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
    states = [{"stage": s, "model": n, "state": f.state.name} for s, n, f in futures]
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
