"""`compalign audit` as a user runs it: models of another architecture in the formats users
bring, a release rule that fails, and mistakes that are one line with exit code 2."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import run_cli

FAST_AUDIT = {
    "bootstrap_samples": 100,
    "attribution_samples": 0,
    "latency_warmup": 0,
    "latency_repeats": 1,
    "latency_batch_sizes": [1],
}


def _project(tmp_path, byom):
    params = {
        "data": {
            "source": "imagefolder",
            "root": str(byom["images"]),
            "transform": {"resize": 32, "centre_crop": 32},
        },
        "audit": FAST_AUDIT,
        "run": {"experiment": "byom", "device": "cpu"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


@pytest.mark.slow
def test_audit_writes_the_comparison_and_a_failed_rule_exits_1(tmp_path, byom):
    project = _project(tmp_path, byom)
    result = run_cli(
        "audit",
        "--reference",
        f"torchvision:resnet18@{byom['state.pt']}",
        "--compressed",
        f"same={byom['model.ts']}",
        "--compressed",
        f"swapped={byom['swapped.ts']}",
        "--compressed",
        f"onnx={byom['model.onnx']}",
        "--reference2",
        str(byom["model.pt2"]),
        "--fail-on",
        "mismatches<=0",
        "--fail-on",
        "accuracy_change>=-1",
        "--reference-at-chance",  # random weights: a degenerate comparison, accepted here
        cwd=project,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert (project / "reports/compare/predictions.parquet").is_file(), (
        result.stdout + result.stderr
    )
    predictions = pd.read_parquet(project / "reports/compare/predictions.parquet")
    flipped = int(predictions["reference_prediction"].isin([0, 1]).sum())
    failed = [line for line in result.stderr.splitlines() if line.startswith("FAILED")]
    assert failed == [f"FAILED swapped: mismatches = {flipped}, bound <= 0"]
    assert (predictions["same_prediction"] == predictions["reference_prediction"]).all()
    assert (predictions["onnx_prediction"] == predictions["reference_prediction"]).all()
    assert {"example_id", "label", "swapped_confidence", "reference2_prediction"} <= set(
        predictions.columns
    )
    summary = pd.read_parquet(project / "reports/compare/summary.parquet").set_index("name")
    assert list(summary.index) == ["reference", "reference2", "same", "swapped", "onnx"]
    assert summary.loc["swapped", "noise_floor_mismatches"] == 0
    assert (project / "reports/compare/report.html").is_file()

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("byom")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if run.data.tags.get("role") == "audit"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {run.info.run_name for run in runs if run not in parents}
    assert children == {"reference", "reference2", "same", "swapped", "onnx"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        (["--compressed", "int8={pickled.pt}"], "pickled Python object"),
        (
            ["--compressed", "five=torchvision:resnet18@{five.pt}"],
            "outputs 5 classes but the data has 3",
        ),
    ],
)
def test_audit_mistakes_are_one_line_and_exit_2(tmp_path, byom, arguments, needle):
    project = _project(tmp_path, byom)
    filled = []
    for argument in arguments:
        for key, value in byom.items():
            argument = argument.replace("{" + key + "}", str(value))
        filled.append(argument)
    before = sorted(path.name for path in project.iterdir())
    result = run_cli(
        "audit", "--reference", f"torchvision:resnet18@{byom['state.pt']}", *filled, cwd=project
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert sorted(path.name for path in project.iterdir()) == before  # refused before writing
