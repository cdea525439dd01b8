"""compalign.audit_models: models of another architecture than ours, in the formats users bring
them, audited against a reference on a tiny image folder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import compalign
from compalign.errors import UserError
from conftest import BYOM_CLASSES

FAST = {
    "bootstrap_samples": 200,
    "attribution_samples": 4,
    "integrated_gradients_steps": 4,
    "figure_examples": 2,
    "latency_warmup": 0,
    "latency_repeats": 1,
    "latency_batch_sizes": [1, 4],
}
INPUT_32 = {"resize": 32, "centre_crop": 32}
STEPS = []  # the progress of the module's comparison: (done, total, step)


@pytest.fixture(scope="module")
def comparison(byom, byom_test_split):
    split, manifest = byom_test_split
    return compalign.audit_models(
        f"torchvision:resnet18@{byom['state.pt']}",
        {
            "same": str(byom["model.ts"]),
            "swapped": str(byom["swapped.ts"]),
            "onnx": str(byom["model.onnx"]),
        },
        split,
        reference2=str(byom["model.pt2"]),
        class_names=manifest["class_names"],
        transform=INPUT_32,
        fail_on=["mismatches<=0", "accuracy_change>=-1"],
        progress=lambda *step: STEPS.append(step),
        **FAST,
    )


def test_an_identical_candidate_has_no_mismatches(comparison):
    summary = comparison.summary.set_index("name")
    assert summary.loc["same", "mismatches"] == 0
    assert summary.loc["same", "accuracy_change"] == 0
    assert summary.loc["same", "attribution_agreement"] == pytest.approx(1.0, abs=1e-4)


def test_swapped_logits_flip_exactly_the_examples_of_those_two_classes(comparison):
    predictions = comparison.predictions
    expected = int(predictions["reference_prediction"].isin([0, 1]).sum())
    assert comparison.summary.set_index("name").loc["swapped", "mismatches"] == expected
    flipped = predictions["swapped_prediction"] != predictions["reference_prediction"]
    assert (flipped == predictions["reference_prediction"].isin([0, 1])).all()


def test_the_onnx_export_agrees_with_the_reference_on_every_example(comparison):
    predictions = comparison.predictions
    assert (predictions["onnx_prediction"] == predictions["reference_prediction"]).all()
    np.testing.assert_allclose(
        predictions["onnx_confidence"], predictions["reference_confidence"], atol=1e-5
    )
    assert comparison.metrics["onnx"]["mismatches"] == 0
    assert "attribution.saliency.spearman_mean" not in comparison.metrics["onnx"]  # no gradients


def test_the_second_reference_is_the_noise_floor_beside_each_candidate(comparison):
    summary = comparison.summary.set_index("name")
    assert list(summary.index) == ["reference", "reference2", "same", "swapped", "onnx"]
    assert summary.loc["reference2", "role"] == "reference2"
    floor = summary.loc["reference2", "mismatches"]
    assert (summary.loc[["same", "swapped", "onnx"], "noise_floor_mismatches"] == floor).all()
    swapped = comparison.gate_metrics("swapped")
    assert swapped["mismatches_above_noise_floor"] == swapped["mismatches"] - floor


def test_predictions_have_one_row_per_test_example(comparison, byom_test_split):
    split, _ = byom_test_split
    predictions = comparison.predictions
    assert list(predictions["example_id"]) == split.example_ids
    for name in ("reference", "same", "swapped", "onnx"):
        assert {f"{name}_prediction", f"{name}_confidence"} <= set(predictions.columns)
    assert comparison.class_names == BYOM_CLASSES


def test_costs_where_the_format_allows(comparison, byom):
    summary = comparison.summary.set_index("name")
    assert summary.loc["reference", "params_total"] == 11_178_051  # ResNet-18, 3 classes
    assert summary.loc["reference", "macs"] > 0
    assert np.isnan(summary.loc["onnx", "macs"])  # no PyTorch module to count
    assert summary.loc["onnx", "params_total"] > 11_000_000  # from its initializers
    assert summary.loc["reference", "size_bytes"] == byom["state.pt"].stat().st_size
    assert (summary["latency_ms_b1"] > 0).all()


def test_a_fixed_batch_onnx_model_is_timed_at_its_batch_and_labelled(comparison, tmp_path):
    """The ONNX export takes batch 2 only: its batch-4 latency is two real batch-2 calls,
    labelled so on the page; the other models ran a real batch of 4."""
    summary = comparison.summary.set_index("name")
    assert summary.loc["onnx", "latency_fixed_batch"] == 2
    assert summary.loc["onnx", "latency_ms_b4"] == pytest.approx(
        2 * summary.loc["onnx", "latency_ms_b1"]
    )
    assert summary.drop(index="onnx")["latency_fixed_batch"].isna().all()
    from compalign.report.html import comparison_page

    page = comparison_page(comparison, tmp_path / "page.html").read_text()
    assert ", batch 2 x 2</td>" in page and ", batch 2 x 1</td>" in page
    assert page.count("batch 2 x") == 2  # the onnx row only


def test_the_gate_checks_every_rule_on_every_candidate(comparison, tmp_path):
    found = [(v.candidate, v.rule.metric, v.passed) for v in comparison.verdicts]
    assert found == [
        ("same", "mismatches", True),
        ("same", "accuracy_change", True),
        ("swapped", "mismatches", False),
        ("swapped", "accuracy_change", True),
        ("onnx", "mismatches", True),
        ("onnx", "accuracy_change", True),
    ]
    written = comparison.write(tmp_path / "gate")
    assert len(json.loads(written["gate"].read_text())) == 6


def test_progress_is_a_step_per_model_and_metric_then_costs():
    from compalign.audit.metrics import METRICS
    from compalign.compare import comparison_steps

    total = comparison_steps(5)
    assert [step[:2] for step in STEPS] == [(done, total) for done in range(total + 1)]
    texts = [step[2] for step in STEPS]
    assert texts[0].startswith("reference: predictions")
    assert texts[1 : 1 + len(METRICS)] == [f"reference: {name}" for name in METRICS]
    assert texts[-2] == "onnx: costs (size, latency)" and texts[-1] == "done"


def test_writes_tables_and_a_page(comparison, tmp_path):
    from compalign.report.html import write_comparison

    written = write_comparison(comparison, tmp_path / "compare")
    assert pd.read_parquet(written["summary"]).shape[0] == 5
    assert pd.read_parquet(written["predictions"]).shape[0] == len(comparison.predictions)
    page = written["report"].read_text()
    assert "swapped" in page and "<script" not in page and "data:image/png;base64" in page
    assert (tmp_path / "compare" / "models" / "same" / "attribution_agreement.png").is_file()


def test_a_class_count_mismatch_names_both_numbers(byom, byom_test_split):
    split, manifest = byom_test_split
    with pytest.raises(UserError) as caught:
        compalign.audit_models(
            f"torchvision:resnet18@{byom['five.pt']}",
            {"same": f"torchvision:resnet18@{byom['five.pt']}"},
            split,
            class_names=manifest["class_names"],
            transform=INPUT_32,
            attribution_samples=0,
            costs=False,
        )
    message = str(caught.value)
    assert "outputs 5 classes" in message and "data has 3" in message and "\n" not in message


def test_class_names_pick_the_model_outputs_of_the_data_classes(byom, byom_test_split):
    """A 5-class model audited on 3 folders: data.class_names maps each folder to an output."""
    split, manifest = byom_test_split
    spec = f"torchvision:resnet18@{byom['five.pt']}"
    result = compalign.audit_models(
        spec,
        {"same": spec},
        split,
        class_names=manifest["class_names"],
        class_map={"cat": 4, "dog": 0, "fox": 2},
        transform=INPUT_32,
        attribution_samples=0,
        costs=False,
        bootstrap_samples=100,
    )
    assert result.metrics["same"]["mismatches"] == 0
    assert set(result.predictions["reference_prediction"]) <= {0, 1, 2}


def test_modules_callables_and_a_data_loader(byom, tmp_path, monkeypatch):
    """The Python API without files: an nn.Module reference, a plain function candidate, a
    DataLoader of float images (given to the models as they are); logged to MLflow by the task
    layer (tasks.reports.compare.log_to_mlflow)."""
    model = byom["model"]
    images = torch.randn(12, 3, 32, 32)
    labels = torch.tensor([0, 1, 2] * 4)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels), batch_size=5
    )
    import mlflow

    # MLflow's current tracking URI, as a user sets it (an in-process test before this one may
    # have set another: mlflow.set_tracking_uri outranks the environment variable)
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        from tasks.reports.compare import log_to_mlflow

        result = compalign.audit_models(
            model,
            {"function": lambda batch: model(batch), "negated": lambda batch: -model(batch)},
            loader,
            costs=False,
            **FAST,
        )
        log_to_mlflow(result, "api-test")
    finally:
        mlflow.set_tracking_uri(previous)
    assert result.metrics["function"]["mismatches"] == 0
    assert result.class_names == ["0", "1", "2"]
    assert any("not raw pixels" in note for note in result.notes)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("api-test")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_name for run in runs) == [
        "audit-models",
        "function",
        "negated",
        "reference",
    ]


def test_importing_compalign_stays_cheap():
    import subprocess
    import sys

    code = "import compalign, sys; print(sorted(m for m in ('torch', 'prefect', 'mlflow') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
