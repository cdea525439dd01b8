"""Meyer & Wong's metrics: AUROC overall, per class and per group (compalign.audit.metrics.auroc),
and the group accuracy gap's change with paired bootstrap intervals (compalign.audit.metrics.groups)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from compalign.audit import AuditInputs, ReferenceAudit, audit, predictions_frame
from compalign.audit.metrics.auroc import ENTRY as AUROC
from compalign.audit.metrics.auroc import probabilities
from compalign.config import AuditParams

CLASSES = ["0", "1", "2", "3"]


def make_inputs(logits, labels, reference=None, baseline=None, groups=None) -> AuditInputs:
    labels = torch.as_tensor(labels)
    ids = [f"x{i}" for i in range(len(labels))]
    groups = groups if groups is not None else pd.DataFrame({"rare": (labels.numpy() >= 2) * 1})
    settings = AuditParams(attribution_samples=0, bootstrap_samples=300)
    return AuditInputs(
        predictions_frame(ids, labels, logits),
        CLASSES[: max(logits.shape[1], 2)],
        groups,
        settings,
        reference,
        baseline,
        logits=logits,
    )


def test_auroc_is_sklearns_one_vs_rest_overall_per_class_and_per_group():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    logits = torch.randn(200, 4, generator=generator) + 1.5 * torch.nn.functional.one_hot(labels)
    metrics = AUROC.run(make_inputs(logits, labels))
    scores = probabilities(logits)
    assert metrics["auroc"] == pytest.approx(roc_auc_score(labels, scores, multi_class="ovr"))
    per_class = roc_auc_score(labels, scores, multi_class="ovr", average=None)
    for name, value in zip(CLASSES, per_class, strict=True):
        assert metrics[f"auroc.class.{name}"] == pytest.approx(value)
    # the rare group holds classes 2 and 3 only: each separated from the other by its probability
    rare = labels.numpy() >= 2
    expected = np.mean([roc_auc_score(labels[rare] == k, scores[rare][:, k]) for k in (2, 3)])
    assert metrics["auroc.group.rare.1"] == pytest.approx(expected)
    gap = abs(metrics["auroc.group.rare.1"] - metrics["auroc.group.rare.0"])
    assert metrics["auroc.group.rare.gap"] == pytest.approx(gap)


def test_binary_auroc_is_that_of_the_positive_probability_and_changes_are_measured():
    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(100) % 2
    reference_logits = torch.randn(100, 1, generator=generator) + 2.0 * (labels[:, None] - 0.5)
    groups = pd.DataFrame({"male": (torch.arange(100) % 3 == 0).numpy() * 1})
    reference = audit(make_inputs(reference_logits, labels, groups=groups))
    assert reference.metrics["auroc"] == pytest.approx(
        roc_auc_score(labels, torch.sigmoid(reference_logits[:, 0]))
    )
    assert not any(key.startswith("auroc.class.") for key in reference.metrics)  # binary
    noisier = reference_logits + 2.0 * torch.randn(100, 1, generator=generator)
    compared = AUROC.run(
        make_inputs(
            noisier, labels, ReferenceAudit(reference.table, reference.metrics), groups=groups
        )
    )
    assert compared["auroc_change"] == pytest.approx(compared["auroc"] - reference.metrics["auroc"])
    assert compared["auroc_change"] < 0
    assert "auroc.group.male.gap_change" in compared


def test_group_gap_change_has_a_paired_bootstrap_interval_and_one_against_ce():
    """A model that loses only the rare group's examples: the gap grows, and its interval lies
    above 0; an exact copy of the reference: every resample's change is 0; against a `ce` model
    with the same predictions the difference is 0."""
    labels = torch.arange(400) % 4
    right = torch.nn.functional.one_hot(labels, 4).float() * 5.0
    reference = audit(make_inputs(right, labels))
    assert reference.metrics["group.rare.accuracy_gap"] == 0.0
    wrong = right.clone()
    rare_half = (labels >= 2) & (torch.arange(400) % 8 < 4)
    wrong[rare_half] = torch.nn.functional.one_hot((labels[rare_half] + 1) % 4, 4).float() * 5.0
    saved = ReferenceAudit(reference.table, reference.metrics)
    hurt = audit(make_inputs(wrong, labels, saved)).metrics
    assert hurt["group.rare.accuracy_gap_change"] == pytest.approx(0.5)
    assert 0 < hurt["group.rare.accuracy_gap_change_ci_low"] < 0.5
    assert 0.5 < hurt["group.rare.accuracy_gap_change_ci_high"] < 1

    same = audit(make_inputs(right, labels, saved))
    assert same.metrics["group.rare.accuracy_gap_change_ci_low"] == 0.0
    assert same.metrics["group.rare.accuracy_gap_change_ci_high"] == 0.0

    ce_table = audit(make_inputs(wrong, labels, saved)).table
    against = audit(make_inputs(right, labels, saved, baseline=ce_table)).metrics
    assert against["group.rare.accuracy_gap_change_vs_ce"] == pytest.approx(-0.5)
    assert against["group.rare.accuracy_gap_change_vs_ce_ci_high"] < 0


def test_scores_that_are_not_finite_have_no_auroc():
    """A diverged model (NaN logits) gets NaN AUROCs instead of stopping the audit."""
    from compalign.audit.metrics.auroc import class_aurocs, model_auroc, probabilities

    labels = np.array([0, 1, 2, 0, 1, 2])
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    logits[2, 1] = float("nan")
    scores = probabilities(logits)
    assert np.isnan(class_aurocs(labels, scores)).all()
    assert np.isnan(model_auroc(labels, scores))
