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
