"""compalign/report/plot_data.py: the tables `dvc plots` reads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from compalign.report.plot_data import accuracy_interval, write_plot_data


def test_accuracy_interval_is_wilsons_and_contains_the_accuracy():
    low, high = accuracy_interval(157, 200, 0.95)
    expected = binomtest(157, 200).proportion_ci(0.95, method="wilson")
    assert (low, high) == pytest.approx((expected.low, expected.high))
    assert low < 157 / 200 < high


def test_levels_and_confusion_tables(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 50)
    reference = np.where(rng.random(50) < 0.9, labels, (labels + 1) % 3)
    compressed = np.where(rng.random(50) < 0.8, reference, (reference + 1) % 3)
    table = pd.DataFrame(
        {"label": labels, "reference_prediction": reference, "compressed_prediction": compressed}
    )
    summary = pd.DataFrame(
        {
            "name": ["reference", "m-0.5-kd", "quantize_dynamic-none"],
            "role": ["reference", "compressed", "compressed"],
            "compressor": ["none", "m", "quantize_dynamic"],
            "sparsity": [0.0, 0.5, 0.0],
            "level_kind": ["none", "weight_sparsity", "none"],
            "loss": ["none", "kd", "none"],
            "mismatches": [np.nan, float((reference != compressed).sum()), 1.0],
            "mismatches_ci_low": [np.nan, 1.0, 0.0],
            "mismatches_ci_high": [np.nan, 20.0, 3.0],
        }
    )
    predictions = {
        "reference": table[["label"]].assign(prediction=reference),
        "m-0.5-kd": table,
        "quantize_dynamic-none": table,
    }
    written = write_plot_data(summary, predictions, ["a", "b", "c"], 0.95, tmp_path)
    levels = pd.read_csv(tmp_path / "levels.csv")
    # models without a level (the reference, quantizers) have no point on a level axis
    assert list(levels["name"]) == ["m-0.5-kd"]
    assert levels["accuracy"].iloc[0] == pytest.approx((compressed == labels).mean())
    assert levels["level"].iloc[0] == 0.5 and levels["loss"].iloc[0] == "kd"
    assert np.isnan(levels["mismatches_ref_correct"].iloc[0])  # not in this summary
    pairs = pd.read_csv(tmp_path / "confusion" / "m-0.5-kd.csv")
    assert len(pairs) == 50
    assert (pairs["reference"] != pairs["compressed"]).sum() == (reference != compressed).sum()
    assert set(pairs["reference"]) <= {"a", "b", "c"}
    assert sorted(path.name for path in written) == [
        "levels.csv",
        "m-0.5-kd.csv",
        "quantize_dynamic-none.csv",
    ]
