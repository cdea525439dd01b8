"""`compalign reproduce`: regenerate the seed papers' results, one Prefect flow per paper.

Each paper has a `cpu` profile (the embedded digits, minutes on 2 cores) and a `paper` profile
(the paper's dataset and architecture; needs the data on disk and, in practice, a GPU) in
profiles/<paper>-<profile>.yaml. A paper's flow runs the pipeline or the populations flow with
its profile (so every result is also in MLflow, in an experiment named after the paper), reads
every model's per-example outcomes back from the audits, judges each headline finding by its
rule (compalign.verdicts), then writes reports/<paper>/: what was run, the rule table, the
verdicts, tables (CSV, Markdown) and figures (PNG); the same files go to a `reproduce-<paper>`
run in that experiment.
"""

from __future__ import annotations

import platform
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow

from compalign.compressors import COMPRESSORS
from compalign.config import NO_FINE_TUNING, Params
from compalign.data import load_split, read_manifest
from compalign.report import papers
from compalign.verdicts.evidence import Outcomes, PopulationEvidence, SeedRunsEvidence
from flows import artifacts
from flows.graph import pipeline_steps
from flows.pipeline import pipeline, task_runner
from flows.populations import run_populations
from flows.profiles import PAPERS, PROFILE_DIR, paper_params
from tasks.audit import read_outcomes
from tasks.infra import tracking
from tasks.infra.logs import publish_progress
from tasks.infra.paths import paper_report_dir

# Hooker et al. compare pruning with post-training quantization: every quantizing compressor
QUANTIZERS = tuple(name for name, entry in COMPRESSORS.items() if entry.family.quantized)


def _publish(
    report: papers.PaperReport, settings: Params, profile: str, sources: list[str]
) -> dict[str, Any]:
    """Write the report to reports/<paper>/ and log it on a `reproduce-<paper>` run."""
    out_dir = paper_report_dir(report.paper)
    files = report.write(out_dir)
    track = tracking.setup(settings.run.experiment)
    tags = {
        "kind": "reproduce",
        "paper": report.paper,
        "profile": profile,
        "sources": ",".join(sources),
        "host": socket.gethostname(),
    }
    name = f"reproduce-{report.paper}-{profile}"
    with tracking.parent_run(track, name, settings.flat(), tags, close_orphaned=False) as run_id:
        tracking.log_artifacts(track, run_id, [("report", path) for path in files])
        tracking.set_description(track, run_id, (out_dir / "README.md").read_text()[:8000])
    artifacts.publish_reproduce(artifacts.artifact_key(name), report, track, run_id)
    return {
        "paper": report.paper,
        "run_id": run_id,
        "report": str(out_dir / "README.md"),
        "verdicts": report.verdicts,
    }


def _pipeline(settings: Params) -> dict[str, Any]:
    return pipeline.with_options(task_runner=task_runner(settings))(settings.model_dump())


@dataclass
class SeedRuns:
    """The pipeline runs of one configuration, one per training seed (`reproduce.seeds`).

    `summary`: every run's summary, one after the other, with a `seed` column (the run's
    reference.seed). `metrics`: each model's audit metrics by its summary `name`; names are the
    pipeline's own for the first seed and `<name>@seed<seed>` for the others, in `metrics` and in
    `summary` alike, so a builder that reads `metrics[row.name]` per summary row gets that row's
    own seed. `sources`: the MLflow parent runs. `results`: each run's own result (where its
    audits lie)."""

    summary: pd.DataFrame
    metrics: dict[str, dict[str, float]]
    sources: list[str]
    results: list[dict[str, Any]] = field(default_factory=list)
    threads: str = ""  # the torch threads that trained the models, as their checkpoints say


def threads_text(reference: list[Any], compressed: list[Any]) -> str:
    """The torch threads the checkpoints recorded: "reference 2, compressed models 1"."""

    def counts(values: list[Any]) -> str:
        known = sorted({int(v) for v in values if v is not None})
        return "/".join(map(str, known)) if known else "not recorded"

    return f"reference {counts(reference)}, compressed models {counts(compressed)}"


def seed_settings(settings: Params) -> list[Params]:
    """The params of every seed's run: seed i is `settings.training_seeds(i)`."""
    return [settings.training_seeds(offset) for offset in range(settings.reproduce.seeds)]


def planned_tasks(settings: Params) -> int:
    """How many tasks every seed's pipeline run has together (its graph, flows/graph.py)."""
    return sum(len(pipeline_steps(seeded, "cpu", {}, None)) for seeded in seed_settings(settings))


def run_seeds(settings: Params) -> SeedRuns:
    """Run the pipeline once per training seed: seed i is `settings.training_seeds(i)` (every
    seed of reference training, compression and fine-tuning moved by i; the split and the test
    examples stay). Each run is a normal pipeline run: cached per stage, logged to MLflow. The
    terminal's progress knows every seed's tasks from the start."""
    frames, metrics, sources, results = [], {}, [], []
    runs = seed_settings(settings)
    publish_progress("planned", count=planned_tasks(settings), fixed=True)
    for offset, seeded in enumerate(runs):
        seed = seeded.reference.seed
        publish_progress("phase", text=f"seed {offset + 1} of {len(runs)} (training seed {seed})")
        result = _pipeline(seeded)
        suffix = "" if offset == 0 else f"@seed{seed}"
        frame = pd.DataFrame(result["summary"])
        frame.insert(0, "seed", seed)
        frame["name"] = frame["name"] + suffix
        frames.append(frame)
        metrics.update({f"{name}{suffix}": values for name, values in result["metrics"].items()})
        sources.append(result["parent_run_id"])
        results.append({**result, "seed": seed})
    return SeedRuns(pd.concat(frames, ignore_index=True), metrics, sources, results)


def seed_evidence(runs: SeedRuns, group: str | None = None) -> SeedRunsEvidence:
    """Every model's per-example outcomes of every seed, read back from its audit (the verdict
    rules' input). Every seed is audited on the same test examples; `group`: the group column
    whose values the Meyer rules compare."""
    first = runs.results[0]
    test = load_split(first["data_path"], "test")
    example_ids = test.example_ids
    per_model: dict[Any, list[dict[str, Any]]] = {}
    for result in runs.results:
        labels_of = {row["name"]: row for row in result["summary"]}
        for name, directory in result["audits"].items():
            row = labels_of[name]
            key = (
                "reference"
                if row["role"] == "reference"
                else (row["compressor"], float(row["sparsity"]), row["loss"])
            )
            per_model.setdefault(key, []).append(read_outcomes(directory, example_ids))

    def outcomes(parts: list[dict[str, Any]]) -> Outcomes:
        def stacked(name: str) -> np.ndarray | None:
            values = [part[name] for part in parts]
            return None if any(v is None for v in values) else np.stack(values)

        return Outcomes(stacked("predictions"), stacked("probabilities"), stacked("attribution"))

    models = {
        key: outcomes(parts)
        for key, parts in per_model.items()
        if key != "reference" and len(parts) == len(runs.results)
    }
    runs.threads = threads_text(
        [part["torch_threads"] for part in per_model["reference"]],
        [
            part["torch_threads"]
            for key, parts in per_model.items()
            if key != "reference"
            for part in parts
        ],
    )
    groups = None
    if group is not None and group in test.groups.columns:
        groups = test.groups[group].to_numpy()
    return SeedRunsEvidence(
        labels=test.labels.numpy(),
        classes=len(first["class_names"]),
        seeds=[result["seed"] for result in runs.results],
        reference=outcomes(per_model["reference"]),
        models=models,
        groups=groups,
        group_name=group or "",
    )


def run_record(
    paper: str,
    profile: str,
    settings: Params,
    data_path: str,
    started: float,
    overrides: list[str] | None,
    threads: str,
) -> papers.RunRecord:
    """What was run, for the report's first section."""
    import torch

    from compalign import __version__

    git = tracking.git_state()
    commit = git["git_commit"][:12] + ("+" if git["git_dirty"] == "true" else "")
    manifest = read_manifest(data_path, verify=False)
    height, width, channels = manifest["image_shape"]
    data = settings.data
    dataset = data.source if data.source != "imagefolder" else f"imagefolder {Path(data.root).name}"
    return papers.RunRecord(
        paper=paper,
        profile=profile,
        profile_file=str((PROFILE_DIR / f"{paper}-{profile}.yaml").relative_to(PROFILE_DIR.parent)),
        overrides=list(overrides or []),
        dataset=dataset,
        image=f"{height}x{width}, {channels} channel{'s' if channels > 1 else ''}",
        splits=dict(manifest["splits"]),
        classes=int(manifest["num_classes"]),
        data_digest=manifest["sha256"][:12],
        model=settings.reference.model,
        reference_epochs=settings.reference.epochs,
        align_epochs=settings.align.epochs,
        seeds=settings.reproduce.seeds,
        members=settings.populations.size,
        code=f"compalign {__version__}, commit {commit}",
        torch=torch.__version__,
        threads=threads,
        cpu_kernels=torch.backends.cpu.get_cpu_capability(),
        host=f"{platform.machine()}, {_cores()} cores",
        wall_seconds=time.monotonic() - started,
        started=time.strftime(
            "%Y-%m-%d %H:%M UTC", time.gmtime(time.time() - (time.monotonic() - started))
        ),
    )


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@flow(name="reproduce-joseph")
def reproduce_joseph(
    params: dict[str, Any], profile: str, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Joseph et al.: mismatches and reduction factors of ce, kd and label_preserving, over
    `reproduce.seeds` training seeds, judged by compalign.verdicts' rules."""
    started = time.monotonic()
    settings = Params.model_validate(params)
    runs = run_seeds(settings)
    publish_progress("phase", text="judging the findings")
    evidence = seed_evidence(runs)
    record = run_record(
        "joseph",
        profile,
        settings,
        runs.results[0]["data_path"],
        started,
        overrides,
        runs.threads,
    )
    report = papers.joseph(
        runs.summary, evidence, paper_report_dir("joseph"), record, tuned=settings.align.tune
    )
    return _publish(report, settings, profile, runs.sources)


@flow(name="reproduce-meyer")
def reproduce_meyer(
    params: dict[str, Any], profile: str, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Meyer & Wong: structured Taylor pruning, ce against pw, accuracy and AUROC by group and
    class, over `reproduce.seeds` training seeds (papers.meyer gets every seed's rows)."""
    started = time.monotonic()
    settings = Params.model_validate(params)
    runs = run_seeds(settings)
    publish_progress("phase", text="judging the findings")
    group = (settings.audit.groups or ["rare"])[0]
    evidence = seed_evidence(runs, group)
    record = run_record(
        "meyer",
        profile,
        settings,
        runs.results[0]["data_path"],
        started,
        overrides,
        runs.threads,
    )
    report = papers.meyer(
        runs.summary, runs.metrics, evidence, group, paper_report_dir("meyer"), record
    )
    return _publish(report, settings, profile, runs.sources)


def floor_settings(settings: Params) -> Params:
    """The second dense population (the noise floor): as many members, trained alike from the
    next `populations.size` seeds (never a seed of the first population or of a pruned member)."""
    population = settings.populations
    return settings.model_copy(
        update={
            "populations": population.model_copy(
                update={"first_seed": population.first_seed + population.size}
            )
        }
    )


def _with_compressor(settings: Params, method: str) -> Params:
    return settings.model_copy(
        update={"populations": settings.populations.model_copy(update={"compressor": method})}
    )


@flow(name="reproduce-hooker")
def reproduce_hooker(
    params: dict[str, Any], profile: str, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Hooker et al.: populations pruned gradually at several sparsities against the dense
    population, beside a second dense population trained from other seeds (the noise floor);
    post-training quantization applied to the second dense population's members (the same kind
    of comparison as the pruned levels) and to the first's (the authors' comparison).
    `reproduce.seeds` does not apply: the members of a population already are independent
    training seeds (populations.size of them), and the verdicts are statistics over them."""
    started = time.monotonic()
    settings = Params.model_validate(params)
    runs = 1 + 2 * len(QUANTIZERS)
    publish_progress("phase", text=f"population 1 of {runs}: {settings.populations.compressor}")
    pruning = run_populations(settings)
    floor = floor_settings(settings)
    quantization, quantized, paired, floor_predictions = {}, {}, {}, None
    sources = [pruning["parent_run_id"]]
    step = 1
    for method in QUANTIZERS:
        options = settings.compress.options(method)  # e.g. "half (bfloat16)"
        shown = [str(value) for value in options.values() if value not in ([], None, "")]
        label = f"{method} ({', '.join(shown)})" if shown else method
        for which, base in (("first", settings), ("second", floor)):
            step += 1
            publish_progress(
                "phase", text=f"population {step} of {runs}: {method} of the {which} dense one"
            )
            result = run_populations(_with_compressor(base, method))
            sources.append(result["parent_run_id"])
            [predictions] = result["compressed_predictions"].values()
            if which == "first":
                quantization[label] = pd.DataFrame(result["summary"])
                paired[label] = np.asarray(predictions)
            else:
                quantized[label] = np.asarray(predictions)
                floor_predictions = np.asarray(result["dense_predictions"])
    publish_progress("phase", text="judging the findings")
    test = load_split(pruning["data_path"], "test")
    losses = [loss for loss in settings.populations.losses if loss != NO_FINE_TUNING] or [
        NO_FINE_TUNING
    ]
    pruned = {
        float(key.split("|")[0]): np.asarray(value)
        for key, value in pruning["compressed_predictions"].items()
        if key.split("|")[1] == losses[0]
    }
    evidence = PopulationEvidence(
        labels=test.labels.numpy(),
        class_names=pruning["class_names"],
        dense=np.asarray(pruning["dense_predictions"]),
        floor=floor_predictions
        if floor_predictions is not None
        else np.asarray(run_populations(floor)["dense_predictions"]),
        pruned=pruned,
        quantized=quantized,
        quantized_paired=paired,
        paired_levels=pruning["protocol"] == "from_dense",
    )
    record = run_record(
        "hooker",
        profile,
        settings,
        pruning["data_path"],
        started,
        overrides,
        "per task as flows/threads.py shares the cores"
        if settings.populations.threads_per_task is None
        else f"{settings.populations.threads_per_task} per member",
    )
    report = papers.hooker(
        pd.DataFrame(pruning["summary"]),
        pd.DataFrame(pruning["impact"]),
        quantization,
        evidence,
        paper_report_dir("hooker"),
        record,
        protocol=pruning["protocol"],
        loss=losses[0],
    )
    return _publish(report, settings, profile, sources)


FLOWS = {"joseph": reproduce_joseph, "meyer": reproduce_meyer, "hooker": reproduce_hooker}


def run_reproduce(
    paper: str, profile: str, overrides: list[str] | None = None
) -> list[dict[str, Any]]:
    """Reproduce one paper, or all three ("all"), with the given profile."""
    papers_to_run = PAPERS if paper == "all" else (paper,)
    settings = {name: paper_params(name, profile, overrides) for name in papers_to_run}
    return [
        FLOWS[name](settings[name].model_dump(), profile, list(overrides or []))
        for name in papers_to_run
    ]
