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
    assert {run.data.params["spec"] for run in runs if run not in parents} >= {
        str(byom["model.onnx"])
    }  # MLflow's Compare lists each model's spec
    check_gate_everywhere(result, project, parents[0], flipped)
    check_progress_and_pointers(result, project, parents[0])


def check_gate_everywhere(result, project, parent, flipped):
    """Every rule on every candidate, passing ones too: on the terminal, in gate.json and
    report.html's cards, on the MLflow parent run (metrics, tags, description) and in the
    Prefect artifacts of the flow run (the project's own Prefect database)."""
    import json
    import re
    import sqlite3

    rows = {
        (candidate, metric): verdict
        for candidate, metric, verdict in re.findall(
            r"│ (\w+)\s+│ (\w+)\s+│\s+\S+\s+│\s+[<>=]+ \S+\s+│ (passed|FAILED)", result.stdout
        )
    }
    assert rows == {
        (name, metric): "FAILED" if (name, metric) == ("swapped", "mismatches") else "passed"
        for name in ("same", "swapped", "onnx")
        for metric in ("mismatches", "accuracy_change")
    }, result.stdout
    assert "Gate: passed: same, onnx; failed: swapped." in result.stdout
    gate = json.loads((project / "reports/compare/gate.json").read_text())
    assert [(v["candidate"], v["passed"]) for v in gate] == [
        ("same", True),
        ("same", True),
        ("swapped", False),
        ("swapped", True),
        ("onnx", True),
        ("onnx", True),
    ]
    page = (project / "reports/compare/report.html").read_text()
    assert page.count('<div class="card pass">') == 2 and page.count('<div class="card fail">') == 1
    assert f"<td>{flipped} &lt;= 0</td>" in page and "<h2>Release gate</h2>" in page
    assert "images: what the candidates changed" in page  # the folder's name, not imagefolder

    tags, metrics = parent.data.tags, parent.data.metrics
    assert parent.info.run_name == "audit-images-same-swapped-onnx"
    assert tags["gate"] == "failed" and tags["gate.same"] == tags["gate.onnx"] == "passed"
    assert tags["gate.swapped"] == f"failed: mismatches = {flipped}, bound <= 0"
    assert tags["gate.rules"] == "mismatches<=0; accuracy_change>=-1"
    assert metrics["gate/passed"] == 0 and metrics["gate/same/passed"] == 1
    assert metrics["gate/swapped/passed"] == 0 and metrics["gate/swapped/mismatches"] == flipped
    assert metrics["swapped/mismatches"] == flipped and "same/accuracy" in metrics
    description = tags["mlflow.note.content"]
    assert "**Release gate: failed**" in description and "per loss" not in description

    with sqlite3.connect(project / ".compalign/prefect/prefect.db") as db:
        artifacts = dict(db.execute("SELECT key, data FROM artifact").fetchall())
    key = "audit-images"
    assert {
        f"{key}-{part}" for part in ("summary", "headline", "gate", "mlflow", "progress")
    } <= set(artifacts)
    verdicts = json.loads(json.loads(artifacts[f"{key}-gate"]))
    assert [(v["candidate"], v["metric"], v["result"]) for v in verdicts][2] == (
        "swapped",
        "mismatches",
        "FAILED",
    )
    summary = json.loads(json.loads(artifacts[f"{key}-summary"]))
    assert {row["name"]: row["gate"] for row in summary} == {
        "reference": "–",
        "reference2": "–",
        "same": "passed",
        "swapped": "failed",
        "onnx": "passed",
    }
    headline = json.loads(artifacts[f"{key}-headline"])
    assert "Release gate" in headline and "`swapped`" in headline and "per loss" not in headline
    assert float(artifacts[f"{key}-progress"]) == 100.0  # every step done


def check_progress_and_pointers(result, project, parent):
    """Piped, the audit prints a line per step (each model's predictions, every metric, its
    costs); the commands it prints to open the results run in any folder: absolute stores."""
    import re
    import sqlite3

    from compalign.compare import comparison_steps

    steps = [line for line in result.stderr.splitlines() if re.match(r"audit \d+/\d+: ", line)]
    total = comparison_steps(5)
    assert len(steps) == total and steps[-1].startswith(f"audit {total}/{total}: onnx: costs")
    uri = re.search(r"--backend-store-uri (\S+)`", result.stdout).group(1)
    assert uri == f"sqlite:///{project.resolve() / 'mlflow.db'}"
    assert MlflowClient(uri).get_run(parent.info.run_id).info.status == "FINISHED"
    home, flow_run = re.search(
        r"`PREFECT_HOME=(\S+) \S*prefect server start`, then open "
        r"http://127\.0\.0\.1:4200/runs/flow-run/(\S+)",
        result.stdout,
    ).groups()
    assert home == str(project.resolve() / ".compalign" / "prefect")
    with sqlite3.connect(f"{home}/prefect.db") as db:
        names = db.execute("SELECT name FROM flow_run WHERE id = ?", (flow_run,)).fetchall()
        logged = db.execute("SELECT message FROM log WHERE message LIKE 'audit %/%: %'").fetchall()
    assert names == [("audit-images-same-swapped-onnx",)]
    assert len(logged) == total  # each step is a line of the audit task's Prefect log
    assert "make ui" not in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        (["--compressed", "int8={pickled.pt}"], "pickled Python object"),
        (
            ["--compressed", "five=torchvision:resnet18@{five.pt}"],
            "outputs 5 classes but the data has 3",
        ),
        (
            ["--compressed", "onnx={model.onnx}", "--localize"],
            "cannot be localized: an ONNX graph is not a PyTorch module",
        ),
    ],
)
def test_audit_mistakes_are_one_line_and_exit_2(tmp_path, byom, cli_here, arguments, needle):
    project = _project(tmp_path, byom)
    filled = []
    for argument in arguments:
        for key, value in byom.items():
            argument = argument.replace("{" + key + "}", str(value))
        filled.append(argument)
    before = sorted(path.name for path in project.iterdir())
    result = cli_here(
        "audit", "--reference", f"torchvision:resnet18@{byom['state.pt']}", *filled, cwd=project
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert sorted(path.name for path in project.iterdir()) == before  # refused before writing


@pytest.mark.slow
def test_audit_localize_ranks_the_one_changed_layer_first(tmp_path, byom):
    """A candidate whose classifier has two classes' rows swapped, every other layer the
    reference's: --localize puts `fc` first, and restoring it recovers every mismatch."""
    import torch

    project = _project(tmp_path, byom)
    state = torch.load(byom["state.pt"], weights_only=True)
    for key in ("fc.weight", "fc.bias"):
        state[key] = state[key][[1, 0, 2]]
    torch.save(state, project / "swapped_fc.pt")
    result = run_cli(
        "audit",
        "--reference",
        f"torchvision:resnet18@{byom['state.pt']}",
        "--compressed",
        f"swapped=torchvision:resnet18@{project / 'swapped_fc.pt'}",
        "--localize",
        "--reference-at-chance",  # the test model's random weights
        cwd=project,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    layers = pd.read_parquet(project / "reports/compare/layers.parquet")
    first = layers.iloc[0]
    assert (first["candidate"], first["layer"]) == ("swapped", "fc")
    assert first["recovered"] == first["mismatches"] > 0 and first["mismatches_after"] == 0
    assert (layers["recovered"].iloc[1:] == 0).all()
    summary = pd.read_parquet(project / "reports/compare/summary.parquet").set_index("name")
    assert first["mismatches"] == summary.loc["swapped", "mismatches"]
    assert "swapped: layers that flip labels" in result.stdout
    assert "Layers that flip labels" in (project / "reports/compare/report.html").read_text()
