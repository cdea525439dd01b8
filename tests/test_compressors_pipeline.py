"""Every compressor through the whole flow on the tiny profile, with its costs in MLflow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

METHODS = [
    "magnitude_global",
    "magnitude_layerwise",
    "random",
    "gradual_magnitude",
    "structured",
    "quantize_dynamic",
    "quantize_static",
    "half",
]
COST_METRICS = {
    "params_total",
    "params_nonzero",
    "macs",
    "size_bytes",
    "latency_ms_b1",
    "latency_ms_b64",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, prefect_server):
    from compalign.config import load_params
    from conftest import TINY
    from flows.pipeline import run_pipeline, task_workers

    params = load_params(
        TINY,
        [
            f"compress.methods=[{','.join(METHODS)}]",
            "compress.sparsities=[0.5]",
            "compress.structured.importance=taylor",
            "align.losses=[none,ce]",
            "align.quantization_aware=true",
            "audit.latency_repeats=3",
            "audit.attribution_samples=4",
        ],
    )
    assert task_workers(params) == 1  # static int8 traces (torch.export): one task at a time
    project = tmp_path_factory.mktemp("compressors")
    previous = os.getcwd()
    os.chdir(project)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        result = run_pipeline(params)
    finally:
        os.chdir(previous)
    client = MlflowClient(result["tracking_uri"])
    runs = client.search_runs(
        [result["experiment_id"]],
        filter_string=f"tags.mlflow.parentRunId = '{result['parent_run_id']}'",
    )
    return result, client, {run.info.run_name: run for run in runs}


def kind_of(client, run) -> str:
    path = client.download_artifacts(run.info.run_id, "checkpoint/manifest.json")
    return json.loads(Path(path).read_text())["kind"]


def test_every_compressor_and_loss_is_audited_with_costs(run):
    result, client, children = run
    levels = {
        "magnitude_global": "-0.5",
        "magnitude_layerwise": "-0.5",
        "random": "-0.5",
        "gradual_magnitude": "-0.5",
        "structured": "-0.5",
    }
    expected = {"reference"} | {
        f"{method}{levels.get(method, '')}-{loss}" for method in METHODS for loss in ("none", "ce")
    }
    assert set(children) == expected
    for name, child in children.items():
        assert set(child.data.metrics) >= COST_METRICS, name
        assert child.data.metrics["latency_ms_b64"] > 0
    assert {row["name"] for row in result["summary"]} == expected


def test_pruned_models_reach_their_levels(run):
    _, _, children = run
    reference_macs = children["reference"].data.metrics["macs"]
    for method in ("magnitude_global", "magnitude_layerwise", "random", "gradual_magnitude"):
        for loss in ("none", "ce"):
            metrics = children[f"{method}-0.5-{loss}"].data.metrics
            assert metrics["weight_sparsity"] == pytest.approx(0.5, abs=0.01), (method, loss)
            assert metrics["macs"] == reference_macs  # masks do not remove compute
    for loss in ("none", "ce"):
        metrics = children[f"structured-0.5-{loss}"].data.metrics
        assert metrics["macs"] / reference_macs == pytest.approx(0.5, abs=0.01)
        assert metrics["params_total"] < 0.7 * children["reference"].data.metrics["params_total"]


def test_quantized_models_stay_quantized_after_aware_fine_tuning(run):
    _, client, children = run
    for method in ("quantize_dynamic", "quantize_static", "half"):
        for loss in ("none", "ce"):
            child = children[f"{method}-{loss}"]
            assert kind_of(client, child) == method
            assert child.data.tags["level_kind"] == "none"
    static = children["quantize_static-ce"].data.metrics
    assert static["size_bytes"] < 0.5 * children["reference"].data.metrics["size_bytes"]
    # int8 models have no gradients: no attribution agreement; half precision has one
    assert not any(k.startswith("attribution.") for k in static)
    assert "attribution.saliency.spearman_mean" in children["half-ce"].data.metrics


def test_taylor_importance_ranks_channels_per_loss(run):
    result, _, _ = run
    compress_tasks = [t for t in result["tasks"] if t["stage"] == "compress"]
    names = {t["model"] for t in compress_tasks}
    assert {"structured-0.5-by-ce"} <= names  # none and ce share ce's ranking
    assert len(compress_tasks) == len(names)
