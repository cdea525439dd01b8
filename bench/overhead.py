"""Orchestration and tracking overhead of the pipeline on the default profile.

Runs the same work three ways in fresh temporary projects and prints wall times and ratios:
  plain   -- the core functions called directly (no Prefect, no MLflow, no store, one thread of work)
  flow    -- the Prefect flow with MLflow tracking, as `compalign run` does (temporary Prefect
             server start included), with 1 worker and with the default worker count
  cached  -- the same flow again with nothing changed (every task Cached), in this process and as
             a new `compalign run` process (what a second `make run` costs)
The temporary Prefect server's start (once per process, migrations the first time a Prefect home
is used) is timed on its own, with a flow that does nothing.

Usage: python bench/overhead.py [--params params.yaml] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def plain_pipeline(params) -> dict[str, float]:
    """The pipeline's work as plain core calls, in memory."""
    from compalign.compressors import COMPRESSORS
    from compalign.data import build_table, load_split, write_prepared
    from compalign.losses import LOSSES
    from compalign.models import build_model
    from compalign.train import fit, predict_logits
    from flows.plan import model_grid
    from tasks.train import architecture_of, train_config

    with tempfile.TemporaryDirectory() as scratch:
        table, manifest = build_table(params.data)
        manifest = write_prepared(table, manifest, scratch)
        train, test = load_split(scratch, "train", manifest), load_split(scratch, "test", manifest)
    reference = build_model(
        **architecture_of(params.reference.model, manifest), seed=params.reference.seed
    )
    fit(reference, train, train_config(params.reference), LOSSES["ce"]())
    reference_predictions = predict_logits(reference, test).argmax(1)
    mismatches = {}
    compressed = {}
    for spec in model_grid(params):
        key = (spec.method, spec.sparsity)
        if key not in compressed:
            model = COMPRESSORS[spec.method](copy.deepcopy(reference), spec.sparsity)
            compressed[key] = model.state_dict()
        model = COMPRESSORS[spec.method](copy.deepcopy(reference), spec.sparsity)
        model.load_state_dict(compressed[key])
        if spec.fine_tuned:
            hyper = params.align.loss_hyperparameters(spec.loss)
            fit(
                model,
                train,
                train_config(params.align),
                LOSSES[spec.loss](**hyper),
                reference=reference,
            )
        mismatches[spec.name] = int(
            (predict_logits(model, test).argmax(1) != reference_predictions).sum()
        )
    return mismatches


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    arguments = parser.parse_args()

    from compalign.config import load_params

    params = load_params(arguments.params, arguments.overrides)
    home = Path(tempfile.mkdtemp(prefix="compalign-bench-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from flows.runtime import configure_environment

    configure_environment(home)
    import torch
    from prefect import flow

    from flows.pipeline import run_pipeline

    print(f"profile: {arguments.params} {' '.join(arguments.overrides)}")
    print(f"torch threads: {torch.get_num_threads()}, cores: {os.cpu_count()}")
    plain_seconds, plain_mismatches = timed(plain_pipeline, params)
    rows = [("plain core calls", plain_seconds)]
    rows.append(("Prefect server start (no-op flow)", timed(flow(lambda: None, name="warm-up"))[0]))
    flow_mismatches = None
    for workers in sorted({1, params.run.workers}):
        project = home / f"workers-{workers}"
        project.mkdir()
        os.chdir(project)
        settings = params.model_copy(
            update={"run": params.run.model_copy(update={"workers": workers})}
        )
        seconds, result = timed(run_pipeline, settings)
        rows.append((f"flow + tracking, {workers} worker(s)", seconds))
        flow_mismatches = {
            r["name"]: r["mismatches"] for r in result["summary"] if r["role"] == "compressed"
        }
        if workers == params.run.workers:
            cached_seconds, cached = timed(run_pipeline, settings)
            assert {t["state"] for t in cached["tasks"]} == {"Cached"}
            rows.append((f"cached rerun, {workers} worker(s)", cached_seconds))
            command = [
                str(Path(sys.executable).parent / "compalign"),
                "run",
                "--params",
                arguments.params,
            ]
            for override in arguments.overrides:
                command += ["--set", override]
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
            # the first new process migrates the project's own Prefect home; time the second,
            # which is what a second `make run` costs
            for _ in range(2):
                seconds, done = timed(
                    subprocess.run, command, env=env, capture_output=True, text=True
                )
                assert f"{len(cached['tasks'])} Cached" in done.stdout, done.stdout + done.stderr
            rows.append(("cached rerun, new `compalign run`", seconds))
    if flow_mismatches != plain_mismatches:
        print(
            "note: the flow's mismatches differ from the plain run's:",
            flow_mismatches,
            plain_mismatches,
        )

    print(f"\n{'run':<34}{'seconds':>9}{'x plain':>9}")
    for name, seconds in rows:
        print(f"{name:<34}{seconds:>9.1f}{seconds / plain_seconds:>9.2f}")


if __name__ == "__main__":
    main()
