"""tasks/audit.py: how the stage stores what the core audit made."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tasks.audit import METRICS_FILE, _json_safe, _write_outputs, read_metrics


def test_metrics_round_trip_through_json_with_infinities(tmp_path):
    metrics = {"reduction_factor": math.inf, "ece": 0.1, "recall.9": math.nan}
    (tmp_path / METRICS_FILE).write_text(__import__("json").dumps(_json_safe(metrics)))
    back = read_metrics(tmp_path)
    assert back["reduction_factor"] == math.inf and back["ece"] == 0.1
    assert math.isnan(back["recall.9"])


def test_metric_outputs_are_written_by_kind(tmp_path):
    written = []
    outputs = {
        "table.parquet": pd.DataFrame({"a": [1, 2]}),
        "maps.npz": {"indices": np.arange(3)},
        "figure.png": lambda path: written.append(path) or path.write_bytes(b"png"),
    }
    _write_outputs(tmp_path, outputs)
    assert pd.read_parquet(tmp_path / "table.parquet")["a"].tolist() == [1, 2]
    assert np.load(tmp_path / "maps.npz")["indices"].tolist() == [0, 1, 2]
    assert written == [tmp_path / "figure.png"] and (tmp_path / "figure.png").read_bytes()
