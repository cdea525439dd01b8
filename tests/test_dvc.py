"""DVC runs the same stages from a fresh copy of the project: repro, metrics, status, push."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml
from mlflow.tracking import MlflowClient

from compalign.config import load_params
from conftest import BIN, TINY, copy_project

pytestmark = pytest.mark.slow


def dvc(*args, cwd):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    for name in ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    result = subprocess.run(
        [str(BIN / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def test_repro_metrics_status_and_push(tmp_path):
    project = copy_project(tmp_path / "clone")
    # DVC needs every key a stage names present in params.yaml: write the full validated params
    (project / "params.yaml").write_text(yaml.safe_dump(load_params(TINY).model_dump()))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)

    log = dvc("repro", cwd=project)
    for stage in ("prepare", "reference", "compress", "align", "audit"):
        assert f"Running stage '{stage}'" in log
    assert (project / "data/prepared/dataset.parquet").is_file()
    assert (project / "models/reference/model.pt").is_file()
    assert sorted(p.name for p in (project / "models/aligned").iterdir()) == [
        f"magnitude_global-{s}-{loss}"
        for s in ("0.9", "0.97")
        for loss in ("ce", "kd", "label_preserving", "pw")
    ]
    metrics_dir = project / "reports/audit/metrics"
    assert len(list(metrics_dir.glob("*.json"))) == 1 + 10
    kd = json.loads((metrics_dir / "magnitude_global-0.97-kd.json").read_text())
    assert {"accuracy", "mismatches", "mismatches_ref_correct", "recall.0"} <= set(kd)
    assert {"macs", "size_bytes", "latency_ms_b1", "latency_ms_b64"} <= set(kd)  # costs too

    shown = dvc("metrics", "show", cwd=project)
    assert "reports/audit/metrics/reference.json" in shown and "mismatches" in shown
    assert "up to date" in dvc("status", cwd=project).lower()

    # an align change puts align out of date; repro then reruns align and what reads its outs
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["align"]["epochs"] = 3
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    status = dvc("status", "--json", cwd=project)
    assert set(json.loads(status[status.index("{") :])) == {"align"}
    log = dvc("repro", cwd=project)
    assert "Running stage 'align'" in log and "Running stage 'audit'" in log
    assert "Running stage 'reference'" not in log and "Running stage 'compress'" not in log

    dvc("push", cwd=project)
    assert any((project / "dvc-storage").rglob("*"))

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.role = 'pipeline'")
    assert {run.data.tags["orchestrator"] for run in parents} == {"dvc"}
    assert all(run.info.status == "FINISHED" for run in parents)
