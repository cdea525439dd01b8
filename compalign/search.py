"""How far can a model be compressed within a budget of release rules (`compalign search`).

Pure logic, no models: a *probe* is any function that compresses (and fine-tunes) at one level
and says whether its model meets every rule on the validation split; the flow
(flows/search.py) makes each probe a cached pipeline step.

Two searches:

- `search_levels`: a compressor with levels (sparsity, fraction of MACs or conv FLOPs removed).
  Bisection on a sorted grid of levels, after the least compressed level has been probed. It
  assumes that the rules, once failed at some level, fail at every higher level (monotonicity);
  bisection needs 1 + ceil(log2(n - 1)) probes for n levels, where a scan of the grid needs up
  to n. Probes that a previous search left in the store are given as `known` and cost nothing:
  they narrow the bracket, and they are where monotonicity is checked (a level that passes
  above one that fails is reported as a violation, never hidden). The answer is the highest
  probed passing level below the lowest probed failing one.
- `search_float_layers`: static int8 quantization, which has no level. Everything is quantized;
  while the rules fail, every layer still int8 is tried in float (one probe each), and the one
  whose float copy recovers the most mismatches is kept in float (one whose trial already meets
  the rules first: the search then ends there); until the rules hold or every layer is float. Unlike NNCF's accuracy-control fallback, which ranks layers once by the drop of
  the validation metric on a subset and reverts them in that order (re-ranking only when a
  revert made the drop worse), every step here is measured against the current model, and the
  measure is prediction flips against the reference, not an aggregate metric.

`check_rules` evaluates the release rules of compalign.gate on one probe's metrics;
`rule_metric_names` lists the metric names a probe's audit can have, so that a rule on an
unknown metric is refused before anything runs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from compalign.errors import UserError
from compalign.gate import Rule

# --------------------------------------------------------------------------------------------
# Rules


@dataclass(frozen=True)
class RuleCheck:
    """One rule on one probe: the value measured and whether the rule holds."""

    rule: Rule
    value: float

    @property
    def holds(self) -> bool:
        return self.rule.holds(self.value)

    def describe(self) -> str:
        shown = "not measured" if math.isnan(self.value) else f"{self.value:g}"
        mark = "ok" if self.holds else "FAILED"
        return (
            f"{self.rule.metric} = {shown} (bound {self.rule.operator} {self.rule.bound:g}: {mark})"
        )


def check_rules(rules: Sequence[Rule], metrics: Mapping[str, float]) -> list[RuleCheck]:
    """Each rule with the probe's value of its metric (NaN where the probe has none: fails)."""
    return [RuleCheck(rule, float(metrics.get(rule.metric, math.nan))) for rule in rules]


def all_hold(checks: Sequence[RuleCheck]) -> bool:
    return all(check.holds for check in checks)


# --------------------------------------------------------------------------------------------
# Search over levels


@dataclass
class LevelSearch:
    """What `search_levels` found: `outcomes` (level -> the rules hold) of every probe it knows,
    `probed` the levels it probed itself (in order), `chosen` the answer (None: the least
    compressed level already fails), `violations` pairs (passing level, lower failing level)
    that contradict monotonicity."""

    levels: list[float]
    outcomes: dict[float, bool]
    probed: list[float]
    chosen: float | None
    violations: list[tuple[float, float]] = field(default_factory=list)

    @property
    def first_failure(self) -> float | None:
        """The lowest level known to fail the rules (the probe above the answer)."""
        failing = [level for level, passes in self.outcomes.items() if not passes]
        return min(failing) if failing else None


def search_levels(
    levels: Sequence[float],
    passes: Callable[[float], bool],
    known: Mapping[float, bool] | None = None,
) -> LevelSearch:
    """The highest level of `levels` whose probe meets the rules, by bisection (module
    docstring). `passes(level)` probes one level; `known` holds outcomes already measured,
    which are never probed again."""
    grid = sorted({float(level) for level in levels})
    if not grid:
        raise ValueError("search_levels needs at least one level")
    outcomes = {level: bool(known[level]) for level in grid if known and level in known}
    probed: list[float] = []

    def outcome(index: int) -> bool:
        level = grid[index]
        if level not in outcomes:
            outcomes[level] = bool(passes(level))
            probed.append(level)
        return outcomes[level]

    if not outcome(0):
        return LevelSearch(grid, outcomes, probed, None, _violations(outcomes))
    failing = [index for index, level in enumerate(grid) if outcomes.get(level) is False]
    high = min(failing, default=len(grid))  # the lowest failing index (len: none fails)
    low = max(
        index for index, level in enumerate(grid[:high]) if outcomes.get(level) is True
    )  # index 0 passes
    while high - low > 1:
        middle = (low + high) // 2
        if outcome(middle):
            low = middle
        else:
            high = middle
    return LevelSearch(grid, outcomes, probed, grid[low], _violations(outcomes))


def _violations(outcomes: Mapping[float, bool]) -> list[tuple[float, float]]:
    """(passing level, lower failing level) pairs: evidence against monotonicity."""
    return sorted(
        (above, below)
        for above, passes_above in outcomes.items()
        for below, passes_below in outcomes.items()
        if passes_above and not passes_below and below < above
    )


# --------------------------------------------------------------------------------------------
# Search over layers kept in float


@dataclass(frozen=True)
class ProbeOutcome:
    """What the layer search needs of one probe: whether the rules hold, its mismatches, and
    its cost (e.g. its size: breaks ties)."""

    passes: bool
    mismatches: float
    cost: float = 0.0


@dataclass
class FloatSearch:
    """What `search_float_layers` found: each round's trials (layer -> the probe with that layer
    also in float) and the layer it kept in float, and the answer: the layers kept in float
    (None: the rules fail even with every layer in float)."""

    layers: list[str]
    start: ProbeOutcome
    rounds: list[dict[str, Any]]
    chosen: tuple[str, ...] | None

    @property
    def probes(self) -> int:
        return 1 + sum(len(step["trials"]) for step in self.rounds)


def search_float_layers(
    layers: Sequence[str],
    evaluate: Callable[[tuple[str, ...]], ProbeOutcome],
) -> FloatSearch:
    """Keep layers in float, one at a time, until the rules hold (module docstring).
    `evaluate(float_layers)` probes the model with those layers (in `layers`' order) in float.
    Each round keeps the layer whose trial meets the rules, if any does (so no layer more than
    needed stays float), else the one that recovers the most mismatches; ties go to the
    cheaper trial, then to the layer that comes first in `layers`."""
    order = list(dict.fromkeys(layers))
    kept: tuple[str, ...] = ()
    current = evaluate(kept)
    start = current
    rounds: list[dict[str, Any]] = []
    while not current.passes:
        remaining = [layer for layer in order if layer not in kept]
        if not remaining:
            return FloatSearch(order, start, rounds, None)
        trials = {
            layer: evaluate(tuple(name for name in order if name in {*kept, layer}))
            for layer in remaining
        }
        recovered = {
            layer: current.mismatches - trial.mismatches for layer, trial in trials.items()
        }
        best = max(
            remaining,
            key=lambda layer: (
                trials[layer].passes,
                recovered[layer],
                -trials[layer].cost,
                -remaining.index(layer),
            ),
        )
        kept = tuple(name for name in order if name in {*kept, best})
        rounds.append({"kept": kept, "layer": best, "trials": trials, "recovered": recovered})
        current = trials[best]
    return FloatSearch(order, start, rounds, kept)


# --------------------------------------------------------------------------------------------
# What a search may be asked


FLOAT_SEARCH = "quantize_static"  # the compressor without levels searched by its float layers
# the costs a probe also has as `<cost>_ratio` to the reference's: `compalign audit`'s, and the
# gzip size, the one size unstructured sparsity changes
RATIO_COSTS = (
    "params_nonzero",
    "macs",
    "size_bytes",
    "size_gzip_bytes",
    "latency_ms_b1",
    "latency_ms_b64",
)


def check_request(params: Any, method: str, loss: str, rules: Sequence[str]) -> list[Rule]:
    """The parsed rules of `compalign search --method METHOD --loss LOSS --fail-on RULE...`;
    UserError (one line) for a compressor that cannot be searched, an unknown loss, a rule that
    does not parse or names no metric a probe has. Nothing is loaded or written."""
    from compalign.compressors import COMPRESSORS
    from compalign.gate import parse_rule
    from compalign.losses import LOSSES
    from compalign.losses.base import NO_FINE_TUNING

    if method not in COMPRESSORS:
        raise UserError(
            f"--method {method!r}: unknown compressor; choose one of {', '.join(COMPRESSORS)}"
        )
    if not COMPRESSORS[method].uses_level and method != FLOAT_SEARCH:
        with_levels = [name for name, entry in COMPRESSORS.items() if entry.uses_level]
        raise UserError(
            f"--method {method}: has no levels to search; choose a compressor with levels "
            f"({', '.join(with_levels)}) or {FLOAT_SEARCH} (searched by the layers kept in float)"
        )
    if loss not in (NO_FINE_TUNING, *LOSSES):
        raise UserError(
            f"--loss {loss!r}: unknown loss; choose one of {NO_FINE_TUNING}, {', '.join(LOSSES)}"
        )
    quantized = COMPRESSORS[method].family.quantized
    if quantized and loss != NO_FINE_TUNING and not params.align.quantization_aware:
        raise UserError(
            f"--loss {loss} with {method}: a quantized model is fine-tuned only quantization-"
            "aware; add --set align.quantization_aware=true, or search with --loss none"
        )
    if not rules:
        raise UserError("--fail-on: give at least one rule, e.g. mismatches_ci_high<=10")
    parsed = [parse_rule(text) for text in rules]
    check_rule_metrics(parsed, rule_metric_names(None, None, params.audit))
    return parsed


# --------------------------------------------------------------------------------------------
# Metric names a rule may use


CLASS_TOKEN = "\u27e8class{}\u27e9"  # ⟨class0⟩: stands for any class name
GROUP_TOKEN = "\u27e8group{}\u27e9"  # ⟨group0⟩: stands for any group column or value


def audit_metric_names(
    class_names: Sequence[str] | None, group_columns: Sequence[str] | None, options: Any
) -> set[str]:
    """The metric names the audit of a compressed model against its reference has, found by
    running every registered metric (compalign.audit) on a small synthetic comparison with these
    class names and group columns (None: placeholders, which match any class or column; group
    values are always placeholders). Attribution metrics are included when `options` turn them
    on."""
    import numpy as np
    import pandas as pd
    import torch

    from compalign.audit import AuditInputs, ReferenceAudit, audit, predictions_frame
    from compalign.audit.metrics.attribution import MAPS_FILE

    if group_columns is None:
        group_columns = options.groups or [GROUP_TOKEN.format("c")]
    names: set[str] = set()
    counts = [len(class_names)] if class_names is not None else [2, 3]
    for count in counts:
        classes = (
            list(class_names) if class_names else [CLASS_TOKEN.format(i) for i in range(count)]
        )
        examples = 4 * count
        labels = torch.arange(examples) % count
        generator = torch.Generator().manual_seed(0)
        values = np.array([GROUP_TOKEN.format(i) for i in range(2)])
        groups = pd.DataFrame(
            {column: values[np.arange(examples) % 2] for column in group_columns},
            index=range(examples),
        )
        images = torch.randint(0, 256, (examples, 1, 4, 4), generator=generator, dtype=torch.uint8)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, count))
        settings = options.model_copy(
            update={
                "bootstrap_samples": 100,
                "attribution_samples": min(options.attribution_samples, 2),
                "integrated_gradients_steps": 2,
                "figure_examples": 0,
            }
        )
        frames = []
        for _ in range(2):  # the reference, then a model that disagrees with it somewhere
            logits = torch.randn(examples, count, generator=generator)
            frames.append(predictions_frame([str(i) for i in range(examples)], labels, logits))
        common = {
            "class_names": classes,
            "groups": groups,
            "options": settings,
            "model": model,
            "images": images,
            "normalise": lambda batch: batch.float() / 255.0,
        }
        reference = audit(AuditInputs(frame=frames[0], **common))
        compared = audit(
            AuditInputs(
                frame=frames[1],
                reference=ReferenceAudit(
                    frames[0], reference.metrics, reference.outputs.get(MAPS_FILE)
                ),
                **common,
            )
        )
        names |= set(compared.metrics)
    return names


def rule_metric_names(
    class_names: Sequence[str] | None, group_columns: Sequence[str] | None, options: Any
) -> set[str]:
    """Every metric name a probe of `compalign search` has: its audit's (audit_metric_names),
    its costs and their ratio to the reference's, and its measured weight sparsity."""
    from compalign.compressors import LEVEL_KINDS
    from compalign.costs import COST_METRICS

    names = audit_metric_names(class_names, group_columns, options)
    names |= set(COST_METRICS) | {f"{name}_ratio" for name in RATIO_COSTS}
    return names | {"weight_sparsity", *LEVEL_KINDS}


def _pattern(name: str) -> re.Pattern[str]:
    """A metric name with placeholder tokens as a pattern in which each token matches any
    name part."""
    parts = re.split("(\u27e8(?:class|group)\\w+\u27e9)", name)
    return re.compile(
        "".join("[^.]+" if part.startswith("\u27e8") else re.escape(part) for part in parts)
    )


def check_rule_metrics(rules: Sequence[Rule], names: set[str]) -> None:
    """UserError for the first rule on a metric `names` does not have (placeholders in `names`
    match any class or group), naming the closest known names."""
    import difflib

    patterns = [_pattern(name) for name in names if "\u27e8" in name]
    for rule in rules:
        if rule.metric in names or any(p.fullmatch(rule.metric) for p in patterns):
            continue
        shown = sorted(name for name in names if "\u27e8" not in name)
        close = difflib.get_close_matches(rule.metric, shown, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"--fail-on {rule}: unknown metric {rule.metric!r}{hint}")
