"""tasks/audit.py: how the stage stores what the core audit made."""

from __future__ import annotations

import math

from tasks.audit import METRICS_FILE, _json_safe, read_metrics


def test_metrics_round_trip_through_json_with_infinities(tmp_path):
    metrics = {"reduction_factor": math.inf, "ece": 0.1, "recall.9": math.nan}
    (tmp_path / METRICS_FILE).write_text(__import__("json").dumps(_json_safe(metrics)))
    back = read_metrics(tmp_path)
    assert back["reduction_factor"] == math.inf and back["ece"] == 0.1
    assert math.isnan(back["recall.9"])
