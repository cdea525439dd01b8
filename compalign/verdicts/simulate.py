"""Synthetic results in the shape `compalign reproduce` produces, with and without an effect, to
check the verdict rules: how often a rule says "held" when nothing happened (its false-positive
rate, which must stay at or below 5%) and when the paper's effect is there (its power).

Each paper has a design (sample sizes and baseline rates: the cpu profile's by default, or read
off a run's own evidence by `design_of`) and a generator that draws one run's evidence from it:
- Joseph: each example has a fragility shared by every seed and loss (some examples flip
  easily); a seed scales every model's flip rate at a compression (its reference and pruned start
  are shared), each fine-tuning run adds its own noise; label_preserving's rate is ce's / R.
- Meyer: logits with the true class's margin set per group and model; ce loses margin in the
  rare group as pruning deepens, pw loses a fraction of that (1 under no effect).
- Hooker: each example has a chance that a member gets it right and a class it is confused
  with; pruned members lose that chance on a few fragile examples and on one class, more with
  sparsity (not at all under no effect); quantized members are dense members with rare flips.
`power(paper, design, draws)` runs a paper's rules on draws with its effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

import compalign.verdicts.rules as verdict_rules
from compalign.verdicts.evidence import Outcomes, PopulationEvidence, SeedRunsEvidence

# --------------------------------------------------------------------------------------------
# Joseph et al.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JosephDesign:
    """Sample sizes and baseline rates of a Joseph run (defaults: the cpu profile on the digits:
    450 test images, 3 seeds, ce's mean mismatches per cell and their spread over seeds as
    measured in the README's 3-seed run)."""

    examples: int = 450
    classes: int = 10
    seeds: int = 3
    reference_accuracy: float = 0.99
    # ce's mean mismatches at each (compressor, level)
    ce_mismatches: dict[tuple[str, float], float] = field(
        default_factory=lambda: {
            ("magnitude_global", 0.9): 1.0,
            ("magnitude_global", 0.95): 3.0,
            ("magnitude_global", 0.97): 8.0,
            ("magnitude_global", 0.98): 18.0,
            ("magnitude_layerwise", 0.9): 2.0,
            ("magnitude_layerwise", 0.95): 5.0,
            ("magnitude_layerwise", 0.97): 12.0,
            ("magnitude_layerwise", 0.98): 25.0,
        }
    )
    seed_cv: float = 0.4  # between-seed coefficient of variation of a cell's mismatch count
    run_cv: float = 0.2  # a fine-tuning run's own noise on top of its seed's
    shared_seed: bool = True  # ce and label_preserving of one seed share its scale
    attribution_examples: int = 64
    attribution_mean: float = 0.45
    attribution_sd: float = 0.15


def _lognormal(rng: np.random.Generator, cv: float, size=None) -> np.ndarray:
    sigma = math.sqrt(math.log1p(cv**2))
    return rng.lognormal(-(sigma**2) / 2, sigma, size)


def _flip(
    rng: np.random.Generator, predictions: np.ndarray, classes: int, mask: np.ndarray
) -> np.ndarray:
    """`predictions` with the masked examples moved to another class at random."""
    moved = predictions.copy()
    shift = rng.integers(1, classes, size=predictions.shape)
    moved[mask] = (predictions[mask] + shift[mask]) % classes
    return moved


def joseph_draw(
    design: JosephDesign,
    rng: np.random.Generator,
    reduction: float = 1.0,
    attribution_shift: float = 0.0,
) -> SeedRunsEvidence:
    """One run's evidence: ce and label_preserving at every cell, label_preserving flipping
    `reduction` times less (1: no effect), its attribution agreement `attribution_shift` higher."""
    n, c, seeds = design.examples, design.classes, design.seeds
    labels = rng.integers(0, c, n)
    fragility = rng.gamma(0.5, 2.0, n)  # mean 1: a few examples flip often
    hard = np.clip((1 - design.reference_accuracy) * fragility, 0, 1)
    reference = np.stack([_flip(rng, labels, c, rng.random(n) < hard) for _ in range(seeds)])
    sample = rng.choice(n, size=min(design.attribution_examples, n), replace=False)
    base = rng.normal(design.attribution_mean, design.attribution_sd, sample.size)
    models = {}
    for cell, mean in design.ce_mismatches.items():
        scale = _lognormal(rng, design.seed_cv, seeds)
        per_loss = {}
        for loss, factor, shift in (
            ("ce", 1.0, 0.0),
            ("label_preserving", 1.0 / reduction, attribution_shift),
        ):
            own = scale if design.shared_seed else _lognormal(rng, design.seed_cv, seeds)
            run = own * _lognormal(rng, design.run_cv, seeds)
            rate = np.clip(mean / n * fragility[None, :] * run[:, None] * factor, 0, 1)
            flips = rng.random((seeds, n)) < rate
            predictions = np.stack([_flip(rng, reference[s], c, flips[s]) for s in range(seeds)])
            attribution = None
            if design.attribution_examples:
                attribution = np.full((seeds, n), np.nan)
                noise = rng.normal(0, design.attribution_sd / 2, (seeds, sample.size))
                attribution[:, sample] = np.clip(base[None, :] + shift + noise, -1, 1)
            per_loss[loss] = Outcomes(predictions, attribution=attribution)
        for loss, outcomes in per_loss.items():
            models[(*cell, loss)] = outcomes
    return SeedRunsEvidence(labels, c, list(range(seeds)), Outcomes(reference), models)


# --------------------------------------------------------------------------------------------
# Meyer & Wong
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeyerDesign:
    """A Meyer run: the rare group is `rare_classes` (kept at 20% in training, full in the test
    split), margins give the reference's accuracy, ce loses `ce_rare_loss[level]` of the rare
    group's margin (and a tenth of that in the common group)."""

    examples: int = 450
    classes: int = 10
    seeds: int = 3
    rare_classes: tuple[int, ...] = (3, 8)
    reference_margin: float = 4.0  # the true class's logit lead: ~0.98 accuracy
    ce_rare_loss: dict[float, float] = field(
        default_factory=lambda: {0.25: 0.3, 0.5: 0.8, 0.75: 2.5}
    )
    seed_sd: float = 0.3  # a seed's shift of a model's margin
    run_sd: float = 0.15


MEYER_POINT_SHIFT = -0.19  # pw's margin shift that costs one point of accuracy (a little more) when
# pruning costs no margin (checked in tests/test_verdict_calibration.py): the non-inferiority null


def meyer_draw(
    design: MeyerDesign,
    rng: np.random.Generator,
    pw_share: float = 1.0,
    pw_accuracy_shift: float = 0.0,
    probabilities: bool = True,
) -> SeedRunsEvidence:
    """One Meyer run: pw loses `pw_share` of ce's margin loss (1: no effect), and its margin is
    moved by `pw_accuracy_shift` everywhere (to put its accuracy below ce's); `probabilities`:
    also the softmax (for the AUROC rules)."""
    n, c, seeds = design.examples, design.classes, design.seeds
    with_probabilities = probabilities
    labels = rng.integers(0, c, n)
    rare = np.isin(labels, design.rare_classes)
    difficulty = rng.normal(0, 1.0, n)  # shared: hard examples are hard for every model
    competitors = rng.normal(0, 1.0, (n, c))  # the other classes' logits, shared too

    def model(margin_loss: np.ndarray, shift: np.ndarray) -> Outcomes:
        predictions, probabilities = [], []
        for s in range(seeds):
            logits = competitors + rng.normal(0, 0.3, (n, c))
            margin = design.reference_margin + difficulty - margin_loss + shift[s]
            margin = margin + rng.normal(0, 0.3, n)
            logits[np.arange(n), labels] = margin
            if with_probabilities:  # float32, as the audits store them
                exp = np.exp((logits - logits.max(axis=1, keepdims=True)).astype(np.float32))
                probabilities.append(exp / exp.sum(axis=1, keepdims=True))
            predictions.append(logits.argmax(axis=1))
        return Outcomes(
            np.stack(predictions),
            probabilities=np.stack(probabilities) if with_probabilities else None,
        )

    reference = model(np.zeros(n), rng.normal(0, design.seed_sd, seeds))
    models = {}
    for level, loss in design.ce_rare_loss.items():
        seed_shift = rng.normal(0, design.seed_sd, seeds)
        for name, share, extra in (("ce", 1.0, 0.0), ("pw", pw_share, pw_accuracy_shift)):
            margin_loss = loss * share * np.where(rare, 1.0, 0.1)
            shift = seed_shift + rng.normal(0, design.run_sd, seeds) + extra
            models[("taylor_iterative", level, name)] = model(margin_loss, shift)
    return SeedRunsEvidence(
        labels, c, list(range(seeds)), reference, models, groups=rare.astype(int), group_name="rare"
    )


# --------------------------------------------------------------------------------------------
# Hooker et al.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HookerDesign:
    """Populations of `members` on `examples` test images: the cpu profile's (8 members, 450
    images, 30/50/70/90% sparsity, three quantizers)."""

    examples: int = 450
    classes: int = 10
    members: int = 8
    levels: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)
    dense_accuracy: float = 0.985
    fragile_share: float = 0.04  # examples pruning can flip (effect)
    quantizers: tuple[str, ...] = ("quantize_dynamic", "quantize_static", "half")
    paired_levels: bool = False


def _members(
    rng: np.random.Generator,
    labels: np.ndarray,
    confused: np.ndarray,
    right: np.ndarray,
    members: int,
    classes: int,
) -> np.ndarray:
    """[K, N] members that get example i right with chance right[i], else mostly its confused
    class."""
    n = labels.shape[0]
    correct = rng.random((members, n)) < right[None, :]
    wrong = np.where(
        rng.random((members, n)) < 0.7, confused[None, :], rng.integers(0, classes, (members, n))
    )
    return np.where(correct, labels[None, :], wrong)


def hooker_draw(
    design: HookerDesign,
    rng: np.random.Generator,
    effect: bool,
    quantization_effect: bool | None = None,
) -> PopulationEvidence:
    """One populations run. `effect`: pruning flips fragile examples and one class, growing with
    sparsity; `quantization_effect` (default: `effect`): quantized members are dense-like (True)
    or drawn like the highest sparsity's pruned members (False: quantization harms as much)."""
    quantization_effect = effect if quantization_effect is None else quantization_effect
    n, c, k = design.examples, design.classes, design.members
    labels = rng.integers(0, c, n)
    confused = (labels + rng.integers(1, c, n)) % c
    right = 1 - rng.beta(0.3, 0.3 * design.dense_accuracy / (1 - design.dense_accuracy), n)
    fragile = rng.random(n) < design.fragile_share
    hit_class = labels == 0

    def level_right(level: float) -> np.ndarray:
        if not effect:
            return right
        loss = 0.9 * level**2 * fragile + 0.15 * level**2 * hit_class
        return np.clip(right - loss, 0, 1)

    dense = _members(rng, labels, confused, right, k, c)
    floor = _members(rng, labels, confused, right, k, c)
    pruned = {
        level: _members(rng, labels, confused, level_right(level), k, c) for level in design.levels
    }
    quantized, paired = {}, {}
    for name in design.quantizers:
        if quantization_effect:
            second = _members(rng, labels, confused, right, k, c)
            quantized[name] = _flip(rng, second, c, rng.random(second.shape) < 0.001)
        else:
            quantized[name] = _members(rng, labels, confused, level_right(design.levels[-1]), k, c)
        paired[name] = _flip(rng, dense, c, rng.random(dense.shape) < 0.001)
    return PopulationEvidence(
        labels,
        [str(i) for i in range(c)],
        dense,
        floor,
        pruned,
        quantized,
        paired,
        paired_levels=design.paired_levels,
    )


# --------------------------------------------------------------------------------------------
# Rates over draws
# --------------------------------------------------------------------------------------------


def positive_rates(
    paper: str, design, draws: int, effect: bool, seed: int = 0, permutations: int = 200
) -> dict[str, float]:
    """The share of `draws` in which each of the paper's rules says "held", with the paper's
    effect or with none."""
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    for _ in range(draws):
        verdicts = _judge(paper, design, rng, effect, permutations)
        for verdict in verdicts:
            counts[verdict.rule.key] = counts.get(verdict.rule.key, 0) + int(verdict.held)
    return {key: value / draws for key, value in counts.items()}


def _judge(paper: str, design, rng: np.random.Generator, effect: bool, permutations: int):
    if paper == "joseph":
        size = verdict_rules.JOSEPH_SIZE["all"]
        evidence = joseph_draw(design, rng, size if effect else 1.0, 0.05 if effect else 0.0)
        return verdict_rules.judge_joseph(evidence, describe=False)
    if paper == "meyer":
        evidence = meyer_draw(design, rng, 0.5 if effect else 1.0)
        verdicts = verdict_rules.judge_meyer(evidence)
        if not effect:
            # two rules have nulls of their own, drawn together: the premise's (ce's gap as the
            # reference's: no margin lost to pruning) and "without costing accuracy"'s (pw one
            # point below ce, the non-inferiority margin, by lowering pw's margin everywhere)
            flat = replace(design, ce_rare_loss={k: 0.0 for k in design.ce_rare_loss})
            boundary = meyer_draw(flat, rng, 1.0, MEYER_POINT_SHIFT, probabilities=False)
            own = {
                "meyer.accuracy": lambda: verdict_rules.meyer_accuracy(boundary),
                "meyer.premise": lambda: verdict_rules.meyer_premise(boundary),
            }
            verdicts = [own[v.rule.key]() if v.rule.key in own else v for v in verdicts]
        return verdicts
    if paper == "hooker":
        evidence = hooker_draw(design, rng, effect)
        return verdict_rules.judge_hooker(evidence, permutations=permutations)
    raise ValueError(f"unknown paper {paper!r}")


def power(
    paper: str, design, draws: int = 200, seed: int = 0, permutations: int = 200
) -> dict[str, float]:
    """Each rule's power: the share of draws with the paper's effect in which it says "held"."""
    return positive_rates(paper, design, draws, True, seed, permutations)


# --------------------------------------------------------------------------------------------
# A run's own design
# --------------------------------------------------------------------------------------------


def joseph_design(evidence: SeedRunsEvidence) -> JosephDesign:
    """The design of a Joseph run: its test size, seeds, reference accuracy, ce's mean
    mismatches per cell and their spread over seeds, its attribution sample."""
    reference = evidence.reference.predictions
    accuracy = float((reference == evidence.labels[None, :]).mean())
    means, spreads = {}, []
    for cell in evidence.cells("ce"):
        flips = (evidence.model(cell, "ce").predictions != reference).sum(axis=1)
        means[cell] = float(max(flips.mean(), 0.5))
        if len(flips) > 1 and flips.mean() > 0:
            spreads.append(float(np.std(flips, ddof=1) / flips.mean()))
    attribution = evidence.model(evidence.cells("ce")[0], "ce").attribution if means else None
    sample = int(np.isfinite(attribution[0]).sum()) if attribution is not None else 0
    values = attribution[np.isfinite(attribution)] if attribution is not None else np.array([])
    return replace(
        JosephDesign(),
        examples=evidence.examples,
        classes=evidence.classes,
        seeds=len(evidence.seeds),
        reference_accuracy=min(max(accuracy, 0.5), 0.9999),
        ce_mismatches=means,
        seed_cv=float(np.clip(np.mean(spreads), 0.1, 1.5)) if spreads else 0.4,
        attribution_examples=sample,
        attribution_mean=float(values.mean()) if values.size else 0.45,
        attribution_sd=float(values.std()) if values.size > 1 else 0.15,
    )


def meyer_design(evidence: SeedRunsEvidence) -> MeyerDesign:
    """The design of a Meyer run: its test size, seeds, rare classes and levels (margins as the
    cpu profile's: the run's own accuracies move them little)."""
    rare = (
        sorted(set(evidence.labels[evidence.groups == 1].tolist()))
        if evidence.groups is not None
        else []
    )
    levels = [level for _, level in evidence.cells("ce")]
    defaults = MeyerDesign().ce_rare_loss
    return replace(
        MeyerDesign(),
        examples=evidence.examples,
        classes=evidence.classes,
        seeds=len(evidence.seeds),
        rare_classes=tuple(rare) or MeyerDesign().rare_classes,
        ce_rare_loss={level: defaults.get(level, 2.5 * level**2 / 0.5625) for level in levels}
        or defaults,
    )


def hooker_design(evidence: PopulationEvidence) -> HookerDesign:
    """The design of a populations run: test size, members, levels, dense accuracy, quantizers."""
    return replace(
        HookerDesign(),
        examples=int(evidence.labels.shape[0]),
        classes=len(evidence.class_names),
        members=evidence.members,
        levels=tuple(evidence.levels),
        dense_accuracy=float(
            np.clip((evidence.dense == evidence.labels[None, :]).mean(), 0.5, 0.999)
        ),
        quantizers=tuple(sorted(evidence.quantized)) or HookerDesign().quantizers,
        paired_levels=evidence.paired_levels,
    )


DESIGNS = {"joseph": joseph_design, "meyer": meyer_design, "hooker": hooker_design}


def design_of(paper: str, evidence):
    return DESIGNS[paper](evidence)


def describe(paper: str, design) -> str:
    """The design in words, for "not powered ... with <this>"."""
    if paper == "hooker":
        return f"{design.members} members per population and {design.examples} test images"
    return f"{design.examples} test images and {design.seeds} seeds"
