"""DVC runs the same stages from a fresh copy of the project: repro, metrics, plots, status,
push."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from compalign.config import load_params
from conftest import BIN, TINY, cli_env, copy_project

pytestmark = pytest.mark.slow
# tests/tiny.yaml with fewer models: DVC's wiring is the same for 1 level x 3 losses as for the
# profile's 2 x 5, at a third of the audits
LEVELS = ("0.9",)
LOSSES = ("none", "ce", "kd")
GRID = [f"compress.sparsities=[{','.join(LEVELS)}]", f"align.losses=[{','.join(LOSSES)}]"]


def dvc(*args, cwd):
    env = cli_env()
    result = subprocess.run(
        [str(BIN / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def show_plots(project, *args):
    """`dvc plots <args> --json`: the rendered plots by id."""
    out = dvc("plots", *args, "--json", cwd=project)
    return json.loads(out[out.index("{") :])["data"]


def test_repro_metrics_plots_status_and_push(tmp_path):
    project = copy_project(tmp_path / "clone")
    # DVC needs every key a stage names present in params.yaml: write the full validated params
    (project / "params.yaml").write_text(yaml.safe_dump(load_params(TINY, GRID).model_dump()))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)

    log = dvc("repro", cwd=project)
    for stage in ("prepare", "reference", "compress", "align", "audit", "predictions"):
        assert f"Running stage '{stage}'" in log
    assert (project / "data/prepared/dataset.parquet").is_file()
    assert (project / "models/reference/model.pt").is_file()
    assert sorted(p.name for p in (project / "models/aligned").iterdir()) == [
        f"magnitude_global-{s}-{loss}" for s in LEVELS for loss in LOSSES[1:]
    ]
    metrics_dir = project / "reports/audit/metrics"
    assert len(list(metrics_dir.glob("*.json"))) == 1 + len(LEVELS) * len(LOSSES)
    kd_metrics = json.loads((metrics_dir / f"magnitude_global-{LEVELS[-1]}-kd.json").read_text())
    assert {"accuracy", "mismatches", "mismatches_ref_correct", "recall.0"} <= set(kd_metrics)
    assert {"macs", "size_bytes", "latency_ms_b1", "latency_ms_b64"} <= set(kd_metrics)  # costs
    # the predictions stage: every audited model's per-example predictions, one table
    table = pd.read_parquet(project / "reports/audit/predictions/predictions.parquet")
    assert table.groupby("model").size().to_dict() == {
        name.stem: 200 for name in metrics_dir.glob("*.json")
    }
    kd_rows = table[table["model"] == f"magnitude_global-{LEVELS[-1]}-kd"]
    assert kd_rows["mismatch"].sum() == kd_metrics["mismatches"]

    shown = dvc("metrics", "show", cwd=project)
    assert "reports/audit/metrics/reference.json" in shown and "mismatches" in shown
    assert "up to date" in dvc("status", cwd=project).lower()

    # `dvc plots show` renders dvc.yaml's plots from the audit stage's tables
    plots = show_plots(project, "show")
    compressed = [f"magnitude_global-{s}-{loss}" for s in LEVELS for loss in LOSSES]
    for name in ("accuracy", "mismatches", "mismatches_ref_correct"):
        [plot] = plots[name]
        assert plot["type"] == "vega" and plot["revisions"] == ["workspace"]
        points = plot["content"]["data"]["values"]
        assert sorted(p["name"] for p in points) == sorted(compressed)
        for point in points:  # every value inside its interval
            low, value, high = (float(point[name + end]) for end in ("_ci_low", "", "_ci_high"))
            assert low <= value <= high, point
        kd = next(p for p in points if p["name"] == f"magnitude_global-{LEVELS[-1]}-kd")
        assert float(kd[name]) == pytest.approx(kd_metrics[name])
    confusion = {
        key.rsplit("/", 1)[1]: value for key, value in plots.items() if "/confusion/" in key
    }
    assert sorted(confusion) == sorted(f"{name}.csv" for name in compressed)
    pairs = confusion[f"magnitude_global-{LEVELS[-1]}-kd.csv"][0]["content"]["data"]["values"]
    assert len(pairs) == 200  # one per test example
    assert sum(p["reference"] != p["compressed"] for p in pairs) == kd_metrics["mismatches"]
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "1"],
        cwd=project,
        check=True,
    )

    # an align change puts align out of date; repro then reruns align and what reads its outs
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["align"]["epochs"] = 3
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    status = dvc("status", "--json", cwd=project)
    assert set(json.loads(status[status.index("{") :])) == {"align"}
    log = dvc("repro", cwd=project)
    assert "Running stage 'align'" in log and "Running stage 'audit'" in log
    assert "Running stage 'predictions'" in log
    assert "Running stage 'reference'" not in log and "Running stage 'compress'" not in log
    # `dvc plots diff` draws the committed run and the workspace's together
    [plot] = show_plots(project, "diff", "HEAD")["mismatches"]
    assert set(plot["revisions"]) == {"HEAD", "workspace"}
    assert {p["rev"] for p in plot["content"]["data"]["values"]} == {"HEAD", "workspace"}

    dvc("push", cwd=project)
    assert any((project / "dvc-storage").rglob("*"))

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.role = 'pipeline'")
    assert {run.data.tags["orchestrator"] for run in parents} == {"dvc"}
    assert all(run.info.status == "FINISHED" for run in parents)
