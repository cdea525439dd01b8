"""The populations flow on the tiny profile: local thread pool and a Dask LocalCluster agree."""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

OVERRIDES = [
    "populations.size=3",
    "populations.sparsities=[0.5,0.9]",
    "populations.losses=[ce,label_preserving]",
    "populations.gallery_examples=8",
    "populations.dask_workers=2",
    "populations.workers=2",  # as many at once as on Dask: the same thread counts, same numbers
    "populations.protocol=from_dense",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_server):
    """The same population twice on the local runner (the second cached), once on Dask; once
    vectorised, and once from scratch (Hooker et al.'s protocol) reusing the dense members."""
    from compalign.config import load_params
    from conftest import TINY
    from flows.populations import run_populations

    results = {}
    previous = os.getcwd()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        for runner in ("local", "dask"):
            project = tmp_path_factory.mktemp(runner)
            os.chdir(project)
            params = load_params(TINY, [*OVERRIDES, f"populations.runner={runner}"])
            results[runner] = run_populations(params)
            if runner == "local":
                results["local-again"] = run_populations(params)
                vectorised = load_params(
                    TINY,
                    [
                        *OVERRIDES,
                        "populations.sparsities=[0.5]",
                        "populations.losses=[ce]",
                        "populations.vectorise=true",
                    ],
                )
                results["vectorised"] = run_populations(vectorised)
                scratch = load_params(
                    TINY,
                    [
                        *OVERRIDES,
                        "populations.sparsities=[0.9]",
                        "populations.losses=[ce]",
                        "populations.protocol=from_scratch",
                    ],
                )
                # its own project (reports/populations is per project), with the local run's
                # store copied in so that its dense members are reused
                scratch_dir = tmp_path_factory.mktemp("from_scratch")
                shutil.copytree(project / "artifacts", scratch_dir / "artifacts")
                os.chdir(scratch_dir)
                results["from_scratch"] = run_populations(scratch)
                results["from_scratch-dir"] = scratch_dir
                os.chdir(project)
            results[f"{runner}-dir"] = project
    finally:
        os.chdir(previous)
    return results


def test_dask_runner_gives_the_local_runners_results(runs):
    local, dask = runs["local"], runs["dask"]
    assert local["dense_predictions"] == dask["dense_predictions"]
    assert local["compressed_predictions"] == dask["compressed_predictions"]
    pd.testing.assert_frame_equal(pd.DataFrame(local["summary"]), pd.DataFrame(dask["summary"]))
    assert {task["state"] for task in dask["tasks"]} == {"Completed"}
    # every member is its own task: 3 dense + 3 x 2 levels x (1 compress + 2 align) + predictions
    assert len(local["tasks"]) == 1 + 3 + 3 + 3 * 2 * (1 + 2 + 2)


def test_members_are_cached(runs):
    assert {task["state"] for task in runs["local-again"]["tasks"]} == {"Cached"}


def test_parent_run_holds_pies_impacted_classes_table_and_gallery(runs):
    result = runs["local"]
    client = MlflowClient(result["tracking_uri"])
    parent = client.get_run(result["parent_run_id"])
    assert parent.data.tags["kind"] == "populations"
    summary = pd.DataFrame(result["summary"])
    for row in summary.itertuples():
        prefix = f"{row.level:g}/{row.loss}/"
        assert parent.data.metrics[prefix + "pie_count"] == row.pie_count
        assert prefix + "impacted_classes" in parent.data.metrics
        assert prefix + "compressed_top1_on_pies" in parent.data.metrics
    files = {item.path for item in client.list_artifacts(parent.info.run_id, "populations")}
    assert {
        "populations/summary.md",
        "populations/class_impact.parquet",
        "populations/pies-0.9-ce.parquet",
        "populations/gallery-0.9-ce.png",
        "populations/report.html",
    } <= files
    assert (summary.pie_count > 0).any()
    # severe compression changes more modal labels than mild, for every loss
    for loss in ("ce", "label_preserving"):
        counts = summary[summary.loss == loss].set_index("level").pie_count
        assert counts[0.9] >= counts[0.5]
    table = pd.read_parquet(runs["local-dir"] / "reports/populations/pies-0.9-ce.parquet")
    assert len(table) == summary.set_index(["level", "loss"]).pie_count[(0.9, "ce")]
    assert (table.reference_mode != table.compressed_mode).all()
    # the self-contained HTML report shows the PIE gallery inline
    html = (runs["local-dir"] / "reports/populations/report.html").read_text()
    assert "data:image/png;base64," in html and "PIE" in html


def test_vectorised_members_match_one_at_a_time_training(runs):
    """The dense members trained as one batched model are the same members up to floating-point
    rounding: their test predictions agree with the one-at-a-time members' almost everywhere."""
    import numpy as np

    batched = np.array(runs["vectorised"]["dense_predictions"])
    single = np.array(runs["local"]["dense_predictions"])
    assert batched.shape == single.shape
    assert (batched == single).mean() >= 0.95
    stages = {task["stage"] for task in runs["vectorised"]["tasks"]}
    assert ("reference", "population") in {
        (t["stage"], t["model"]) for t in runs["vectorised"]["tasks"]
    }
    assert "reference" in stages


def test_from_scratch_members_are_independent_pruned_training_runs(runs):
    """Hooker et al.'s protocol: each pruned member trained from its own seed (none shared with
    a dense member), pruned inside its run, the classifier left dense; no compress/align."""
    from compalign.checkpoint import load_checkpoint, read_checkpoint_manifest
    from compalign.pruning import masks_of
    from tasks.pruned import pruned_seed

    result = runs["from_scratch"]
    assert result["protocol"] == "from_scratch" and runs["local"]["protocol"] == "from_dense"
    stages = [task["stage"] for task in result["tasks"]]
    assert stages.count("pruned") == 3 and "compress" not in stages and "align" not in stages
    # the dense members are the local run's, reused from the store
    assert result["dense_predictions"] == runs["local"]["dense_predictions"]
    entries = sorted((runs["from_scratch-dir"] / "artifacts" / "pruned").iterdir())
    assert len(entries) == 3
    seeds = sorted(read_checkpoint_manifest(entry)["seed"] for entry in entries)
    assert seeds == [pruned_seed(seed, 0.9) for seed in (0, 1, 2)]
    assert not set(seeds) & {0, 1, 2}
    for entry in entries:
        model = load_checkpoint(entry)
        masks = masks_of(model)
        classifier = model[-1]  # small_cnn's final nn.Linear
        assert not hasattr(classifier, "weight_mask") and bool((classifier.weight != 0).all())
        assert len(masks) == 3  # small_cnn's three convs
        for mask in masks.values():
            assert float((~mask).float().mean()) == pytest.approx(0.9, abs=0.01)
