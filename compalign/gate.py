"""A release gate on an audit: rules such as `mismatches_ref_correct_ci_high<=20`.

A rule names a metric of a candidate's audit (any of its metrics, costs, noise-floor columns or
summary columns), an operator (<=, >=, <, >) and a bound. Every rule is checked on every
candidate; a rule on an interval bound (`_ci_high`, `_ci_low`) makes the gate noise-aware.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass

from compalign.errors import UserError

OPERATORS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
_RULE = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(<=|>=|<|>)\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Rule:
    """metric OPERATOR bound."""

    metric: str
    operator: str
    bound: float

    def __str__(self) -> str:
        return f"{self.metric}{self.operator}{self.bound:g}"

    def holds(self, value: float) -> bool:
        """Whether `value` meets the bound; a value that was not measured (NaN) does not."""
        return not math.isnan(value) and OPERATORS[self.operator](value, self.bound)


def parse_rule(text: str) -> Rule:
    """ "metric<=value" (or >=, <, >) -> Rule; UserError for anything else."""
    match = _RULE.match(text)
    if match is None:
        raise UserError(
            f"--fail-on {text!r}: expected METRIC<=VALUE (or >=, <, >), "
            "e.g. mismatches_ref_correct_ci_high<=20"
        )
    metric, symbol, bound = match.groups()
    try:
        value = float(bound)
    except ValueError:
        raise UserError(f"--fail-on {text!r}: {bound!r} is not a number") from None
    return Rule(metric, symbol, value)


def check_rules(rules: list[Rule], metrics: Mapping[str, Mapping[str, float]]) -> list[str]:
    """One line per (rule, candidate) that fails: candidate, metric, value and bound. A rule on a
    metric no candidate has is a UserError naming the closest metric names."""
    known = {name for values in metrics.values() for name in values}
    failures = []
    for rule in rules:
        if rule.metric not in known:
            close = difflib.get_close_matches(rule.metric, sorted(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"--fail-on {rule}: unknown metric {rule.metric!r}{hint}")
        for name, values in metrics.items():
            value = float(values.get(rule.metric, math.nan))
            if not rule.holds(value):
                shown = "not measured" if math.isnan(value) else f"{value:g}"
                failures.append(
                    f"FAILED {name}: {rule.metric} = {shown}, bound {rule.operator} {rule.bound:g}"
                )
    return failures


@dataclass(frozen=True)
class Verdict:
    """One rule checked on one candidate: the value the rule read and whether it holds."""

    candidate: str
    rule: Rule
    value: float

    @property
    def passed(self) -> bool:
        return self.rule.holds(self.value)

    @property
    def shown(self) -> str:
        """The value as the gate's lines print it ("not measured" for NaN)."""
        return "not measured" if math.isnan(self.value) else f"{self.value:g}"

    def line(self) -> str:
        """ "PASSED int8: mismatches = 3, bound <= 20" (FAILED as check_rules prints it)."""
        word = "PASSED" if self.passed else "FAILED"
        return (
            f"{word} {self.candidate}: {self.rule.metric} = {self.shown}, "
            f"bound {self.rule.operator} {self.rule.bound:g}"
        )

    def record(self) -> dict[str, object]:
        """A plain row: candidate, rule, metric, value, operator, bound, passed."""
        return {
            "candidate": self.candidate,
            "rule": str(self.rule),
            "metric": self.rule.metric,
            "value": self.value,
            "operator": self.rule.operator,
            "bound": self.rule.bound,
            "passed": self.passed,
        }


def verdicts(rules: list[Rule], metrics: Mapping[str, Mapping[str, float]]) -> list[Verdict]:
    """Every rule on every candidate, passing ones too, candidate by candidate in the order of
    `metrics`, rules in their order; the same checks as check_rules (an unknown metric is its
    UserError)."""
    check_rules(rules, metrics)  # an unknown metric: the same one-line error
    return [
        Verdict(name, rule, float(values.get(rule.metric, math.nan)))
        for name, values in metrics.items()
        for rule in rules
    ]


def gate_status(found: list[Verdict], candidate: str | None = None) -> str:
    """ "passed", "failed" (a rule failed) or "no rules", of one candidate or of them all."""
    chosen = [v for v in found if candidate is None or v.candidate == candidate]
    if not chosen:
        return "no rules"
    return "passed" if all(v.passed for v in chosen) else "failed"
