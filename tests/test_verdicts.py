"""compalign.verdicts: the statistics under the paper verdicts (intervals over seeds and test
examples, the papers' measures with their influence, permutation tests over members) and the
rules' behaviour at the edges: identical models, one seed, a clear effect."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from compalign.audit.stats import class_fairness
from compalign.populations import class_impact, modal_labels
from compalign.verdicts import measures, simulate
from compalign.verdicts import populations as pop
from compalign.verdicts.estimate import Ratio, SeedEvidence, holm, holm_adjusted
from compalign.verdicts.evidence import Outcomes, SeedRunsEvidence
from compalign.verdicts.rules import (
    HELD,
    NOT_HELD,
    NOT_JUDGED,
    NOT_REACHED,
    REACHED,
    RULE_BY_KEY,
    Verdict,
    judge_hooker,
    judge_joseph,
    judge_meyer,
)

RNG = np.random.default_rng(0)


def bootstrap_variance(statistic, arrays, samples=4000, seed=1):
    rng = np.random.default_rng(seed)
    n = arrays[0].shape[-1]
    values = []
    for _ in range(samples):
        index = rng.integers(0, n, n)
        values.append(statistic(*(a[..., index] for a in arrays)))
    return float(np.var(values))


def mann_whitney_auc(labels, scores):
    ranks = rankdata(scores)
    m, n = labels.sum(), (~labels).sum()
    return (ranks[labels].sum() - m * (m + 1) / 2) / (m * n)


# -- estimate ----------------------------------------------------------------------------------


def test_a_counts_test_variance_is_the_bootstraps():
    flips = RNG.random((1, 400)) < 0.05
    evidence = SeedEvidence(*measures.count(flips))
    analytic = evidence.estimate().test_var
    assert analytic == pytest.approx(400 * flips.var())
    assert analytic == pytest.approx(bootstrap_variance(lambda x: x.sum(), [flips[0]]), rel=0.1)


def test_seeds_add_their_spread_and_share_the_test_examples():
    flips = RNG.random((3, 300)) < np.array([[0.02], [0.05], [0.08]])
    estimate = SeedEvidence(*measures.count(flips)).estimate()
    assert estimate.point == pytest.approx(flips.sum(axis=1).mean())
    assert estimate.seed_var == pytest.approx(np.var(flips.sum(axis=1), ddof=1) / 3)
    # the test part is the variance of the seeds' MEAN count under shared resampling
    assert estimate.test_var == pytest.approx(300 * flips.mean(axis=0).var())
    low, high = estimate.interval(0.95)
    assert low < estimate.point < high
    assert 2 <= estimate.dof < math.inf


def test_one_seed_is_not_judged():
    estimate = SeedEvidence(*measures.count(RNG.random((1, 100)) < 0.1)).estimate()
    assert not estimate.judged
    assert math.isnan(estimate.p_greater()) and math.isnan(estimate.interval()[0])


def test_identical_models_give_no_evidence():
    flips = RNG.random((3, 200)) < 0.05
    same = SeedEvidence(*measures.count(flips))
    difference = (same - same).estimate()
    assert difference.variance == 0 and difference.p_greater() == 1.0
    assert Ratio(same, same).p_greater(1.0) == 1.0


def test_a_ratio_is_a_ratio_of_sums_with_a_fieller_interval():
    ce = SeedEvidence(*measures.count(RNG.random((3, 450)) < 0.06))
    lp = SeedEvidence(*measures.count(RNG.random((3, 450)) < 0.015))
    ratio = Ratio(ce, lp)
    assert ratio.point == pytest.approx(ce.values.sum() / lp.values.sum())
    low, high = ratio.interval(0.95)
    assert low < ratio.point < high
    # the interval is where the two-sided test keeps k: outside it the one-sided p is small
    assert ratio.p_greater(low * 0.9) < 0.025 < ratio.p_greater(low * 1.1)


def test_a_ratio_with_no_mismatches_left_has_an_open_upper_end():
    ce = SeedEvidence(*measures.count(RNG.random((3, 450)) < 0.03))
    nothing = SeedEvidence(*measures.count(np.zeros((3, 450), dtype=bool)))
    ratio = Ratio(ce, nothing)
    assert ratio.point == math.inf
    assert ratio.interval()[1] == math.inf
    assert ratio.p_greater(1.0) < 0.05  # the direction is still testable


def test_holm_steps_down():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    assert holm(p, 0.05).tolist() == [True, False, False, True, False]
    adjusted = holm_adjusted(p)
    assert adjusted[3] == pytest.approx(0.02) and adjusted[0] == pytest.approx(0.03)
    assert math.isnan(adjusted[4])


# -- measures -----------------------------------------------------------------------------------


def test_auroc_and_its_delong_variance():
    labels = RNG.integers(0, 2, 300).astype(bool)
    scores = np.round(RNG.normal(size=300) + labels, 1)  # ties
    subset = RNG.random(300) < 0.7
    value, influence = measures.auroc(labels, scores[None], subset)
    assert value[0] == pytest.approx(roc_auc_score(labels[subset], scores[subset]))
    assert np.all(influence[0, ~subset] == 0)
    whole, whole_influence = measures.auroc(labels, scores[None])
    boot = bootstrap_variance(mann_whitney_auc, [labels, scores], samples=1000)
    assert (whole_influence**2).sum() == pytest.approx(boot, rel=0.15)


def test_class_aurocs_and_the_group_gap_match_the_audits_metric():
    from compalign.audit.metrics.auroc import model_auroc

    labels = RNG.integers(0, 4, 200)
    logits = RNG.normal(size=(200, 4)) + 2 * np.eye(4)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    groups = np.isin(labels, [0, 1]).astype(int)
    gap, _ = measures.auroc_gap(labels, probabilities[None], groups)
    expected = [model_auroc(labels[groups == g], probabilities[groups == g]) for g in (0, 1)]
    assert gap[0] == pytest.approx(max(expected) - min(expected))


def test_the_worst_class_change_is_the_audits():
    labels = RNG.integers(0, 5, 300)
    reference = np.where(RNG.random(300) < 0.9, labels, RNG.integers(0, 5, 300))
    model = np.where(RNG.random(300) < 0.8, labels, RNG.integers(0, 5, 300))
    value, _ = measures.worst_class_recall_change(labels, model[None], reference[None], 5)
    frame = lambda p: pd.DataFrame({"label": labels, "prediction": p})  # noqa: E731
    audit = class_fairness(frame(reference), frame(model), [str(c) for c in range(5)])
    assert value[0] == pytest.approx(audit["worst_class_recall_change"])


def test_the_accuracy_gap_and_a_sample_mean():
    labels = RNG.integers(0, 3, 100)
    predictions = np.where(RNG.random(100) < 0.8, labels, 0)
    groups = (labels == 2).astype(int)
    gap, _ = measures.accuracy_gap(labels, predictions[None], groups)
    accuracies = [(predictions == labels)[groups == g].mean() for g in (0, 1)]
    assert gap[0] == pytest.approx(abs(accuracies[0] - accuracies[1]))
    values = np.full(100, np.nan)
    values[:10] = np.arange(10)
    mean, influence = measures.sample_mean(values[None])
    assert mean[0] == 4.5 and np.all(influence[0, 10:] == 0)


# -- populations -------------------------------------------------------------------------------


def test_modes_and_impacted_counts_agree_with_the_populations_module():
    labels = RNG.integers(0, 4, 150)
    dense = np.where(RNG.random((6, 150)) < 0.8, labels, RNG.integers(0, 4, (6, 150)))
    other = np.where(RNG.random((6, 150)) < 0.6, labels, RNG.integers(0, 4, (6, 150)))
    pool, index = pop.pooled([dense, other])
    modes = pop.modes(pool, index, 4)
    assert (modes[0] == modal_labels(dense, 4)[0]).all()
    assert (modes[1] == modal_labels(other, 4)[0]).all()
    recalls, top1 = pop.member_recalls(pool, labels, 4)
    counts = pop.impacted_counts(recalls, top1, index[0], index[1:], 0.05)
    impact = class_impact(dense, other, labels, list("abcd"), 0.05)
    assert counts[0] == int((impact.p <= 0.05).sum())
    dense_modes = modes[0]
    assert pop.pie_counts(pool, index[1:], dense_modes, 4)[0] == (modes[1] != dense_modes).sum()


# -- rules at the edges ------------------------------------------------------------------------


def identical_losses(seeds: int) -> SeedRunsEvidence:
    """label_preserving made identical to ce: the same predictions for every seed."""
    draw = simulate.joseph_draw(simulate.JosephDesign(seeds=seeds), np.random.default_rng(5))
    models = dict(draw.models)
    for (compressor, level, loss), outcomes in draw.models.items():
        if loss == "ce":
            models[(compressor, level, "label_preserving")] = Outcomes(
                outcomes.predictions.copy(), attribution=outcomes.attribution
            )
    return SeedRunsEvidence(draw.labels, draw.classes, draw.seeds, draw.reference, models)


def test_label_preserving_identical_to_ce_holds_nothing():
    verdicts = judge_joseph(identical_losses(3))
    assert {v.status for v in verdicts} <= {NOT_HELD, NOT_JUDGED}
    assert not any(v.held for v in verdicts)


def test_one_seed_judges_nothing():
    verdicts = judge_joseph(simulate.joseph_draw(simulate.JosephDesign(seeds=1), RNG))
    assert all(v.status == NOT_JUDGED and "seeds" in v.detail for v in verdicts)
    meyer = judge_meyer(simulate.meyer_draw(simulate.MeyerDesign(seeds=1), RNG))
    assert all(v.status == NOT_JUDGED for v in meyer)


def test_a_clear_reduction_holds_in_direction_and_size():
    design = simulate.JosephDesign(
        ce_mismatches={("magnitude_global", 0.98): 60.0}, seed_cv=0.1, examples=1000
    )
    verdicts = judge_joseph(simulate.joseph_draw(design, np.random.default_rng(2), reduction=8))
    assert verdicts[0].status == HELD and verdicts[1].status == REACHED
    assert verdicts[1].detail.startswith(("shown:", "consistent with the paper's figure"))
    # no reduction at all, measured well: the paper's size is excluded
    none = judge_joseph(simulate.joseph_draw(design, np.random.default_rng(2), reduction=1.5))
    assert none[1].status in (NOT_REACHED, NOT_JUDGED)


def test_a_rule_without_power_does_not_say_did_not_hold():
    rule = RULE_BY_KEY["joseph.fairness"]
    weak = Verdict(rule, NOT_HELD, "reduced at no cell").with_power(0.3, "450 test images")
    assert weak.status == NOT_JUDGED and weak.detail.startswith("not powered: 30% power")
    held = Verdict(rule, HELD, "at 1 of 8").with_power(0.3, "450 test images")
    assert held.status == HELD
    strong = Verdict(rule, NOT_HELD, "reduced at no cell").with_power(0.9, "450 test images")
    assert strong.status == NOT_HELD


def test_hooker_rules_see_pruning_that_flips_examples():
    design = simulate.HookerDesign()
    with_effect = judge_hooker(
        simulate.hooker_draw(design, np.random.default_rng(4), True), permutations=200
    )
    assert with_effect[0].status == HELD and with_effect[2].status == HELD
    assert "floor" in with_effect[0].detail
