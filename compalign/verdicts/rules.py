"""The verdict rules of `compalign reproduce`, written once: for each headline finding of each
paper, the measure, the null and the alternative, the test, the correction over the cells the
claim covers, and the size the paper claims where it claims one. Reports render RULES beside
the verdicts, so a reader sees the rule before the result.

Every rule is calibrated: compalign.verdicts.simulate draws results with no effect and with the
paper's effect at our sample sizes, and tests/test_verdict_calibration.py checks that no rule
says "held" in more than 5% of the no-effect draws and prints each rule's power. A rule whose
power at the run's own size is below 80% says so instead of "did not hold" (POWER_NEEDED).

Statuses: "held" (the claim's test rejects its null after correction), "did not hold" (it does
not: with enough power, or where the data point the other way), "not judged" (fewer than 2
seeds, no data for the measure, not powered, or a size claim whose direction did not hold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import compalign.verdicts.measures as measures
import compalign.verdicts.populations as pop
from compalign.verdicts.estimate import (
    MIN_SEEDS,
    Estimate,
    Ratio,
    SeedEvidence,
    holm,
    holm_adjusted,
)
from compalign.verdicts.evidence import Cell, PopulationEvidence, SeedRunsEvidence

ALPHA = 0.05
POWER_NEEDED = 0.80
JOSEPH_SIZE = {"all": 4.1, "ref_correct": 5.7}  # the paper's "up to" reduction factors
ACCURACY_MARGIN = 0.01  # Meyer: "without costing accuracy" = pw not more than 1 point below ce
PERMUTATIONS = 1000  # Hooker: permutations of members per test (p resolution 1/1001)

HELD, NOT_HELD, NOT_JUDGED = "held", "did not hold", "not judged"
# a size claim's own words: "reached" says the data are consistent with the paper's figure (its
# interval reaches it), not that the figure was shown; "not reached", that it is excluded
REACHED, NOT_REACHED = "size reached", "size not reached"


@dataclass(frozen=True)
class Rule:
    """One finding's rule: what is measured, tested and corrected, and the size claimed."""

    key: str
    paper: str
    finding: str
    measure: str
    null: str
    alternative: str
    test: str
    correction: str
    paper_size: str
    power_effect: str  # the effect the power check simulates


def _joseph_reduction(key: str, where: str, size: float) -> tuple[Rule, Rule]:
    subset = " where the reference is right" if where else ""
    measure = (
        f"reduction factor R = (ce mismatches{subset}, summed over seeds) / (label_preserving "
        f"mismatches{subset}, summed over seeds), per compressor and level"
    )
    test = (
        "one-sided t-test of the paired contrast ce - k label_preserving (per seed and test "
        "example; seed spread + test resampling, Welch-Satterthwaite df)"
    )
    return (
        Rule(
            f"joseph.{key}.direction",
            "joseph",
            f"Label-preserving alignment reduces mismatches{subset} (direction)",
            measure,
            "R <= 1 at every cell",
            "R > 1 at some cell",
            test + " at k = 1",
            "Holm over every (compressor, level) cell of the run",
            f"up to {size:g}x",
            f"R = {size:g} at every cell, ce's mismatches and their seed spread as observed",
        ),
        Rule(
            f"joseph.{key}.size",
            "joseph",
            f"…by as much as the paper (up to {size:g}x{subset})",
            measure,
            "(judged only where the direction held)",
            f"R reaches {size:g}: some cell's simultaneous interval reaches {size:g} (shown where "
            f"it lies above); not reached where every cell's lies below",
            "Fieller interval of R (every k the contrast's two-sided test keeps)",
            "Bonferroni-simultaneous intervals over every cell (level 1 - 0.05/cells), so the "
            "best cell may be picked",
            f"{size:g}x",
            f"R = {size:g} at every cell",
        ),
    )


RULES: list[Rule] = [
    *_joseph_reduction("mismatches", "", JOSEPH_SIZE["all"]),
    *_joseph_reduction("mismatches_ref_correct", "ref", JOSEPH_SIZE["ref_correct"]),
    Rule(
        "joseph.fairness",
        "joseph",
        "Alignment also improves fairness across classes",
        "worst class's recall change against the reference, label_preserving - ce",
        "difference <= 0 at every cell",
        "difference > 0 at some cell",
        "one-sided t-test of the paired difference (seed spread + test resampling)",
        "Holm over every (compressor, level) cell",
        "none given",
        "label_preserving's mismatches 1/4.1 of ce's at every cell",
    ),
    Rule(
        "joseph.attributions",
        "joseph",
        "Alignment improves agreement of attributions",
        "mean integrated-gradients Spearman correlation with the reference over the fixed "
        "attribution sample, label_preserving - ce",
        "difference <= 0 at every cell",
        "difference > 0 at some cell",
        "one-sided t-test of the paired difference (seed spread + resampling of the sample)",
        "Holm over every (compressor, level) cell",
        "none given",
        "+0.05 mean correlation (ours: the paper gives no figure)",
    ),
    Rule(
        "meyer.gap",
        "meyer",
        "The performance-weighted loss limits the accuracy gap pruning adds between groups",
        "accuracy gap between the groups (largest - smallest group accuracy), pw - ce",
        "difference >= 0 at every level",
        "difference < 0 at some level",
        "one-sided t-test of the paired difference (seed spread + test resampling)",
        "Holm over the pruning levels",
        "none given (plots)",
        "pw losing half the rare group's margin that ce loses (ours: the paper gives plots, not a figure)",
    ),
    Rule(
        "meyer.premise",
        "meyer",
        "Pruning with plain cross-entropy widens the gap (the premise)",
        "accuracy gap between the groups, ce - reference",
        "gap change <= 0 at every level",
        "gap change > 0 at some level",
        "one-sided t-test of the paired difference (seed spread + test resampling)",
        "Holm over the pruning levels",
        "none given (plots)",
        "ce losing rare-group margin as pruning deepens (ours: 0.3, 0.8, 2.5 logits at the cpu levels)",
    ),
    Rule(
        "meyer.accuracy",
        "meyer",
        "…without costing overall accuracy",
        "top-1 accuracy, pw - ce",
        f"pw more than {ACCURACY_MARGIN:g} below ce at some level",
        f"pw within {ACCURACY_MARGIN:g} of ce or better at every level (non-inferiority)",
        f"one-sided t-test of pw - ce > -{ACCURACY_MARGIN:g} at each level",
        "none needed: every level must pass (intersection-union test)",
        "none given",
        "pw exactly as accurate as ce",
    ),
    Rule(
        "meyer.auroc_gap",
        "meyer",
        "pw limits the AUROC gap between groups (the authors' measure)",
        "largest - smallest group AUROC (one-vs-rest, macro over the classes present), pw - ce",
        "difference >= 0 at every level",
        "difference < 0 at some level",
        "one-sided t-test of the paired difference (DeLong influence + seed spread)",
        "Holm over the pruning levels",
        "none given (plots)",
        "pw losing half the rare group's margin that ce loses (ours)",
    ),
    Rule(
        "meyer.class_auroc",
        "meyer",
        "pw protects the worst class's AUROC (the authors' per-class measure)",
        "worst class's one-vs-rest AUROC change against the reference, pw - ce",
        "difference <= 0 at every level",
        "difference > 0 at some level",
        "one-sided t-test of the paired difference (DeLong influence + seed spread)",
        "Holm over the pruning levels",
        "none given (plots)",
        "pw losing half the rare group's margin that ce loses (ours)",
    ),
    Rule(
        "hooker.pies",
        "hooker",
        "PIEs grow with sparsity, beyond training noise",
        "PIE count (compressed population's modal label != the dense population's) at each "
        "level, with a second dense population at sparsity 0 (the noise floor)",
        "compressed members exchangeable with dense ones (no effect of pruning)",
        "PIE counts rise with sparsity",
        f"permutation test of the least-squares slope of the counts on sparsity ({PERMUTATIONS} "
        "reassignments of members, member k as a block)",
        "one test",
        "none given (ImageNet: 0.6% of images at 90%)",
        "pruning flipping a fragile 4% of examples and one class, with sparsity squared (ours)",
    ),
    Rule(
        "hooker.classes",
        "hooker",
        "More classes are disparately impacted at higher sparsity",
        "classes with Welch p <= 0.05 (the authors' raw-p rule) at each level, the noise floor "
        "at sparsity 0; Benjamini-Hochberg counts shown beside",
        "compressed members exchangeable with dense ones",
        "the count rises with sparsity",
        f"permutation test of the least-squares slope of the counts ({PERMUTATIONS} reassignments)",
        "one test (the raw-p count is the statistic; the permutation controls the error)",
        "none given",
        "pruning flipping a fragile 4% of examples and one class, with sparsity squared (ours)",
    ),
    Rule(
        "hooker.quantization",
        "hooker",
        "Quantization harms fewer examples than high sparsity",
        "PIE count of each quantized population minus the highest sparsity's, both made from "
        "independently trained members (the quantizer applied to the second dense population)",
        "quantized and pruned members exchangeable",
        "fewer PIEs with quantization",
        f"permutation test per quantizer ({PERMUTATIONS} reassignments)",
        "none needed: every quantizer must pass (intersection-union test)",
        "none given",
        "quantized members as dense ones, pruned ones flipping a fragile 4% of examples (ours)",
    ),
]
RULE_BY_KEY = {rule.key: rule for rule in RULES}


@dataclass
class CellResult:
    """One cell of a claim: its estimate, interval, p-value and the corrected decision."""

    cell: str
    estimate: float
    low: float
    high: float
    p: float
    p_adjusted: float = math.nan
    rejected: bool = False
    note: str = ""


@dataclass
class Verdict:
    """A rule applied: its status, the evidence in words, each cell's numbers, and (set by the
    report) the power the rule had at this run's size."""

    rule: Rule
    status: str
    detail: str
    cells: list[CellResult] = field(default_factory=list)
    power: float | None = None

    @property
    def held(self) -> bool:
        """Whether the rule found its claim (held, or for a size claim reached)."""
        return self.status in (HELD, REACHED)

    def with_power(self, power: float | None, design: str) -> Verdict:
        """This verdict once the rule's power at the run's size is known: a rule that did not
        reject with less than POWER_NEEDED power is "not judged (not powered ...)", never
        "did not hold"; a rule that rejected keeps "held" (its error rate is what it is)."""
        self.power = power
        if power is None or self.status not in (NOT_HELD, NOT_REACHED) or power >= POWER_NEEDED:
            return self
        self.status = NOT_JUDGED
        self.detail = (
            f"not powered: {power:.0%} power to detect {self.rule.power_effect} with {design}; "
            + self.detail
        )
        return self

    def sentence(self) -> str:
        power = ""
        if self.power is not None and not self.detail.startswith("not powered"):
            power = f"; power at this size: {self.power:.0%} against {self.rule.power_effect}"
        return f"{self.rule.finding}: **{self.status}** ({self.detail}{power})"


def number(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return "∞" if math.isinf(value) else f"{value:.{digits}f}"


def cell_name(cell: Cell) -> str:
    return f"{cell[0]} {cell[1]:g}"


def _seed_note(seeds: int) -> str | None:
    if seeds < MIN_SEEDS:
        return f"needs >= {MIN_SEEDS} training seeds, the run has {seeds}"
    return None


# --------------------------------------------------------------------------------------------
# Joseph et al.
# --------------------------------------------------------------------------------------------


def mismatch_counts(
    evidence: SeedRunsEvidence, cell: Cell, loss: str, ref_right: bool
) -> SeedEvidence:
    """Each seed's mismatches of the model against its own seed's reference (where the
    reference is right: `ref_right`)."""
    reference = evidence.reference.predictions
    flips = evidence.model(cell, loss).predictions != reference
    if ref_right:
        flips &= reference == evidence.labels[None, :]
    return SeedEvidence(*measures.count(flips))


def joseph_reduction(
    evidence: SeedRunsEvidence, ref_right: bool, alpha: float = ALPHA, describe: bool = True
) -> tuple[Verdict, Verdict]:
    """(direction, size) verdicts of "label_preserving cuts mismatches (up to 4.1x / 5.7x)".
    The size is decided by the contrast's two-sided test at k = the paper's figure with the
    simultaneous level (the Fieller interval reaches k exactly when that test keeps k, or lies
    above it); `describe` also computes every cell's interval for the text."""
    key = "mismatches_ref_correct" if ref_right else "mismatches"
    direction_rule = RULE_BY_KEY[f"joseph.{key}.direction"]
    size_rule = RULE_BY_KEY[f"joseph.{key}.size"]
    size = JOSEPH_SIZE["ref_correct" if ref_right else "all"]
    cells = evidence.cells("ce", "label_preserving")
    reason = _seed_note(len(evidence.seeds)) or (
        "" if cells else "no cell has both ce and label_preserving"
    )
    if reason:
        return Verdict(direction_rule, NOT_JUDGED, reason), Verdict(size_rule, NOT_JUDGED, reason)
    ratios = [
        Ratio(
            mismatch_counts(evidence, cell, "ce", ref_right),
            mismatch_counts(evidence, cell, "label_preserving", ref_right),
        )
        for cell in cells
    ]
    p_values = np.array([ratio.p_greater(1.0) for ratio in ratios])
    rejected = holm(p_values, alpha)
    adjusted = holm_adjusted(p_values)
    simultaneous = 1 - alpha / len(cells)
    results, size_sides = [], []
    for cell, ratio, p, p_adj, reject in zip(
        cells, ratios, p_values, adjusted, rejected, strict=True
    ):
        low, high = ratio.interval(simultaneous) if describe else (math.nan, math.nan)
        results.append(
            CellResult(
                cell_name(cell), ratio.point, low, high, float(p), float(p_adj), bool(reject)
            )
        )
        at_size = ratio.contrast(size)
        keeps = at_size.keeps((1 - simultaneous) / 2)
        size_sides.append("reaches" if keeps else ("above" if at_size.point > 0 else "below"))
    reduced = [r for r in results if r.rejected]
    per_cell = "; ".join(
        f"{r.cell}: {number(r.estimate)}x [{number(r.low)}, {number(r.high)}], Holm p = "
        f"{number(r.p_adjusted, 3)}"
        for r in results
    )
    simultaneous_text = f"{simultaneous:.2%} simultaneous intervals"
    if reduced:
        detail = (
            f"fewer mismatches with label_preserving at {len(reduced)} of {len(results)} cells "
            f"after Holm's correction; {simultaneous_text}: {per_cell}"
        )
        direction = Verdict(direction_rule, HELD, detail, results)
    else:
        detail = f"reduced at no cell after Holm's correction; {simultaneous_text}: {per_cell}"
        direction = Verdict(direction_rule, NOT_HELD, detail, results)
    best = max(results, key=lambda r: r.estimate if math.isfinite(r.estimate) else -1)
    best_text = (
        f"largest reduction {number(best.estimate)}x [{number(best.low)}, {number(best.high)}] at "
        f"{best.cell} (a simultaneous interval, so valid though the cell is the best of "
        f"{len(results)})"
    )
    if not reduced:
        return direction, Verdict(size_rule, NOT_JUDGED, f"the direction did not hold; {best_text}")
    shown = [r for r, side in zip(results, size_sides, strict=True) if side == "above"]
    if shown:
        names = ", ".join(f"{r.cell} [{number(r.low)}, {number(r.high)}]" for r in shown)
        return direction, Verdict(
            size_rule,
            REACHED,
            f"shown: the simultaneous interval at {names} lies above {size:g}x; {best_text}",
        )
    if all(side == "below" for side in size_sides):
        highest = max(results, key=lambda r: r.high if math.isfinite(r.high) else -1)
        return direction, Verdict(
            size_rule,
            NOT_REACHED,
            f"every cell's simultaneous interval lies below {size:g}x (the highest "
            f"upper end: {number(highest.high)}x at {highest.cell}); {best_text}",
        )
    reaching = [r for r, side in zip(results, size_sides, strict=True) if side == "reaches"]
    names = ", ".join(f"{r.cell} [{number(r.low)}, {number(r.high)}]" for r in reaching)
    return direction, Verdict(
        size_rule,
        REACHED,
        f"consistent with the paper's figure, not shown: no cell's simultaneous interval "
        f"excludes {size:g}x at {names}; {best_text}",
    )


def _paired_cells(
    rule: Rule,
    cells: list[Cell],
    difference: dict[Cell, SeedEvidence],
    side: str,
    what: str,
    alpha: float,
    digits: int = 3,
) -> Verdict:
    """A claim over several cells judged on a paired difference per cell: one-sided tests
    (`side`: greater | less than 0), Holm over the cells, "held" where any cell rejects."""
    estimates: list[Estimate] = [difference[cell].estimate() for cell in cells]
    p_values = np.array(
        [e.p_greater(0.0) if side == "greater" else e.p_less(0.0) for e in estimates]
    )
    other = np.array([e.p_less(0.0) if side == "greater" else e.p_greater(0.0) for e in estimates])
    rejected, adjusted = holm(p_values, alpha), holm_adjusted(p_values)
    against = holm(other, alpha)
    results = []
    for cell, estimate, p, p_adj, reject, worse in zip(
        cells, estimates, p_values, adjusted, rejected, against, strict=True
    ):
        low, high = estimate.interval(1 - 2 * alpha)
        results.append(
            CellResult(
                cell_name(cell) if isinstance(cell, tuple) else f"{cell:g}",
                estimate.point,
                low,
                high,
                float(p),
                float(p_adj),
                bool(reject),
                "the other way (Holm)" if worse else "",
            )
        )
    per_cell = "; ".join(
        f"{r.cell}: {number(r.estimate, digits)} [{number(r.low, digits)}, "
        f"{number(r.high, digits)}], Holm p = {number(r.p_adjusted, 3)}"
        + (f", {r.note}" if r.note else "")
        for r in results
    )
    hits = sum(r.rejected for r in results)
    contrary = sum(bool(r.note) for r in results)
    summary = (
        f"{what} at {hits} of {len(results)} after Holm's correction"
        + (f", the other way at {contrary}" if contrary else "")
        + f"; 90% intervals: {per_cell}"
    )
    return Verdict(rule, HELD if hits else NOT_HELD, summary, results)


def joseph_fairness(evidence: SeedRunsEvidence, alpha: float = ALPHA) -> Verdict:
    """Worst class's recall change, label_preserving - ce, per cell (Holm)."""
    rule = RULE_BY_KEY["joseph.fairness"]
    cells = evidence.cells("ce", "label_preserving")
    reason = _seed_note(len(evidence.seeds)) or ("" if cells else "no cell has both losses")
    if reason:
        return Verdict(rule, NOT_JUDGED, reason)
    labels, classes = evidence.labels, evidence.classes
    reference = measures.class_recall_matrix(labels, evidence.reference.predictions, classes)

    def change(cell: Cell, loss: str) -> SeedEvidence:
        predictions = evidence.model(cell, loss).predictions
        model = measures.class_recall_matrix(labels, predictions, classes)
        return SeedEvidence(*measures.worst_class_change(model, reference))

    difference = {cell: change(cell, "label_preserving") - change(cell, "ce") for cell in cells}
    return _paired_cells(
        rule, cells, difference, "greater", "the worst class loses less recall", alpha
    )


def joseph_attributions(evidence: SeedRunsEvidence, alpha: float = ALPHA) -> Verdict:
    """Mean attribution agreement over the fixed sample, label_preserving - ce, per cell."""
    rule = RULE_BY_KEY["joseph.attributions"]
    cells = [
        cell
        for cell in evidence.cells("ce", "label_preserving")
        if evidence.model(cell, "ce").attribution is not None
        and evidence.model(cell, "label_preserving").attribution is not None
    ]
    reason = _seed_note(len(evidence.seeds)) or (
        "" if cells else "no cell has attribution agreement of both losses (attributions off)"
    )
    if reason:
        return Verdict(rule, NOT_JUDGED, reason)

    def agreement(cell: Cell, loss: str) -> SeedEvidence:
        return SeedEvidence(*measures.sample_mean(evidence.model(cell, loss).attribution))

    difference = {
        cell: agreement(cell, "label_preserving") - agreement(cell, "ce") for cell in cells
    }
    return _paired_cells(rule, cells, difference, "greater", "attributions agree better", alpha)


def judge_joseph(
    evidence: SeedRunsEvidence, alpha: float = ALPHA, describe: bool = True
) -> list[Verdict]:
    """Every Joseph et al. verdict, in RULES order (`describe`: every interval for the text)."""
    return [
        *joseph_reduction(evidence, ref_right=False, alpha=alpha, describe=describe),
        *joseph_reduction(evidence, ref_right=True, alpha=alpha, describe=describe),
        joseph_fairness(evidence, alpha),
        joseph_attributions(evidence, alpha),
    ]


def reference_floor(evidence: SeedRunsEvidence) -> list[dict[str, Any]]:
    """The noise floor of mismatches: the disagreements between the references of every pair of
    training seeds (two references trained alike from other seeds), all and where the first is
    right."""
    rows = []
    reference = evidence.reference.predictions
    for a in range(len(evidence.seeds)):
        for b in range(a + 1, len(evidence.seeds)):
            flips = reference[a] != reference[b]
            rows.append(
                {
                    "seeds": f"{evidence.seeds[a]} vs {evidence.seeds[b]}",
                    "mismatches": int(flips.sum()),
                    "mismatches_ref_correct": int(
                        (flips & (reference[a] == evidence.labels)).sum()
                    ),
                }
            )
    return rows


# --------------------------------------------------------------------------------------------
# Meyer & Wong
# --------------------------------------------------------------------------------------------


def _meyer_cells(evidence: SeedRunsEvidence) -> list[Cell]:
    return evidence.cells("ce", "pw")


def _meyer_reason(
    evidence: SeedRunsEvidence, cells: list[Cell], probabilities: bool = False
) -> str:
    reason = _seed_note(len(evidence.seeds))
    if reason:
        return reason
    if not cells:
        return "no level has both ce and pw"
    if evidence.groups is None:
        return "no group column (audit.groups)"
    if (
        probabilities
        and any(
            evidence.model(cell, loss).probabilities is None
            for cell in cells
            for loss in ("ce", "pw")
        )
        or (probabilities and evidence.reference.probabilities is None)
    ):
        return "no class probabilities in the audits"
    return ""


def _levels(cells: list[Cell]) -> list[float]:
    return [level for _, level in cells]


def meyer_gap(evidence: SeedRunsEvidence, alpha: float = ALPHA) -> Verdict:
    rule = RULE_BY_KEY["meyer.gap"]
    cells = _meyer_cells(evidence)
    if reason := _meyer_reason(evidence, cells):
        return Verdict(rule, NOT_JUDGED, reason)
    labels, groups = evidence.labels, evidence.groups

    def gap(cell: Cell, loss: str) -> SeedEvidence:
        predictions = evidence.model(cell, loss).predictions
        return SeedEvidence(*measures.accuracy_gap(labels, predictions, groups))

    difference = {cell[1]: gap(cell, "pw") - gap(cell, "ce") for cell in cells}
    return _paired_cells(
        rule, _levels(cells), difference, "less", "pw's gap smaller than ce's", alpha
    )


def meyer_premise(evidence: SeedRunsEvidence, alpha: float = ALPHA) -> Verdict:
    rule = RULE_BY_KEY["meyer.premise"]
    cells = _meyer_cells(evidence)
    if reason := _meyer_reason(evidence, cells):
        return Verdict(rule, NOT_JUDGED, reason)
    labels, groups = evidence.labels, evidence.groups
    before = SeedEvidence(*measures.accuracy_gap(labels, evidence.reference.predictions, groups))
    difference = {
        cell[1]: SeedEvidence(
            *measures.accuracy_gap(labels, evidence.model(cell, "ce").predictions, groups)
        )
        - before
        for cell in cells
    }
    return _paired_cells(
        rule, _levels(cells), difference, "greater", "ce's gap wider than the reference's", alpha
    )


def meyer_accuracy(evidence: SeedRunsEvidence, alpha: float = ALPHA) -> Verdict:
    rule = RULE_BY_KEY["meyer.accuracy"]
    cells = _meyer_cells(evidence)
    if reason := _seed_note(len(evidence.seeds)) or (
        "" if cells else "no level has both ce and pw"
    ):
        return Verdict(rule, NOT_JUDGED, reason)
    labels = evidence.labels
    results = []
    for cell in cells:
        ce, pw = (evidence.model(cell, loss).predictions for loss in ("ce", "pw"))
        estimate = (
            SeedEvidence(*measures.accuracy(labels, pw))
            - SeedEvidence(*measures.accuracy(labels, ce))
        ).estimate()
        p = estimate.p_greater(-ACCURACY_MARGIN)
        low, high = estimate.interval(1 - 2 * alpha)
        results.append(
            CellResult(f"{cell[1]:g}", estimate.point, low, high, p, p, bool(p <= alpha))
        )
    per_level = "; ".join(
        f"{r.cell}: pw - ce {number(r.estimate, 3)} [{number(r.low, 3)}, {number(r.high, 3)}], "
        f"p = {number(r.p, 3)}"
        for r in results
    )
    passing = sum(r.rejected for r in results)
    status = HELD if passing == len(results) else NOT_HELD
    return Verdict(
        rule,
        status,
        f"pw shown within {ACCURACY_MARGIN:g} of ce at {passing} of {len(results)} levels (90% "
        f"intervals: a lower end above -{ACCURACY_MARGIN:g} passes): {per_level}",
        results,
    )


def meyer_aurocs(evidence: SeedRunsEvidence) -> dict[Any, dict[Any, list]]:
    """Every model's one-vs-rest class AUROCs (measures.class_aurocs) on the whole test split
    (key None) and within each group value, for the reference (key "reference") and each
    (level, loss): computed in one batch per subset (one sort for all models)."""
    names: list[Any] = ["reference"]
    arrays = [evidence.reference.probabilities]
    for cell in _meyer_cells(evidence):
        for loss in ("ce", "pw"):
            names.append((cell[1], loss))
            arrays.append(evidence.model(cell, loss).probabilities)
    seeds = arrays[0].shape[0]
    stacked = np.concatenate(arrays, axis=0)
    subsets: dict[Any, np.ndarray | None] = {None: None}
    for value in np.unique(evidence.groups):
        subsets[value] = evidence.groups == value
    result: dict[Any, dict[Any, list]] = {name: {} for name in names}
    by_subset = measures.class_auroc_subsets(evidence.labels, stacked, list(subsets.values()))
    for key, per_class in zip(subsets, by_subset, strict=True):
        for position, name in enumerate(names):
            rows = slice(position * seeds, (position + 1) * seeds)
            result[name][key] = [(values[rows], influence[rows]) for values, influence in per_class]
    return result


def meyer_auroc_gap(
    evidence: SeedRunsEvidence, alpha: float = ALPHA, aurocs: dict | None = None
) -> Verdict:
    rule = RULE_BY_KEY["meyer.auroc_gap"]
    cells = _meyer_cells(evidence)
    if reason := _meyer_reason(evidence, cells, probabilities=True):
        return Verdict(rule, NOT_JUDGED, reason)
    aurocs = aurocs or meyer_aurocs(evidence)
    groups = [value for value in np.unique(evidence.groups)]

    def gap(level: float, loss: str) -> SeedEvidence:
        by_group = [measures.mean_of(aurocs[(level, loss)][value]) for value in groups]
        return SeedEvidence(*measures.spread(by_group))

    difference = {level: gap(level, "pw") - gap(level, "ce") for level in _levels(cells)}
    return _paired_cells(
        rule, _levels(cells), difference, "less", "pw's AUROC gap smaller", alpha, 4
    )


def meyer_class_auroc(
    evidence: SeedRunsEvidence, alpha: float = ALPHA, aurocs: dict | None = None
) -> Verdict:
    rule = RULE_BY_KEY["meyer.class_auroc"]
    cells = _meyer_cells(evidence)
    if reason := _meyer_reason(evidence, cells, probabilities=True):
        return Verdict(rule, NOT_JUDGED, reason)
    aurocs = aurocs or meyer_aurocs(evidence)
    reference = aurocs["reference"][None]

    def change(level: float, loss: str) -> SeedEvidence:
        model = aurocs[(level, loss)][None]
        return SeedEvidence(
            *measures.worst(
                [measures.difference(m, r) for m, r in zip(model, reference, strict=True)]
            )
        )

    difference = {level: change(level, "pw") - change(level, "ce") for level in _levels(cells)}
    return _paired_cells(
        rule, _levels(cells), difference, "greater", "pw's worst class loses less AUROC", alpha, 4
    )


def judge_meyer(evidence: SeedRunsEvidence, alpha: float = ALPHA) -> list[Verdict]:
    """Every Meyer & Wong verdict, in RULES order."""
    cells = _meyer_cells(evidence)
    aurocs = (
        meyer_aurocs(evidence) if not _meyer_reason(evidence, cells, probabilities=True) else None
    )
    return [
        meyer_gap(evidence, alpha),
        meyer_premise(evidence, alpha),
        meyer_accuracy(evidence, alpha),
        meyer_auroc_gap(evidence, alpha, aurocs),
        meyer_class_auroc(evidence, alpha, aurocs),
    ]


# --------------------------------------------------------------------------------------------
# Hooker et al.
# --------------------------------------------------------------------------------------------


def _trend_groups(evidence: PopulationEvidence) -> tuple[list[np.ndarray], np.ndarray, str]:
    """The populations a trend test permutes, their sparsities, and what level 0 is."""
    levels = evidence.levels
    if evidence.paired_levels:  # from_dense: member k of every level comes from dense member k
        return [evidence.pruned[level] for level in levels], np.array(levels), "no floor"
    return (
        [evidence.floor, *(evidence.pruned[level] for level in levels)],
        np.array([0.0, *levels]),
        "the second dense population at sparsity 0",
    )


def _permutation_p(observed: float, permuted: np.ndarray) -> float:
    return float((1 + np.sum(permuted >= observed - 1e-12)) / (1 + len(permuted)))


def hooker_trends(
    evidence: PopulationEvidence,
    alpha: float = ALPHA,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> tuple[Verdict, Verdict]:
    """("PIEs grow", "more classes impacted") by permutation tests of the slope over sparsity."""
    pies_rule, classes_rule = RULE_BY_KEY["hooker.pies"], RULE_BY_KEY["hooker.classes"]
    populations, x, floor_text = _trend_groups(evidence)
    if len(populations) < 2:
        reason = "needs two levels or a level and the floor"
        return Verdict(pies_rule, NOT_JUDGED, reason), Verdict(classes_rule, NOT_JUDGED, reason)
    classes = len(evidence.class_names)
    labels = evidence.labels
    pool, index = pop.pooled(populations)
    dense_modes = pop.modes(evidence.dense, np.arange(evidence.members)[None, :], classes)[0]
    all_pool = np.concatenate([pool, evidence.dense])
    recalls, top1 = pop.member_recalls(all_pool, labels, classes)
    dense_index = np.arange(len(pool), len(all_pool))
    shuffles = pop.block_permutations(evidence.members, len(populations), permutations, seed)
    groups = pop.permuted_index(index, shuffles)  # [B, G, K]
    observed_pies = pop.pie_counts(pool, index, dense_modes, classes)
    permuted_pies = pop.pie_counts(pool, groups, dense_modes, classes)
    observed_classes = pop.impacted_counts(recalls, top1, dense_index, index, alpha)
    permuted_classes = pop.impacted_counts(recalls, top1, dense_index, groups, alpha)
    verdicts = []
    for rule, observed, permuted, what in (
        (pies_rule, observed_pies, permuted_pies, "PIEs"),
        (classes_rule, observed_classes, permuted_classes, "impacted classes"),
    ):
        statistic = float(pop.slope(x, observed.astype(float)))
        null = pop.slope(x, permuted.astype(float))
        p = _permutation_p(statistic, null)
        counts = ", ".join(
            f"{'floor' if (level == 0 and not evidence.paired_levels) else f'{level:g}'}: {int(c)}"
            for level, c in zip(x, observed, strict=True)
        )
        detail = (
            f"{what} by sparsity ({floor_text} first): {counts}; slope {statistic:.3g} per unit "
            f"sparsity, permutation p = {p:.3f} ({permutations} reassignments of members)"
        )
        cells = [
            CellResult(f"{level:g}", float(c), math.nan, math.nan, math.nan)
            for level, c in zip(x, observed, strict=True)
        ]
        verdicts.append(Verdict(rule, HELD if p <= alpha else NOT_HELD, detail, cells))
    return verdicts[0], verdicts[1]


def hooker_quantization(
    evidence: PopulationEvidence,
    alpha: float = ALPHA,
    permutations: int = PERMUTATIONS,
    seed: int = 1,
) -> Verdict:
    """Each quantizer's PIEs (applied to the second dense population) against the highest
    sparsity's, by a permutation test per quantizer; held when every quantizer passes."""
    rule = RULE_BY_KEY["hooker.quantization"]
    if not evidence.quantized or not evidence.levels:
        return Verdict(rule, NOT_JUDGED, "no quantized population or no pruned level")
    classes = len(evidence.class_names)
    dense_modes = pop.modes(evidence.dense, np.arange(evidence.members)[None, :], classes)[0]
    highest = evidence.levels[-1]
    results = []
    for offset, (name, quantized) in enumerate(sorted(evidence.quantized.items())):
        pool, index = pop.pooled([evidence.pruned[highest], quantized])
        shuffles = pop.block_permutations(evidence.members, 2, permutations, seed + offset)
        counts = pop.pie_counts(pool, index, dense_modes, classes)
        observed = float(counts[0] - counts[1])
        permuted = pop.pie_counts(pool, pop.permuted_index(index, shuffles), dense_modes, classes)
        p = _permutation_p(observed, (permuted[:, 0] - permuted[:, 1]).astype(float))
        results.append(CellResult(name, observed, math.nan, math.nan, p, p, bool(p <= alpha)))
    passing = sum(r.rejected for r in results)
    per = "; ".join(
        f"{r.cell}: {abs(int(r.estimate))} {'fewer' if r.estimate >= 0 else 'more'} PIEs than "
        f"sparsity {highest:g}, permutation p = {r.p:.3f}"
        for r in results
    )
    return Verdict(
        rule,
        HELD if passing == len(results) else NOT_HELD,
        f"fewer PIEs than at sparsity {highest:g} for {passing} of {len(results)} quantizers "
        f"(each on independently trained members, as the pruned ones): {per}",
        results,
    )


def judge_hooker(
    evidence: PopulationEvidence, alpha: float = ALPHA, permutations: int = PERMUTATIONS
) -> list[Verdict]:
    """Every Hooker et al. verdict, in RULES order."""
    return [
        *hooker_trends(evidence, alpha, permutations),
        hooker_quantization(evidence, alpha, permutations),
    ]


JUDGES = {"joseph": judge_joseph, "meyer": judge_meyer, "hooker": judge_hooker}


def rules_of(paper: str) -> list[Rule]:
    return [rule for rule in RULES if rule.paper == paper]
