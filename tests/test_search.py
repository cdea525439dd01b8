"""compalign.search: bisection over levels and the float-layer search, with fake probes; the
request checks of `compalign search` (nothing runs)."""

from __future__ import annotations

import pytest

from compalign.config import load_params
from compalign.errors import UserError
from compalign.gate import parse_rule
from compalign.search import (
    ProbeOutcome,
    check_request,
    check_rules,
    search_float_layers,
    search_levels,
)
from conftest import TINY

GRID = [0.5, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99]


class Probe:
    """A fake probe: the rules hold where `passes(level)` says; every call is counted."""

    def __init__(self, passes):
        self.passes = passes
        self.calls: list[float] = []

    def __call__(self, level: float) -> bool:
        self.calls.append(level)
        return self.passes(level)


@pytest.mark.parametrize("threshold", GRID)
def test_bisection_finds_the_last_passing_level_of_a_monotone_probe(threshold):
    probe = Probe(lambda level: level <= threshold)
    result = search_levels(GRID, probe)
    assert result.chosen == threshold
    assert probe.calls[0] == GRID[0]  # the least compressed level first
    assert len(probe.calls) == len(set(probe.calls)) <= 1 + 4  # 1 + ceil(log2(11))
    index = GRID.index(threshold)
    if index + 1 < len(GRID):  # the level above the answer was probed, and failed
        assert result.outcomes[GRID[index + 1]] is False
        assert result.first_failure == GRID[index + 1]
    assert result.violations == []


def test_a_least_compressed_level_that_fails_is_no_answer():
    probe = Probe(lambda level: False)
    result = search_levels(GRID, probe)
    assert result.chosen is None and probe.calls == [GRID[0]]


def test_known_outcomes_are_not_probed_again_and_narrow_the_bracket():
    probe = Probe(lambda level: level <= 0.95)
    known = {0.5: True, 0.94: True, 0.97: False}
    result = search_levels(GRID, probe, known)
    assert result.chosen == 0.95
    assert set(probe.calls) == {0.95, 0.96}
    assert result.probed == probe.calls


def test_a_non_monotone_probe_is_reported_and_the_answer_stays_below_the_first_failure():
    # passes up to 0.85, fails at 0.9, passes again from 0.92 (what bisection cannot see alone)
    probe = Probe(lambda level: level <= 0.85 or 0.92 <= level <= 0.96)
    known = {0.9: False, 0.95: True}  # an earlier search's probes: evidence against monotonicity
    result = search_levels(GRID, probe, known)
    assert result.chosen == 0.85
    assert (0.95, 0.9) in result.violations
    assert all(level < 0.9 or level in known for level in probe.calls)


def test_a_non_monotone_probe_alone_gives_a_passing_level_below_a_failing_one():
    probe = Probe(lambda level: level != 0.94)  # one bad level in the middle
    result = search_levels(GRID, probe)
    assert result.outcomes[result.chosen] is True
    above = [level for level in GRID if level > result.chosen]
    assert not above or result.outcomes.get(above[0]) is False


def test_every_level_passing_chooses_the_highest():
    probe = Probe(lambda level: True)
    assert search_levels(GRID, probe).chosen == GRID[-1]


def test_float_layers_are_kept_by_recovered_mismatches_until_the_rules_hold():
    # each layer in float removes its own share of 30 mismatches; the rule: at most 8
    share = {"conv1": 4, "conv2": 15, "fc": 7}
    calls = []

    def evaluate(float_layers):
        calls.append(float_layers)
        mismatches = 30 - sum(share[name] for name in float_layers)
        return ProbeOutcome(mismatches <= 8, mismatches)

    result = search_float_layers(["conv1", "conv2", "fc"], evaluate)
    assert result.chosen == ("conv2", "fc")  # 30 -> 15 (conv2) -> 8 (fc): holds
    assert [step["layer"] for step in result.rounds] == ["conv2", "fc"]
    assert result.rounds[0]["recovered"] == {"conv1": 4, "conv2": 15, "fc": 7}
    assert calls[0] == () and ("conv1", "conv2") in calls  # module order kept in every probe
    assert result.probes == 1 + 3 + 2


def test_a_trial_that_meets_the_rules_is_kept_before_one_that_recovers_more():
    # conv2 recovers more, but fc alone already meets the size rule: one layer in float is enough
    def evaluate(float_layers):
        mismatches = 10 - 6 * ("conv2" in float_layers) - 1 * ("fc" in float_layers)
        return ProbeOutcome("fc" in float_layers, mismatches, cost=len(float_layers))

    result = search_float_layers(["conv1", "conv2", "fc"], evaluate)
    assert result.chosen == ("fc",) and result.probes == 4


def test_ties_in_recovered_mismatches_go_to_the_cheaper_trial():
    sizes = {"big": 100.0, "small": 1.0}
    result = search_float_layers(
        ["big", "small"],
        lambda layers: ProbeOutcome(len(layers) == 2, 3, sum(sizes[n] for n in layers)),
    )
    assert result.rounds[0]["layer"] == "small"


def test_float_layers_that_never_meet_the_rules_give_no_answer():
    result = search_float_layers(["a", "b"], lambda layers: ProbeOutcome(False, 5 - len(layers)))
    assert result.chosen is None
    assert result.rounds[-1]["kept"] == ("a", "b")


def test_float_layers_not_needed_when_everything_int8_already_holds():
    result = search_float_layers(["a", "b"], lambda layers: ProbeOutcome(True, 0))
    assert result.chosen == () and result.rounds == []


def test_rules_on_a_probe_hold_or_fail_and_a_missing_metric_fails():
    checks = check_rules(
        [parse_rule("mismatches_ci_high<=10"), parse_rule("size_bytes_ratio<=0.5")],
        {"mismatches_ci_high": 7.0},
    )
    assert [check.holds for check in checks] == [True, False]
    assert "not measured" in checks[1].describe()


@pytest.mark.parametrize(
    ("method", "loss", "rule", "needle"),
    [
        ("half", "none", "mismatches<=1", "has no levels to search"),
        ("quantize_dynamic", "none", "mismatches<=1", "has no levels to search"),
        ("pruning", "none", "mismatches<=1", "unknown compressor"),
        ("magnitude_global", "kdd", "mismatches<=1", "unknown loss"),
        ("quantize_static", "kd", "mismatches<=1", "quantization_aware"),
        ("magnitude_global", "none", "mismatch<=1", "unknown metric 'mismatch'"),
        ("magnitude_global", "none", "mismatches=1", "expected METRIC<=VALUE"),
    ],
)
def test_a_search_that_cannot_be_made_is_refused_in_one_line(method, loss, rule, needle):
    with pytest.raises(UserError, match=needle):
        check_request(load_params(TINY), method, loss, [rule])


def test_rules_on_classes_groups_costs_and_intervals_are_known():
    rules = [
        "mismatches_ref_correct_ci_high<=10",
        "recall_change.7>=-0.1",
        "group.odd.accuracy_gap_change<=0.05",
        "size_bytes_ratio<=0.5",
        "latency_ms_b1<=2",
    ]
    parsed = check_request(load_params(TINY), "magnitude_global", "label_preserving", rules)
    assert [str(rule) for rule in parsed] == rules
