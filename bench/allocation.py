"""Torch threads per task, old rule against new, on a run whose reference training dominates.

The old rule gave every task the cores divided among the workers (`run.workers: auto`: one
thread each), so the reference, which trains while nothing else can run, used one core. The new
one (flows.pipeline.step_threads) gives a task the cores divided among the tasks that can run
beside it: every core to the reference. Each allocation runs the same params in a fresh
temporary project, in this process, with `run_pipeline` as `compalign run` runs it (one Prefect
API server, started once, before); the old rule is `run.threads` pinned to cores // workers,
which is what every task got before. Printed: each run's wall time, its reference task run's
seconds (from the Prefect API) and the thread count the reference's checkpoint records, and
the ratios new / old. The new rule leaves other work its cores (`run.busy_cores: auto`): on a
busy machine it gives the reference fewer threads, and the recorded count says so. Nothing is
asserted: timings depend on the machine and on what else runs (the load average is printed).

Default profile: params.yaml with a ResNet-20 reference trained 10 epochs on the digits
upscaled to 32x32, and the smallest grid after it (one sparsity, `ce`, one epoch, a short
audit), so that the reference is most of the run.

Usage: python bench/allocation.py [--allocation both|old|new] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from overhead import task_seconds  # bench/overhead.py (bench/ is on the path)

ROOT = Path(__file__).resolve().parents[1]
PROFILE = [
    "data.image_size=32",
    "reference.model=resnet20",
    "reference.epochs=10",
    "compress.sparsities=[0.9]",
    "align.losses=[ce]",
    "align.epochs=1",
    "audit.bootstrap_samples=200",
    "audit.attribution_samples=8",
    "audit.latency_repeats=10",
]


def run_once(params, home: Path, label: str) -> dict[str, float]:
    """Run the pipeline in a new project under `home`; its wall seconds, its reference task
    run's seconds and the reference checkpoint's recorded torch threads."""
    from mlflow.tracking import MlflowClient

    from flows.pipeline import run_pipeline
    from tasks.infra import tracking

    project = home / label
    project.mkdir()
    os.chdir(project)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # each project its own store
    tracking.setup(params.run.experiment)
    tracking.warm_up()
    start = time.perf_counter()
    result = run_pipeline(params)
    wall = time.perf_counter() - start
    children = MlflowClient(result["tracking_uri"]).search_runs(
        [result["experiment_id"]],
        filter_string=f"tags.mlflow.parentRunId = '{result['parent_run_id']}'",
    )
    reference = next(run for run in children if run.info.run_name == "reference")
    return {
        "wall": wall,
        "reference": task_seconds(result["flow_run_id"])["reference"],
        "threads": float(reference.data.tags.get("checkpoint_torch_threads", "nan")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--allocation", choices=["both", "old", "new"], default="both")
    arguments = parser.parse_args()
    params_path = str(Path(arguments.params).resolve())  # the projects are other folders

    from compalign.config import cores, load_params

    params = load_params(params_path, [*PROFILE, *arguments.overrides])
    old_threads = max(1, cores() // params.run.worker_count())
    settings = {
        "old": params.model_copy(
            update={"run": params.run.model_copy(update={"threads": old_threads})}
        ),
        "new": params,
    }
    home = Path(tempfile.mkdtemp(prefix="compalign-allocation-"))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # this bench's lines only
    from flows.environment import configure_environment
    from flows.server import start_api_server, wait_for_api_server

    configure_environment(home)
    print(f"profile: {params_path} {' '.join([*PROFILE, *arguments.overrides])}")
    print(
        f"cores: {cores()}, run.workers {params.run.workers}; old rule: {old_threads} torch "
        f"thread(s) per task; load average at start: {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    start_api_server()
    wait_for_api_server()
    import mlflow  # noqa: F401  (it sets its logger's level when imported)

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    labels = ["old", "new"] if arguments.allocation == "both" else [arguments.allocation]
    found = {}
    for label in labels:
        found[label] = run_once(settings[label], home, label)
        row = found[label]
        print(
            f"{label}: run {row['wall']:.1f} s, reference task {row['reference']:.1f} s "
            f"({row['threads']:.0f} torch threads recorded)",
            flush=True,
        )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if len(found) == 2:
        old, new = found["old"], found["new"]
        print(
            f"new / old: reference stage {new['reference'] / old['reference']:.2f}, "
            f"whole run {new['wall'] / old['wall']:.2f}"
        )


if __name__ == "__main__":
    main()
