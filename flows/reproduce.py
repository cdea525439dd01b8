"""`compalign reproduce`: regenerate the seed papers' results, one Prefect flow per paper.

Each paper has a `cpu` profile (the embedded digits, minutes on 2 cores) and a `paper` profile
(the paper's dataset and architecture; needs the data on disk and, in practice, a GPU) in
profiles/<paper>-<profile>.yaml. A paper's flow runs the pipeline or the populations flow with
its profile (so every result is also in MLflow, in an experiment named after the paper), then
writes reports/<paper>/: tables (CSV, Markdown), figures (PNG) and README.md with a verdict per
headline finding; the same files go to a `reproduce-<paper>` run in that experiment.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow

from compalign.compressors import COMPRESSORS
from compalign.config import Params
from compalign.report import papers
from flows import artifacts
from flows.pipeline import pipeline, task_runner
from flows.populations import run_populations
from flows.profiles import PAPERS, paper_params
from tasks import tracking

# Hooker et al. compare pruning with post-training quantization: every quantizing compressor
QUANTIZERS = tuple(name for name, entry in COMPRESSORS.items() if entry.family.quantized)


def _publish(
    report: papers.PaperReport, settings: Params, profile: str, sources: list[str]
) -> dict[str, Any]:
    """Write the report to reports/<paper>/ and log it on a `reproduce-<paper>` run."""
    out_dir = Path("reports") / report.paper
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
    own seed. `sources`: the MLflow parent runs."""

    summary: pd.DataFrame
    metrics: dict[str, dict[str, float]]
    sources: list[str]


def run_seeds(settings: Params) -> SeedRuns:
    """Run the pipeline once per training seed: seed i is `settings.training_seeds(i)` (every
    seed of reference training, compression and fine-tuning moved by i; the split and the test
    examples stay). Each run is a normal pipeline run: cached per stage, logged to MLflow."""
    frames, metrics, sources = [], {}, []
    for offset in range(settings.reproduce.seeds):
        seeded = settings.training_seeds(offset)
        result = _pipeline(seeded)
        seed = seeded.reference.seed
        suffix = "" if offset == 0 else f"@seed{seed}"
        frame = pd.DataFrame(result["summary"])
        frame.insert(0, "seed", seed)
        frame["name"] = frame["name"] + suffix
        frames.append(frame)
        metrics.update({f"{name}{suffix}": values for name, values in result["metrics"].items()})
        sources.append(result["parent_run_id"])
    return SeedRuns(pd.concat(frames, ignore_index=True), metrics, sources)


@flow(name="reproduce-joseph")
def reproduce_joseph(params: dict[str, Any], profile: str) -> dict[str, Any]:
    """Joseph et al.: mismatches and reduction factors of ce, kd and label_preserving, over
    `reproduce.seeds` training seeds."""
    settings = Params.model_validate(params)
    runs = run_seeds(settings)
    report = papers.joseph(runs.summary, Path("reports/joseph"), profile, tuned=settings.align.tune)
    return _publish(report, settings, profile, runs.sources)


@flow(name="reproduce-meyer")
def reproduce_meyer(params: dict[str, Any], profile: str) -> dict[str, Any]:
    """Meyer & Wong: structured Taylor pruning, ce against pw, accuracy by group, over
    `reproduce.seeds` training seeds (papers.meyer gets every seed's rows: see SeedRuns)."""
    settings = Params.model_validate(params)
    runs = run_seeds(settings)
    group = (settings.audit.groups or ["rare"])[0]
    report = papers.meyer(runs.summary, runs.metrics, group, Path("reports/meyer"), profile)
    return _publish(report, settings, profile, runs.sources)


@flow(name="reproduce-hooker")
def reproduce_hooker(params: dict[str, Any], profile: str) -> dict[str, Any]:
    """Hooker et al.: populations pruned gradually at several sparsities, and post-training
    quantized, against the same dense members. `reproduce.seeds` does not apply: the members
    of a population already are independent training seeds (populations.size of them), and
    the verdicts are statistics over the members (modal labels, Welch's test)."""
    settings = Params.model_validate(params)
    pruning = run_populations(settings)
    quantization, sources = {}, [pruning["parent_run_id"]]
    for method in QUANTIZERS:
        quantized = settings.model_copy(
            update={"populations": settings.populations.model_copy(update={"compressor": method})}
        )
        result = run_populations(quantized)
        options = settings.compress.options(method)  # e.g. "half (bfloat16)"
        label = f"{method} ({', '.join(map(str, options.values()))})" if options else method
        quantization[label] = pd.DataFrame(result["summary"])
        sources.append(result["parent_run_id"])
    report = papers.hooker(
        pd.DataFrame(pruning["summary"]),
        pd.DataFrame(pruning["impact"]),
        quantization,
        Path("reports/hooker"),
        profile,
        protocol=pruning["protocol"],
    )
    return _publish(report, settings, profile, sources)


FLOWS = {"joseph": reproduce_joseph, "meyer": reproduce_meyer, "hooker": reproduce_hooker}


def run_reproduce(
    paper: str, profile: str, overrides: list[str] | None = None
) -> list[dict[str, Any]]:
    """Reproduce one paper, or all three ("all"), with the given profile."""
    papers = PAPERS if paper == "all" else (paper,)
    settings = {name: paper_params(name, profile, overrides) for name in papers}  # validate first
    return [FLOWS[name](settings[name].model_dump(), profile) for name in papers]
