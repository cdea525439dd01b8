"""The Prefect flow end to end on the tiny profile: MLflow runs, lineage and cache hits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

LOSSES = ("none", "ce", "kd", "label_preserving", "pw")
COMPRESSED = [f"magnitude_global-{s}-{loss}" for s in ("0.9", "0.97") for loss in LOSSES]


def children_of(client: MlflowClient, result: dict) -> dict[str, object]:
    runs = client.search_runs(
        [result["experiment_id"]],
        filter_string=f"tags.mlflow.parentRunId = '{result['parent_run_id']}'",
    )
    return {run.info.run_name: run for run in runs}


def states_by_stage(result: dict) -> dict[str, Counter]:
    counts: dict[str, Counter] = {}
    for task in result["tasks"]:
        counts.setdefault(task["stage"], Counter())[task["state"]] += 1
    return counts


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_server):
    """Three runs in one project: fresh, unchanged (all cached), one align setting changed."""
    import os

    from compalign.config import load_params
    from conftest import TINY
    from flows.pipeline import run_pipeline

    project = tmp_path_factory.mktemp("project")
    previous = os.getcwd()
    os.chdir(project)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        first = run_pipeline(load_params(TINY))
        second = run_pipeline(load_params(TINY))
        third = run_pipeline(load_params(TINY, ["align.epochs=3"]))
    finally:
        os.chdir(previous)
    return project, first, second, third


def test_first_run_logs_parent_and_one_child_per_model(runs):
    project, first, _, _ = runs
    assert first["tracking_uri"] == f"sqlite:///{project / 'mlflow.db'}"
    assert {task["state"] for task in first["tasks"]} == {"Completed"}
    client = MlflowClient(first["tracking_uri"])
    parent = client.get_run(first["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["reference.epochs"] == "8"
    assert parent.data.params["compress.sparsities"] == "[0.9, 0.97]"
    assert (
        len(parent.data.tags["git_commit"]) in (7, 40)
        or parent.data.tags["git_commit"] == "unknown"
    )
    assert len(parent.data.tags["data_digest"]) == 64
    assert parent.inputs.dataset_inputs[0].dataset.digest == parent.data.tags["data_digest"][:12]
    parent_files = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert {"summary.parquet", "summary.md", "report.html"} <= parent_files
    html = (project / "reports/pipeline/report.html").read_text()
    assert "data:image/png;base64," in html and "magnitude_global-0.97-label_preserving" in html
    # the artifacts sit beside the SQLite store, in mlartifacts/
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.artifact_location == (project / "mlartifacts").as_uri()
    assert (project / "mlartifacts").is_dir() and not (project / "mlruns").exists()

    children = children_of(client, first)
    assert sorted(children) == sorted(["reference", *COMPRESSED]), sorted(children)
    reference = children["reference"]
    assert reference.data.tags["role"] == "reference"
    assert 0.5 < reference.data.metrics["accuracy"] <= 1.0
    assert {f"recall.{c}" for c in range(10)} <= set(reference.data.metrics)
    for name in COMPRESSED:
        child = children[name]
        method, sparsity, loss = name.split("-")
        tags = child.data.tags
        assert (tags["role"], tags["compressor"], tags["sparsity"], tags["loss"]) == (
            "compressed",
            method,
            sparsity,
            loss,
        )
        assert (tags["dataset"], tags["model"]) == ("digits", "small_cnn")
        assert tags["reference_run_id"] == reference.info.run_id
        metrics = child.data.metrics
        assert {"accuracy", "mismatches", "mismatches_ref_correct", "recall.0"} <= set(metrics)
        assert metrics["mismatches_ref_correct"] <= metrics["mismatches"]
        assert metrics["weight_sparsity"] == pytest.approx(float(sparsity), abs=1e-3)
        assert parent.data.tags[f"child.{name}"] == child.info.run_id
        assert parent.data.metrics[f"{name}/mismatches"] == metrics["mismatches"]
        # the full audit: intervals, calibration, class and group fairness, attributions
        assert (
            metrics["mismatches_ci_low"] <= metrics["mismatches"] <= metrics["mismatches_ci_high"]
        )
        assert 0 <= metrics["ece"] <= 1 and "ece_change" in metrics
        assert {"worst_class_recall_change", "recall_gap_change", "recall_change.3"} <= set(metrics)
        assert {"group.odd.0.accuracy", "group.odd.accuracy_gap_change"} <= set(metrics)
        for method in ("saliency", "integrated_gradients"):
            assert -1 <= metrics[f"attribution.{method}.spearman_mean"] <= 1
            assert 0 <= metrics[f"attribution.{method}.iou_p50"] <= 1
        if loss not in ("ce", "none") and metrics["mismatches"] > 0:
            assert (
                "reduction_factor" in metrics
                and tags["baseline_run_id"]
                == children[f"magnitude_global-{sparsity}-ce"].info.run_id
            )
        if loss == "pw":
            assert child.data.params == {"loss.gamma": "5.0", "loss.m": "0.75"}


def test_child_artifacts_agree_with_metrics_and_load_back(runs):
    _, first, _, _ = runs
    client = MlflowClient(first["tracking_uri"])
    child = children_of(client, first)["magnitude_global-0.97-kd"]
    run_id = child.info.run_id
    listed = {item.path for item in client.list_artifacts(run_id)}
    assert {
        "predictions.parquet",
        "checkpoint",
        "metrics.json",
        "attribution_agreement.parquet",
        "attribution_agreement.png",
    } <= listed  # the MLflow model is a LoggedModel, not a run artifact
    table = pd.read_parquet(client.download_artifacts(run_id, "predictions.parquet"))
    assert list(table.columns) == [
        "example_id",
        "label",
        "reference_prediction",
        "reference_confidence",
        "compressed_prediction",
        "compressed_confidence",
        "mismatch",
    ]
    assert int(table.mismatch.sum()) == child.data.metrics["mismatches"]
    right = table.reference_prediction == table.label
    assert int((table.mismatch & right).sum()) == child.data.metrics["mismatches_ref_correct"]
    assert table.compressed_prediction.eq(table.label).mean() == pytest.approx(
        child.data.metrics["accuracy"]
    )

    # the state-dict checkpoint (weights_only) and the MLflow model give the same predictions
    from compalign.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(Path(client.download_artifacts(run_id, "checkpoint"))).eval()
    logged = mlflow.pytorch.load_model(f"runs:/{run_id}/model").eval()
    images = torch.randn(5, 1, 8, 8)
    assert torch.allclose(checkpoint(images), logged(images), atol=1e-6)


def test_the_predictions_stage_holds_every_audited_models_predictions(runs):
    """tasks/predictions.py: one row per model and test example, the models in the summary's
    order; each model's mismatches and accuracy are its audit's."""
    project, first, _, _ = runs
    table = pd.read_parquet(project / first["predictions"] / "predictions.parquet")
    names = [row["name"] for row in first["summary"]]
    assert list(dict.fromkeys(table["model"])) == names == ["reference", *COMPRESSED]
    for name, rows in table.groupby("model", sort=False):
        metrics = first["metrics"][name]
        assert len(rows) == 200 and rows["correct"].mean() == pytest.approx(metrics["accuracy"])
        assert rows["mismatch"].sum() == metrics.get("mismatches", 0)
    reference = table[table["model"] == "reference"]
    assert (reference["role"] == "reference").all() and not reference["mismatch"].any()


def test_rerun_with_nothing_changed_is_all_cached_and_logs_no_children(runs):
    _, first, second, _ = runs
    assert {task["state"] for task in second["tasks"]} == {"Cached"}, [
        t for t in second["tasks"] if t["state"] != "Cached"
    ]
    assert len(second["tasks"]) == len(first["tasks"]) == 1 + 1 + 2 + 8 + 11 + 1 + 11
    client = MlflowClient(second["tracking_uri"])
    assert children_of(client, second) == {}
    parent = client.get_run(second["parent_run_id"])
    first_children = children_of(client, first)
    for name, child in first_children.items():
        assert parent.data.tags[f"child.{name}"] == child.info.run_id
    assert [row["run_id"] for row in second["summary"]] == [
        row["run_id"] for row in first["summary"]
    ]


def test_changing_an_align_setting_reruns_only_alignment_and_its_audits(runs):
    _, first, _, third = runs
    stages = states_by_stage(third)
    assert stages["prepare"] == Counter({"Cached": 1})
    assert stages["reference"] == Counter({"Cached": 1})
    assert stages["compress"] == Counter({"Cached": 2})
    assert stages["align"] == Counter({"Completed": 8})
    # the reference's audit does not depend on alignment; every other audit does, the
    # un-fine-tuned models' through their reduction factor against the (retrained) ce model
    assert stages["audit"] == Counter({"Cached": 1, "Completed": 10})
    assert stages["costs"] == Counter({"Cached": 1, "Completed": 10})  # new runs get their costs
    assert stages["predictions"] == Counter({"Completed": 1})  # ten audits are new
    client = MlflowClient(third["tracking_uri"])
    new_children = children_of(client, third)
    assert sorted(new_children) == sorted(COMPRESSED)
    reference_id = children_of(client, first)["reference"].info.run_id
    assert {child.data.tags["reference_run_id"] for child in new_children.values()} == {
        reference_id
    }


def test_no_run_left_running(runs):
    _, first, _, _ = runs
    client = MlflowClient(first["tracking_uri"])
    running = client.search_runs(
        [first["experiment_id"]], filter_string="attributes.status = 'RUNNING'"
    )
    assert running == []


def test_two_fine_tunings_run_at_once_with_two_workers(runs):
    """run.workers 2 (tiny profile): some two align task runs overlap in time, read from the
    Prefect API's start and end times of the first run's task runs."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    _, first, _, _ = runs
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[first["flow_run_id"]]))
        )
    aligns = [run for run in task_runs if run.name.startswith("align")]
    assert len(aligns) == 8 and all(run.start_time and run.end_time for run in aligns)
    overlaps = [
        min(a.end_time, b.end_time) - max(a.start_time, b.start_time)
        for i, a in enumerate(aligns)
        for b in aligns[i + 1 :]
    ]
    assert max(overlaps).total_seconds() > 0, sorted(overlaps)[-3:]


def test_a_rerun_of_a_recorded_run_is_answered_from_the_store(runs, monkeypatch):
    """The rerun check (no Prefect, no MLflow) finds the recorded result of the runs with
    the same params, and declines changed params, changed code, a deleted store entry and
    --refresh."""
    import tasks.infra.code
    from compalign.config import load_params
    from conftest import TINY
    from flows.rerun import REPORT_DIR, cached_run, task_keys, tracking_identity
    from tasks.infra import tracking

    project, first, second, third = runs
    monkeypatch.chdir(project)
    assert tracking_identity("tiny") == tracking.setup("tiny")
    for overrides, recorded in (([], second), (["align.epochs=3"], third)):
        params = load_params(TINY, overrides)
        result = cached_run(params, REPORT_DIR)
        pd.testing.assert_frame_equal(
            pd.DataFrame(result["summary"]), pd.DataFrame(recorded["summary"])
        )
        assert result["parent_run_id"] == recorded["parent_run_id"]
        assert {task["state"] for task in result["tasks"]} == {"Cached"}
        assert len(result["tasks"]) == len(recorded["tasks"])
    # workers and threads are how a run executes, not what it computes
    assert cached_run(load_params(TINY, ["run.workers=1", "run.threads=1"]), REPORT_DIR)
    assert cached_run(load_params(TINY, ["align.epochs=4"]), REPORT_DIR) is None
    monkeypatch.setenv("COMPALIGN_REFRESH", "1")
    assert cached_run(load_params(TINY), REPORT_DIR) is None
    monkeypatch.delenv("COMPALIGN_REFRESH")
    # an edited loss changes the keys of its alignments and their audits
    read_source = tasks.infra.code.read_source
    monkeypatch.setattr(
        tasks.infra.code,
        "read_source",
        lambda name: read_source(name) + (b"\n# edited" if name.endswith("losses/kd.py") else b""),
    )
    assert task_keys(load_params(TINY)) is None
    monkeypatch.undo()
    monkeypatch.chdir(project)
    keys = task_keys(load_params(TINY))
    assert len(keys) == len(second["tasks"])
    entry = project / "artifacts" / "costs" / keys[-1].partition("-")[2] / "costs.json"
    entry.write_text(entry.read_text() + " ")  # a store entry that no longer matches its digest
    assert cached_run(load_params(TINY), REPORT_DIR) is None
