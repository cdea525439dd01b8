"""Release rules (compalign.gate): parsed strictly, checked on every candidate."""

from __future__ import annotations

import math

import pytest

from compalign.errors import UserError
from compalign.gate import check_rules, parse_rule


@pytest.mark.parametrize(
    ("text", "metric", "symbol", "bound"),
    [
        ("mismatches_ref_correct_ci_high<=20", "mismatches_ref_correct_ci_high", "<=", 20.0),
        ("worst_class_recall_change >= -0.05", "worst_class_recall_change", ">=", -0.05),
        ("group.sex.accuracy_gap_change<0.03", "group.sex.accuracy_gap_change", "<", 0.03),
        ("ece_change>1e-3", "ece_change", ">", 0.001),
    ],
)
def test_rules_parse(text, metric, symbol, bound):
    rule = parse_rule(text)
    assert (rule.metric, rule.operator, rule.bound) == (metric, symbol, bound)


@pytest.mark.parametrize("text", ["mismatches", "mismatches=3", "mismatches<=x", "<=3", "a<=1<=2"])
def test_malformed_rules_are_user_errors(text):
    with pytest.raises(UserError, match="expected METRIC<=VALUE"):
        parse_rule(text)


def test_each_failing_candidate_is_one_line_with_value_and_bound():
    metrics = {
        "int8": {"mismatches": 3.0, "ece_change": 0.01},
        "pruned": {"mismatches": 25.0, "ece_change": math.nan},
    }
    rules = [parse_rule("mismatches<=20"), parse_rule("ece_change<=0.02")]
    assert check_rules(rules, metrics) == [
        "FAILED pruned: mismatches = 25, bound <= 20",
        "FAILED pruned: ece_change = not measured, bound <= 0.02",
    ]


def test_an_unknown_metric_is_a_user_error_with_a_suggestion():
    with pytest.raises(UserError, match="unknown metric 'mismatch'.*mismatches"):
        check_rules([parse_rule("mismatch<=1")], {"int8": {"mismatches": 0.0}})


def test_verdicts_are_every_rule_on_every_candidate_passing_ones_too():
    from compalign.gate import gate_status, verdicts

    metrics = {
        "int8": {"mismatches": 3.0, "ece_change": 0.01},
        "pruned": {"mismatches": 25.0, "ece_change": math.nan},
    }
    rules = [parse_rule("mismatches<=20"), parse_rule("ece_change<=0.02")]
    found = verdicts(rules, metrics)
    assert [v.line() for v in found] == [
        "PASSED int8: mismatches = 3, bound <= 20",
        "PASSED int8: ece_change = 0.01, bound <= 0.02",
        "FAILED pruned: mismatches = 25, bound <= 20",
        "FAILED pruned: ece_change = not measured, bound <= 0.02",
    ]
    # the failed ones word for word as check_rules prints them
    assert [v.line() for v in found if not v.passed] == check_rules(rules, metrics)
    assert found[0].record() == {
        "candidate": "int8",
        "rule": "mismatches<=20",
        "metric": "mismatches",
        "value": 3.0,
        "operator": "<=",
        "bound": 20.0,
        "passed": True,
    }
    assert gate_status(found) == "failed" and gate_status(found, "int8") == "passed"
    assert gate_status([]) == "no rules"
    with pytest.raises(UserError, match="unknown metric"):
        verdicts([parse_rule("mismatch<=1")], metrics)
