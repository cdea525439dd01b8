"""flows/artifacts.py: the Prefect artifact keys and tables the flows publish (the artifacts
themselves are checked against a real server in tests/test_mlflow_ui.py)."""

from __future__ import annotations

import math

import pandas as pd

from flows.artifacts import artifact_key, mlflow_ui_base, table_records


def test_artifact_keys_are_lowercase_letters_digits_and_dashes():
    assert artifact_key("pipeline", "CIFAR10", "small_cnn") == "pipeline-cifar10-small-cnn"
    assert artifact_key("populations", None, "resnet20", "", "quantize_static") == (
        "populations-resnet20-quantize-static"
    )
    assert artifact_key("audit", "--My Model (v2)--") == "audit-my-model-v2"


def test_table_records_are_plain_json_cells():
    frame = pd.DataFrame({"loss": ["ce", "kd", "lp"], "reduction": [1.234567, math.nan, math.inf]})
    records = table_records(frame)
    assert [record["loss"] for record in records] == ["ce", "kd", "lp"]
    # rounded for reading; NaN and inf as text (JSON has neither)
    assert [record["reduction"] for record in records] == [1.2346, "–", "∞"]


def test_the_mlflow_link_points_at_a_tracking_server_or_make_ui(monkeypatch):
    monkeypatch.delenv("COMPALIGN_MLFLOW_UI", raising=False)
    assert mlflow_ui_base({"uri": "http://127.0.0.1:5001"}) == "http://127.0.0.1:5001"
    local = mlflow_ui_base({"uri": "sqlite:///mlflow.db"})
    assert local.startswith("http://127.0.0.1")
    monkeypatch.setenv("COMPALIGN_MLFLOW_UI", "http://example.test:8080")
    assert mlflow_ui_base({"uri": "sqlite:///mlflow.db"}) == "http://example.test:8080"
