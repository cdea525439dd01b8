"""Pruning Identified Exemplars and class impact (Hooker et al.) on hand-made populations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from compalign.populations import (
    analyse_populations,
    class_impact,
    modal_labels,
    normalised_recalls,
    pie_summary,
    pie_table,
    pies,
)


def test_modal_labels_break_ties_by_the_smallest_label():
    predictions = np.array(
        [
            [0, 3, 2, 5],
            [1, 3, 2, 4],
            [1, 2, 2, 4],
            [0, 2, 1, 5],
        ]
    )
    modes, agreement = modal_labels(predictions)
    # example 0: 0 and 1 twice each -> 0; example 1: 3 and 2 twice each -> 2;
    # example 2: 2 three times; example 3: 4 and 5 twice each -> 4
    assert modes.tolist() == [0, 2, 2, 4]
    assert agreement.tolist() == [0.5, 0.5, 0.75, 0.5]


def test_pies_compare_modal_labels_and_ignore_the_true_label():
    dense = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [1, 0, 3, 9]])  # modes 1, 2, 3, 4
    sparse = np.array([[1, 2, 7, 4], [1, 5, 7, 4], [0, 5, 3, 4]])  # modes 1, 5, 7, 4
    assert pies(dense, sparse).tolist() == [False, True, True, False]


def test_pies_with_ties_on_both_sides():
    """A tie resolves to the smallest label in each population before comparing."""
    dense = np.array([[2, 6], [3, 6]])  # modes: tie 2/3 -> 2; 6
    sparse = np.array([[3, 7], [2, 5]])  # modes: tie 2/3 -> 2; tie 5/7 -> 5
    assert pies(dense, sparse).tolist() == [False, True]


def test_pie_summary_and_table():
    labels = np.array([0, 1, 2, 3])
    dense = np.array([[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 1, 3]])  # modes 0 1 2 3
    sparse = np.array([[0, 2, 2, 0], [0, 2, 1, 1], [0, 1, 1, 3]])  # modes 0 2 1 0 (tie)
    summary = pie_summary(dense, sparse, labels)
    assert summary["pie_count"] == 3 and summary["pie_fraction"] == 0.75
    assert summary["pies_compressed_mode_correct"] == 0
    # dense members on PIEs (examples 1, 2, 3): 1+1+1 / 3, 1+1+0 / 3, 1+0+1 / 3 -> 7/9
    assert summary["reference_top1_on_pies"] == pytest.approx(7 / 9)
    assert summary["compressed_top1_on_rest"] == 1.0
    table = pie_table(["a", "b", "c", "d"], labels, dense, sparse)
    assert table.example_id.tolist() == ["b", "c", "d"]
    assert table.compressed_mode.tolist() == [2, 1, 0]
    # example d: votes 0, 1, 3 tie three ways -> mode 0 with a third of the members
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
            sparse_recalls[:, index], dense_recalls[:, index], equal_var=False
        )
        assert impact.t[index] == pytest.approx(expected.statistic)
        assert impact.p[index] == pytest.approx(expected.pvalue)
    assert impact.impacted.tolist()[0] and impact.direction[0] == "worse"
    assert impact.change[0] < -0.1
    # normalised recall = recall - the member's own top-1
    member = dense[0]
    top1 = (member == labels).mean()
    assert dense_recalls[0, 1] == pytest.approx((member[labels == 1] == 1).mean() - top1)


def test_analyse_populations_per_level_and_loss():
    """A summary row and an impact table per population, PIEs shared with the level's first
    loss, and galleries of the surest PIEs first, at most `gallery_examples`."""
    labels = np.array([0, 1, 2, 3])
    dense = np.array([[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 1, 3]])  # modes 0 1 2 3
    sparse = np.array([[0, 2, 2, 0], [0, 2, 1, 1], [0, 1, 1, 3]])  # PIEs b, c, d
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
