"""Pruning Identified Exemplars and class impact (Hooker et al.) on hand-made populations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from compalign.populations import (
    analyse_populations,
    class_impact,
    decide_impact,
    modal_labels,
    normalised_recalls,
    pie_summary,
    pie_table,
    pies,
)


def test_modal_labels_break_ties_by_the_largest_label():
    """Hooker et al.'s aggregate_predictions.py takes `predictions.mode().max()`."""
    predictions = np.array(
        [
            [0, 3, 2, 5],
            [1, 3, 2, 4],
            [1, 2, 2, 4],
            [0, 2, 1, 5],
        ]
    )
    modes, agreement = modal_labels(predictions)
    # example 0: 0 and 1 twice each -> 1; example 1: 3 and 2 twice each -> 3;
    # example 2: 2 three times; example 3: 4 and 5 twice each -> 5
    assert modes.tolist() == [1, 3, 2, 5]
    assert agreement.tolist() == [0.5, 0.5, 0.75, 0.5]
    assert modes.tolist() == [pd.Series(column).mode().max() for column in predictions.T]


def test_pies_compare_modal_labels_and_ignore_the_true_label():
    dense = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [1, 0, 3, 9]])  # modes 1, 2, 3, 4
    sparse = np.array([[1, 2, 7, 4], [1, 5, 7, 4], [0, 5, 3, 4]])  # modes 1, 5, 7, 4
    assert pies(dense, sparse).tolist() == [False, True, True, False]


def test_pies_with_ties_on_both_sides():
    """A tie resolves to the largest label in each population before comparing."""
    dense = np.array([[2, 6], [3, 6]])  # modes: tie 2/3 -> 3; 6
    sparse = np.array([[3, 7], [2, 5]])  # modes: tie 2/3 -> 3; tie 5/7 -> 7
    assert pies(dense, sparse).tolist() == [False, True]


def test_pie_summary_and_table():
    labels = np.array([0, 1, 2, 3])
    dense = np.array([[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 1, 3]])  # modes 0 1 2 3
    sparse = np.array([[0, 2, 2, 0], [0, 2, 1, 1], [0, 1, 1, 2]])  # modes 0 2 1 2 (tie)
    summary = pie_summary(dense, sparse, labels)
    assert summary["pie_count"] == 3 and summary["pie_fraction"] == 0.75
    assert summary["pies_compressed_mode_correct"] == 0
    # dense members on PIEs (examples 1, 2, 3): 1+1+1 / 3, 1+1+0 / 3, 1+0+1 / 3 -> 7/9
    assert summary["reference_top1_on_pies"] == pytest.approx(7 / 9)
    assert summary["compressed_top1_on_rest"] == 1.0
    table = pie_table(["a", "b", "c", "d"], labels, dense, sparse)
    assert table.example_id.tolist() == ["b", "c", "d"]
    assert table.compressed_mode.tolist() == [2, 1, 2]
    # example d: votes 0, 1, 2 tie three ways -> mode 2 (the largest) with a third of the members
    assert table.compressed_agreement.tolist() == pytest.approx([2 / 3, 2 / 3, 1 / 3])


def test_class_impact_is_welchs_t_test_on_normalised_recalls():
    """Recomputed with scipy on the same made-up recalls: class 0 falls sharply under
    compression while the others hold; only class 0 is impacted, for the worse."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 50)
    dense = np.stack([np.where(rng.random(150) < 0.95, labels, (labels + 1) % 3) for _ in range(8)])
    sparse = dense.copy()
    for member in sparse:
        hit = (labels == 0) & (rng.random(150) < 0.5)
        member[hit] = 1
    impact = class_impact(dense, sparse, labels, ["a", "b", "c"], alpha=0.05)
    dense_recalls = normalised_recalls(dense, labels, 3)
    sparse_recalls = normalised_recalls(sparse, labels, 3)
    for index in range(3):
        expected = stats.ttest_ind(
            dense_recalls[:, index], sparse_recalls[:, index], equal_var=False
        )
        assert impact.t[index] == pytest.approx(expected.statistic)
        assert impact.p[index] == pytest.approx(expected.pvalue)
    assert impact.impacted.tolist()[0] and impact.direction[0] == "worse"
    assert impact.change[0] < -0.1
    # normalised recall = recall - the population's mean top-1 (one number for all members)
    member = dense[0]
    top1 = (dense == labels).mean()
    assert dense_recalls[0, 1] == pytest.approx((member[labels == 1] == 1).mean() - top1)


def test_welch_statistic_by_hand_with_the_population_mean_top1():
    """Hooker et al.'s gen_tstatistic.py: ttest_ind(recall_dense - mean_top1[0], recall_sparse
    - mean_top1[p], equal_var=False), mean_top1 one number per population. Worked by hand:
    dense top-1 1, 3/4, 3/4 (mean 5/6), class-0 recalls 1, 1/2, 1 -> 1/6, -1/3, 1/6 (mean 0,
    variance 1/12); sparse top-1 3/4, 1/2, 1/2 (mean 7/12), class-0 recalls 1/2, 0, 1/2 ->
    -1/12, -7/12, -1/12 (mean -1/4, variance 1/12). t = (0 + 1/4) / sqrt(1/36 + 1/36) =
    sqrt(18) / 4; Welch's df = (1/18)^2 / (2 (1/36)^2 / 2) = 4."""
    labels = np.array([0, 0, 1, 1])
    dense = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 1, 0]])
    sparse = np.array([[1, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 0]])
    impact = class_impact(dense, sparse, labels, ["a", "b"])
    t = np.sqrt(18) / 4
    assert impact.t.tolist() == pytest.approx([t, -t])  # class b: dense 0, sparse +1/4
    assert impact.p.tolist() == pytest.approx([2 * stats.t.sf(t, 4)] * 2)
    assert impact.change.tolist() == pytest.approx([-0.25, 0.25])
    # each member's own top-1 would give class a 0, -1/4, 1/4 vs -1/4, -1/2, 0: another t
    own = stats.ttest_ind([0, -0.25, 0.25], [-0.25, -0.5, 0], equal_var=False).statistic
    assert own != pytest.approx(t)


def test_a_class_without_variation_in_either_population_is_not_tested():
    """Class a is right for every member of both populations; the mean top-1s differ (class b
    varies), so its normalised recalls are constant but unequal: scipy would say t = inf,
    p = 0. It is left untested (NaN), never impacted."""
    labels = np.array([0, 0, 1, 1])
    dense = np.array([[0, 0, 1, 1], [0, 0, 1, 0], [0, 0, 1, 1]])
    sparse = np.array([[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    impact = class_impact(dense, sparse, labels, ["a", "b"])
    assert np.isnan(impact.t[0]) and np.isnan(impact.p[0]) and not impact.impacted[0]
    assert np.isfinite(impact.p[1])


def test_impact_is_decided_on_benjamini_hochberg_adjusted_p():
    """Four tests at raw p 0.01, 0.04, 0.045, 0.5: BH gives 0.04, 0.06, 0.06, 0.5 (p_i m / i,
    made monotone from the top), so one class is impacted at 0.05, not three; NaN stays out."""
    impact = pd.DataFrame(
        {"p": [0.01, 0.04, 0.045, 0.5, np.nan], "change": [-0.1, 0.2, -0.1, 0.0, 0.0]}
    )
    decided = decide_impact(impact, 0.05)
    assert decided.p_adjusted.tolist()[:4] == pytest.approx([0.04, 0.06, 0.06, 0.5])
    assert np.isnan(decided.p_adjusted.iloc[4])
    assert decided.impacted.tolist() == [True, False, False, False, False]
    assert decided.direction.tolist() == ["worse", "", "", "", ""]
    assert (impact.p <= 0.05).sum() == 3  # what the raw p-values would have said


def test_analyse_populations_per_level_and_loss():
    """A summary row and an impact table per population, PIEs shared with the level's first
    loss, and galleries of the surest PIEs first, at most `gallery_examples`."""
    labels = np.array([0, 1, 2, 3])
    dense = np.array([[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 1, 3]])  # modes 0 1 2 3
    sparse = np.array([[0, 2, 2, 0], [0, 2, 1, 1], [0, 1, 1, 2]])  # PIEs b, c, d
    other = np.array([[0, 2, 2, 3], [0, 2, 2, 3], [0, 2, 2, 3]])  # PIE b, all members agree
    analysis = analyse_populations(
        ["a", "b", "c", "d"],
        labels,
        ["w", "x", "y", "z"],
        dense,
        {(0.5, "ce"): sparse, (0.5, "kd"): other, (None, "none"): dense},
        significance=0.05,
        gallery_examples=2,
    )
    summary = analysis["summary"]
    assert summary.loss.tolist() == ["ce", "kd", "none"]
    assert summary.level.tolist()[:2] == [0.5, 0.5] and summary.level.isna().tolist()[2]
    assert summary.pie_count.tolist() == [3, 1, 0]
    assert summary.pies_shared_with_first_loss.tolist() == [3, 1, 0]
    assert len(analysis["impact"]) == 3 * 4 and set(analysis["impact"]["class"]) == set("wxyz")
    assert analysis["pies"][(0.5, "ce")].example_id.tolist() == ["b", "c", "d"]
    # agreement (dense + compressed): b 1 + 2/3, c 2/3 + 2/3, d 2/3 + 1/3 -> b, c
    gallery = analysis["galleries"][(0.5, "ce")]
    assert gallery.position.tolist() == [1, 2]
    assert gallery.compressed_mode.tolist() == [2, 1] and gallery.label.tolist() == [1, 2]
    assert analysis["galleries"][(None, "none")].empty
    # one BH family over every class of every population tested
    impact = analysis["impact"]
    finite = impact.p.notna()
    expected = stats.false_discovery_control(impact.p[finite].to_numpy())
    assert impact.p_adjusted[finite].tolist() == pytest.approx(expected.tolist())
    assert summary.impacted_classes.tolist() == [
        int(impact[(impact.level == level) & (impact.loss == loss)].impacted.sum())
        for level, loss in [(0.5, "ce"), (0.5, "kd"), (None, "none")]
    ]
