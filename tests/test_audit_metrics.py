"""The audit assembled from the metrics registry (compalign.audit, compalign.audit.metrics)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from compalign.audit import AuditInputs, ReferenceAudit, audit, predictions_frame, summary_row
from compalign.audit.base import AuditSettings, Column, Metric
from compalign.audit.metrics import METRICS
from compalign.audit.metrics.calibration import CalibrationOptions
from compalign.audit.metrics.groups import GroupOptions
from compalign.config import AuditParams

CLASSES = ["0", "1", "2"]


def frame(predictions: list[int], labels: list[int]) -> pd.DataFrame:
    logits = torch.nn.functional.one_hot(torch.tensor(predictions), 3).float() * 4.0
    ids = [f"x{i}" for i in range(len(labels))]
    return predictions_frame(ids, torch.tensor(labels), logits)


def inputs(predictions, labels, reference=None, baseline=None, **options) -> AuditInputs:
    groups = pd.DataFrame({"odd": np.array(labels) % 2})
    settings = AuditParams(attribution_samples=0, bootstrap_samples=200, **options)
    return AuditInputs(frame(predictions, labels), CLASSES, groups, settings, reference, baseline)


LABELS = [0, 0, 1, 1, 2, 2, 0, 1, 2, 0]


def test_reference_then_compressed_audit():
    reference = audit(inputs(LABELS, LABELS))
    assert reference.metrics["accuracy"] == 1.0 and reference.metrics["ece"] >= 0
    assert "mismatches" not in reference.metrics
    flipped = [1, 0, 1, 1, 2, 2, 0, 1, 2, 1]  # two examples of class 0 now say 1
    compared = audit(inputs(flipped, LABELS, ReferenceAudit(reference.table, reference.metrics)))
    metrics = compared.metrics
    assert metrics["mismatches"] == 2 and metrics["mismatches_ref_correct"] == 2
    assert metrics["mismatches_ci_low"] <= 2 <= metrics["mismatches_ci_high"]
    assert metrics["accuracy_change"] == pytest.approx(-0.2)
    assert metrics["recall_change.0"] == pytest.approx(-0.5)
    assert metrics["worst_class_recall_change"] == pytest.approx(-0.5)
    assert "group.odd.accuracy_gap_change" in metrics and "ece_change" in metrics
    assert "reduction_factor" not in metrics  # no baseline given
    assert list(compared.table.columns[:3]) == ["example_id", "label", "reference_prediction"]

    with_baseline = audit(
        inputs(LABELS, LABELS, ReferenceAudit(reference.table, reference.metrics), compared.table)
    )
    assert with_baseline.metrics["reduction_factor"] == float("inf")  # baseline 2, this one 0


@pytest.mark.parametrize("name", list(METRICS))
def test_every_metric_describes_itself(name):
    """Its own module with a docstring; its options are keys of the audit section; its summary
    columns exist for a model without metrics, and its table columns can show them."""
    entry = METRICS[name]
    module = __import__(entry.compute.__module__, fromlist=["ENTRY"])
    assert module.ENTRY is entry and module.__doc__
    assert set(entry.options.model_fields) <= set(AuditParams.model_fields)
    row = pd.Series({**entry.summary({}, {"loss": "kd"})})
    for column in entry.columns:
        assert isinstance(column.show(row), str)


def test_a_new_metric_is_one_entry(monkeypatch):
    """Registering an entry is all it takes for the audit and the summary to carry it."""

    def disagreement_rate(inputs, options):
        if not inputs.compared:
            return {}
        return {"disagreement_rate": float(inputs.table["mismatch"].mean())}

    entry = Metric(
        disagreement_rate,
        summary=lambda metrics, labels: {"disagreement_rate": metrics.get("disagreement_rate")},
        columns=(Column("disagree", lambda row: f"{row.disagreement_rate:.2f}"),),
    )
    monkeypatch.setitem(METRICS, "disagreement_rate", entry)
    reference = audit(inputs(LABELS, LABELS))
    flipped = [1, *LABELS[1:]]
    compared = audit(inputs(flipped, LABELS, ReferenceAudit(reference.table, reference.metrics)))
    assert compared.metrics["disagreement_rate"] == pytest.approx(0.1)
    assert summary_row(compared.metrics, {"loss": "kd"})["disagreement_rate"] == pytest.approx(0.1)


def test_each_metric_gets_only_its_own_options(monkeypatch):
    """A metric's options are a view of the `audit` section holding only the keys its entry
    declares; the settings every metric shares come apart (`inputs.settings`)."""
    seen = {}
    for name, entry in list(METRICS.items()):

        def spy(inputs, options, name=name, compute=entry.compute):
            seen[name] = (options, inputs.settings)
            return compute(inputs, options)

        monkeypatch.setitem(METRICS, name, dataclasses.replace(entry, compute=spy))
    audit(inputs(LABELS, LABELS, calibration_bins=7, groups=["odd"], confidence_level=0.9))
    assert seen.keys() == METRICS.keys()
    assert seen["calibration"][0] == CalibrationOptions(calibration_bins=7)
    assert seen["groups"][0] == seen["auroc"][0] == GroupOptions(groups=["odd"])
    assert not hasattr(seen["attribution"][0], "calibration_bins")
    for name, (options, settings) in seen.items():
        assert type(options) is METRICS[name].options
        assert settings == AuditSettings(bootstrap_samples=200, confidence_level=0.9)


def test_headline_columns_are_summary_columns():
    for entry in METRICS.values():
        assert set(entry.headline) <= set(entry.summary({}, {"loss": "kd"}))
