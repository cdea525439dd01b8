"""The pipeline on Dask (a LocalCluster of worker processes on loopback) gives the local
runner's results."""

from __future__ import annotations

import os

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

# the smallest grid with every kind of task: one compression, one fine-tuning
OVERRIDES = [
    "reference.epochs=2",
    "compress.sparsities=[0.9]",
    "align.losses=[ce]",
    "align.epochs=1",
    "audit.bootstrap_samples=100",
    "audit.attribution_samples=4",
    "audit.integrated_gradients_steps=2",
    "run.workers=2",
    # thread counts from the run graph alone (not from the load when each task starts): the
    # same on both runners, so the same numbers
    "run.busy_cores=0",
]


def test_dask_runner_gives_the_local_runners_results(tmp_path, prefect_server):
    from compalign.config import load_params
    from conftest import TINY
    from flows.pipeline import run_pipeline

    results = {}
    previous = os.getcwd()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        for runner in ("local", "dask"):
            (tmp_path / runner).mkdir()
            os.chdir(tmp_path / runner)
            results[runner] = run_pipeline(load_params(TINY, [*OVERRIDES, f"run.runner={runner}"]))
            os.environ.pop("MLFLOW_TRACKING_URI", None)  # each project its own store
    finally:
        os.chdir(previous)
    local, dask = results["local"], results["dask"]
    assert {task["state"] for task in dask["tasks"]} == {"Completed"}
    assert [(t["stage"], t["model"]) for t in dask["tasks"]] == [
        (t["stage"], t["model"]) for t in local["tasks"]
    ]
    assert dask["metrics"] == local["metrics"]
    # each task set its torch threads where it ran, in a thread of the local pool or in a Dask
    # worker process: the reference, alone, every core; the fine-tuning, which can run beside
    # the reference's audit, half (each checkpoint's torch_threads, logged with its audit)
    from mlflow.tracking import MlflowClient

    from compalign.config import cores

    for result in (local, dask):
        children = MlflowClient(result["tracking_uri"]).search_runs(
            [result["experiment_id"]],
            filter_string=f"tags.mlflow.parentRunId = '{result['parent_run_id']}'",
        )
        recorded = {
            run.info.run_name: run.data.tags["checkpoint_torch_threads"] for run in children
        }
        assert recorded == {
            "reference": str(cores()),
            "magnitude_global-0.9-ce": str(max(1, cores() // 2)),
        }
    measured = [c for c in pd.DataFrame(local["summary"]).columns if c.startswith("latency")]
    frames = [
        pd.DataFrame(r["summary"]).drop(columns=["run_id", *measured]) for r in results.values()
    ]
    pd.testing.assert_frame_equal(*frames)
