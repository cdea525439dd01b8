"""Audit metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from compalign.audit import (
    AuditResult,
    bootstrap_indices,
    class_fairness,
    count_interval,
    expected_calibration_error,
    mismatch_metrics,
    percentile_interval,
    predictions_frame,
    reduction_factor,
    reduction_factor_interval,
)
from compalign.fairness import group_changes, group_metrics


def frame(labels, predictions, ids=None):
    ids = ids or [str(i) for i in range(len(labels))]
    return pd.DataFrame(
        {"example_id": ids, "label": labels, "prediction": predictions, "confidence": 0.9}
    )


def test_mismatch_counts():
    reference = frame([0, 1, 2, 2], [0, 1, 1, 2])  # reference right on 0, 1, 3
    compressed = frame([0, 1, 2, 2], [1, 1, 2, 0])  # differs from it on 0, 2, 3
    metrics = mismatch_metrics(reference, compressed)
    assert metrics["mismatches"] == 3
    assert metrics["mismatches_ref_correct"] == 2
    assert metrics["agreement"] == pytest.approx(0.25)


def test_predictions_frame_binary_has_positive_probability():
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3)]])
    result = predictions_frame(["a", "b"], torch.tensor([0, 1]), logits)
    assert result.positive_probability.tolist() == pytest.approx([0.5, 0.75])
    assert result.confidence.tolist() == pytest.approx([0.5, 0.75])


def test_expected_calibration_error_by_hand():
    """Two bins of 0.5: (0, 0.5] holds conf 0.3 (wrong) -> |0 - 0.3| = 0.3, weight 1/4;
    (0.5, 1] holds 0.8, 0.9, 1.0 with 2 right -> |2/3 - 0.9| = 0.2333, weight 3/4."""
    confidence = np.array([0.3, 0.8, 0.9, 1.0])
    correct = np.array([0, 1, 1, 0])
    expected = 0.25 * 0.3 + 0.75 * abs(2 / 3 - 0.9)
    assert expected_calibration_error(confidence, correct, bins=2) == pytest.approx(expected)
    assert expected_calibration_error(
        np.full(10, 0.7), np.r_[np.ones(7), np.zeros(3)], 15
    ) == pytest.approx(0)


def test_bootstrap_is_paired_deterministic_and_covers_the_count():
    indicator = np.r_[np.ones(30, dtype=bool), np.zeros(270, dtype=bool)]
    resamples = bootstrap_indices(len(indicator), 2000, seed=7)
    assert np.array_equal(resamples, bootstrap_indices(len(indicator), 2000, seed=7))
    low, high = count_interval(indicator, resamples)
    assert low < 30 < high
    # binomial sd of a resampled count: sqrt(300 * 0.1 * 0.9) ~ 5.2; a 95% interval spans ~ 2 x 1.96 sd
    assert high - low == pytest.approx(2 * 1.96 * math.sqrt(27), rel=0.2)


def test_reduction_factor_and_its_interval():
    baseline = np.r_[np.ones(40, dtype=bool), np.zeros(160, dtype=bool)]
    better = np.r_[np.ones(10, dtype=bool), np.zeros(190, dtype=bool)]
    assert reduction_factor(baseline, better) == 4.0
    assert reduction_factor(baseline, np.zeros(200, dtype=bool)) == math.inf
    assert math.isnan(reduction_factor(np.zeros(3, bool), np.zeros(3, bool)))
    low, high = reduction_factor_interval(baseline, better, bootstrap_indices(200, 1000, 0))
    assert 1.0 < low < 4.0 < high
    assert reduction_factor_interval(baseline, baseline, bootstrap_indices(200, 100, 0)) == (
        1.0,
        1.0,
    )


def test_percentile_interval_with_infinities():
    """Resamples with zero mismatches for the better model give inf ratios; the upper bound
    is then inf, not NaN."""
    values = np.r_[np.ones(90), np.full(10, np.inf)]
    assert percentile_interval(values) == (1.0, math.inf)


def test_class_fairness_by_hand():
    """Class 0: recall 1 -> 0.5; class 1: 0.5 -> 1. Worst change -0.5 (class 0)."""
    reference = frame([0, 0, 1, 1], [0, 0, 1, 0])
    compressed = frame([0, 0, 1, 1], [0, 1, 1, 1])
    metrics = class_fairness(reference, compressed, ["a", "b"])
    assert metrics["recall_change.a"] == -0.5 and metrics["recall_change.b"] == 0.5
    assert metrics["worst_class_recall_change"] == -0.5 and metrics["worst_class_index"] == 0
    assert metrics["recall_gap_reference"] == 0.5 and metrics["recall_gap"] == 0.5
    assert metrics["recall_gap_change"] == 0.0


def test_group_metrics_match_a_hand_group_by():
    """fairlearn's MetricFrame gives per-group accuracy and the max-min gap; AUROC per group for
    a two-class task."""
    predictions = frame([0, 1, 1, 0, 1, 0], [0, 1, 0, 0, 0, 1])
    predictions["positive_probability"] = [0.2, 0.9, 0.4, 0.1, 0.3, 0.6]
    groups = pd.DataFrame({"Male": [0, 0, 0, 1, 1, 1]})
    metrics = group_metrics(predictions, groups)
    assert metrics["group.Male.0.accuracy"] == pytest.approx(2 / 3)
    assert metrics["group.Male.1.accuracy"] == pytest.approx(1 / 3)
    assert metrics["group.Male.accuracy_gap"] == pytest.approx(1 / 3)
    # Male=0: positives 0.9, 0.4 vs negative 0.2 -> AUROC 1; Male=1: positive 0.3 vs 0.1, 0.6 -> 0.5
    assert metrics["group.Male.0.auroc"] == 1.0 and metrics["group.Male.1.auroc"] == 0.5
    assert metrics["group.Male.auroc_gap"] == 0.5
    changes = group_changes({"group.Male.accuracy_gap": 0.1}, metrics)
    assert changes["group.Male.accuracy_gap_change"] == pytest.approx(1 / 3 - 0.1)


def test_auroc_is_nan_for_a_one_class_group():
    predictions = frame([1, 1, 0, 1], [1, 1, 0, 1])
    predictions["positive_probability"] = [0.9, 0.8, 0.2, 0.7]
    metrics = group_metrics(predictions, pd.DataFrame({"g": [0, 0, 1, 1]}))
    assert math.isnan(metrics["group.g.0.auroc"])
    assert metrics["group.g.1.auroc"] == 1.0


def test_metric_outputs_are_written_by_kind(tmp_path):
    """Tables and arrays are written by the core; a figure's data is drawn by the presentation
    layer (compalign.report.figures.draw_figures), which the core never imports."""
    from compalign.audit.metrics.attribution import AgreementFigure
    from compalign.report.figures import draw_figures

    maps = np.random.default_rng(0).random((2, 4, 4))
    outputs = {
        "table.parquet": pd.DataFrame({"a": [1, 2]}),
        "maps.npz": {"indices": np.arange(3)},
        "figure.png": AgreementFigure(
            np.zeros((2, 1, 4, 4), dtype=np.uint8), {"saliency": (maps, maps)}, ["a", "b"], 2
        ),
    }
    AuditResult({}, pd.DataFrame(), outputs).write_outputs(tmp_path)
    assert pd.read_parquet(tmp_path / "table.parquet")["a"].tolist() == [1, 2]
    assert np.load(tmp_path / "maps.npz")["indices"].tolist() == [0, 1, 2]
    assert not (tmp_path / "figure.png").exists()
    written = draw_figures(outputs, tmp_path)
    assert written == [tmp_path / "figure.png"] and (tmp_path / "figure.png").read_bytes()
