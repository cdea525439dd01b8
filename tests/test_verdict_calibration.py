"""Every verdict rule, checked by simulation at the cpu profiles' sizes: on 1,000 draws with no
effect it says "held" in at most 5% of them (its false-positive rate), and on 300 draws with
the paper's effect (or, where the paper gives no figure, the effect its rule states) the test
prints how often it does (its power, to within about 3 points: the suite checks only that the
reduction rules have teeth). `pytest -s` shows the table."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from compalign.verdicts import simulate
from compalign.verdicts.rules import RULES

DRAWS = 1000
EFFECT_DRAWS = 300  # power is printed and checked loosely: its standard error <= 2.9 points
PERMUTATIONS = 100  # per Hooker test in the simulation (reports use 1,000): p >= 1/101
DESIGNS = {
    "joseph": simulate.JosephDesign(),
    "meyer": simulate.MeyerDesign(),
    "hooker": simulate.HookerDesign(),
}
FALSE_POSITIVES_ALLOWED = 0.05


@pytest.fixture(scope="module")
def table():
    rows = {}
    for paper, design in DESIGNS.items():
        null = simulate.positive_rates(
            paper, design, DRAWS, False, seed=11, permutations=PERMUTATIONS
        )
        effect = simulate.positive_rates(
            paper, design, EFFECT_DRAWS, True, seed=12, permutations=PERMUTATIONS
        )
        for key in null:
            rows[key] = (null[key], effect[key])
    print(f"\n{'rule':42} {'held, no effect':>16} {'held, effect (power)':>21}")
    for key, (null, effect) in rows.items():
        print(f"{key:42} {null:16.3f} {effect:21.3f}")
    return rows


def test_every_rule_is_simulated(table):
    assert set(table) == {rule.key for rule in RULES}


@pytest.mark.parametrize("key", [rule.key for rule in RULES])
def test_no_rule_holds_in_more_than_5_percent_of_no_effect_draws(table, key):
    assert table[key][0] <= FALSE_POSITIVES_ALLOWED


def test_the_reduction_rules_detect_the_papers_effect_more_often_than_not(table):
    # the check has teeth: with 4.1x fewer mismatches the direction holds in most draws
    assert table["joseph.mismatches.direction"][1] > 0.5
    assert table["hooker.pies"][1] > 0.9


def test_joseph_rules_stay_calibrated_when_losses_do_not_share_a_seed_scale():
    # the training noise of two losses of one seed independent, and larger
    design = replace(DESIGNS["joseph"], shared_seed=False, seed_cv=0.8)
    rates = simulate.positive_rates("joseph", design, DRAWS, False, seed=13)
    assert max(rates.values()) <= FALSE_POSITIVES_ALLOWED, rates


def test_meyer_non_inferiority_null_costs_at_least_one_point():
    # the "without costing accuracy" null puts pw one point (or a little more) below ce
    design = replace(
        DESIGNS["meyer"],
        examples=4000,
        ce_rare_loss=dict.fromkeys(DESIGNS["meyer"].ce_rare_loss, 0.0),
    )
    rng = np.random.default_rng(3)
    differences = []
    for _ in range(40):
        draw = simulate.meyer_draw(
            design, rng, 1.0, simulate.MEYER_POINT_SHIFT, probabilities=False
        )
        for level in design.ce_rare_loss:
            ce = draw.models[("taylor_iterative", level, "ce")].predictions
            pw = draw.models[("taylor_iterative", level, "pw")].predictions
            differences.append((pw == draw.labels).mean() - (ce == draw.labels).mean())
    assert np.mean(differences) <= -0.0095
