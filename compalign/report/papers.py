"""The reports of `compalign reproduce`: one builder per paper.

Each builder takes the runs' summaries and every model's per-example outcomes
(compalign.verdicts.evidence), judges each headline finding by its rule (compalign.verdicts.rules,
written once, calibrated by simulation), and writes to its output directory: README.md, which
opens with what was run and how it differs from the paper, then the rule table, then the
verdicts, then the tables (also as CSV and Markdown) and the figures (PNG).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import compalign.verdicts.populations as pop
import compalign.verdicts.simulate as simulate
from compalign.report.figures import (
    hooker_pie_figure,
    joseph_mismatch_figure,
    meyer_group_figure,
    save_png,
)
from compalign.verdicts.estimate import SeedEvidence
from compalign.verdicts.evidence import PopulationEvidence, SeedRunsEvidence
from compalign.verdicts.rules import (
    JOSEPH_SIZE,
    NOT_JUDGED,
    POWER_NEEDED,
    Rule,
    Verdict,
    judge_hooker,
    judge_joseph,
    judge_meyer,
    number,
    reference_floor,
    rules_of,
)

# Hooker et al.: mean ImageNet ResNet-50 top-1 by sparsity (NOTES.md), for a sense of scale
HOOKER_TOP1 = {0.0: 76.68, 0.1: 76.66, 0.3: 76.46, 0.5: 75.87, 0.7: 75.02, 0.9: 72.57}
# simulated runs (and permutations per Hooker test) of a report's power check: the power is
# estimated to within about +-3 (Joseph) or +-4 (Meyer, Hooker) points at 80%
POWER_DRAWS = {"joseph": 200, "meyer": 100, "hooker": 100}
POWER_PERMUTATIONS = 100
BOOTSTRAP_MEMBERS = 1000  # Hooker: resamples of members for the PIE count intervals

# What each paper ran, beside which a report states what we ran (from the papers' abstracts and
# the authors' code, NOTES.md sections 3-5)
PAPER_SETUP = {
    "joseph": (
        "CIFAR-10 among their datasets (32x32 colour images, 10,000 test images), eight "
        "architectures, several compression schemes, GPU training; weights of the loss tuned "
        "automatically; up to 4.1x fewer mismatches, 5.7x where the reference is right"
    ),
    "meyer": (
        "CIFAR-10 ResNet-56 with 80% of cat and dog dropped (10,000 test images), CelebA and "
        "Fitzpatrick17k; iterative Taylor pruning to 25-93.75% of conv FLOPs; AdamW, 200 "
        "fine-tuning epochs on CIFAR-10; one run per setting; AUROC per group and per class"
    ),
    "hooker": (
        "ImageNet ResNet-50 (50,000 validation images), populations of 30 per level at 10-90% "
        "sparsity, 32,000 training steps at batch 4,096 on TPUs; Welch's t-test at raw p <= 0.05"
    ),
}
PROTOCOLS = {
    "from_scratch": "each pruned member trained from its own seed, gradual magnitude pruning "
    "inside its training run (Hooker et al.'s protocol)",
    "from_dense": "each pruned member is dense member k pruned, then fine-tuned (not the "
    "authors' protocol)",
}


@dataclass
class RunRecord:
    """What a reproduce run ran, and on what: the report's first section."""

    paper: str
    profile: str
    profile_file: str
    dataset: str
    image: str
    splits: dict[str, int]
    classes: int
    model: str
    reference_epochs: int
    align_epochs: int
    seeds: int
    members: int
    code: str
    torch: str
    threads: str  # torch threads per task, as the checkpoints recorded them
    cpu_kernels: str
    host: str
    wall_seconds: float
    started: str
    overrides: list[str] = field(default_factory=list)
    data_digest: str = ""

    def lines(self) -> list[str]:
        splits = ", ".join(f"{name} {count:,}" for name, count in self.splits.items())
        replication = (
            f"{self.members} members per population (each an independent training run)"
            if self.paper == "hooker"
            else f"{self.seeds} training seed{'s' if self.seeds != 1 else ''} (seed i moves every "
            "training seed by i; the split and the test examples stay)"
        )
        training = (
            f"{self.reference_epochs} epochs per member"
            if self.paper == "hooker"
            else f"reference {self.reference_epochs} epochs, fine-tuning {self.align_epochs} epochs"
        )
        rows = [
            (
                "data",
                f"{self.dataset}, {self.image}, {self.classes} classes; {splits} images "
                f"(data digest {self.data_digest})",
            ),
            ("model", f"{self.model}; {training}"),
            ("replication", replication),
            (
                "profile",
                f"`{self.profile_file}`"
                + (f" with `--set {' '.join(self.overrides)}`" if self.overrides else ""),
            ),
            ("code", self.code),
            (
                "environment",
                f"torch {self.torch}; torch threads: {self.threads}; CPU kernels "
                f"{self.cpu_kernels}; {self.host}",
            ),
            ("wall time", f"{self.wall_seconds / 60:.1f} min (started {self.started})"),
            ("the paper", PAPER_SETUP[self.paper]),
        ]
        return ["| | |", "|---|---|", *[f"| {name} | {value} |" for name, value in rows]]


def rule_table(rules: list[Rule]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "finding": rule.finding,
                "measure": rule.measure,
                "null": rule.null,
                "alternative": rule.alternative,
                "test": rule.test,
                "correction": rule.correction,
                "paper's size": rule.paper_size,
                "power checked against": rule.power_effect,
            }
            for rule in rules
        ]
    )


@dataclass
class PaperReport:
    """What a builder produced: named tables, figure paths, verdicts, and the README text."""

    paper: str
    title: str
    record: RunRecord | None = None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    judged: list[Verdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # descriptive findings, not verdicts
    sections: list[str] = field(default_factory=list)

    @property
    def verdicts(self) -> list[str]:
        return [verdict.sentence() for verdict in self.judged] + self.notes

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write every table (CSV + Markdown) and README.md; return all files (figures too)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        files = list(self.figures)
        for name, table in self.tables.items():
            table.to_csv(out_dir / f"{name}.csv", index=False)
            (out_dir / f"{name}.md").write_text(_markdown(table) + "\n")
            files += [out_dir / f"{name}.csv", out_dir / f"{name}.md"]
        text = [f"# {self.title}", ""]
        if self.record is not None:
            text += ["## What was run", "", *self.record.lines(), ""]
        text += [
            "## The rules",
            "",
            "Each finding is judged by the rule below, written before the run "
            "(`compalign/verdicts/rules.py`) and checked by simulation: with no effect no rule "
            'says "held" in more than 5% of 1,000 simulated runs of the cpu profile\'s size '
            '(`tests/test_verdict_calibration.py`). "Held" needs the test to reject its null '
            'after the correction; a size claim is judged only where its direction held: "size '
            "reached\" says its interval reaches the paper's figure (the data are consistent with "
            'it), "size not reached" that every interval lies below it; "did not hold" is said '
            "only by a rule with at least "
            f"{POWER_NEEDED:.0%} power at this run's size, otherwise the finding is \"not "
            'judged (not powered)"; a count never gets an interval below 0.',
            "",
            _markdown(rule_table(rules_of(self.paper))),
            "",
            "## Findings",
            "",
        ]
        text += [f"- {verdict}" for verdict in self.verdicts]
        text += ["", *self.sections]
        (out_dir / "README.md").write_text("\n".join(text).rstrip() + "\n")
        files.append(out_dir / "README.md")
        return files


def _markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, floatfmt=".4g")


def _judged_with_power(paper: str, verdicts: list[Verdict], evidence: Any) -> list[Verdict]:
    """Each verdict with the power its rule had at this run's size (simulate.power)."""
    design = simulate.design_of(paper, evidence)
    power = simulate.power(paper, design, POWER_DRAWS[paper], permutations=POWER_PERMUTATIONS)
    text = simulate.describe(paper, design)
    return [verdict.with_power(power.get(verdict.rule.key), text) for verdict in verdicts]


def count_interval(evidence: SeedEvidence, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a count over seeds, the interval clipped at 0 (a count is never
    negative); with one seed the test-resampling part alone."""
    estimate = evidence.estimate()
    if estimate.judged:
        low, high = estimate.interval(level)
    else:
        half = 1.959964 * math.sqrt(estimate.test_var)
        low, high = estimate.point - half, estimate.point + half
    return estimate.point, max(0.0, low), high


def _count_text(mean: float, low: float, high: float, digits: int) -> str:
    return f"{number(mean, digits)} [{number(low, digits)}, {number(high, digits)}]"


def _cell_table(verdict: Verdict, value: str, digits: int = 3) -> pd.DataFrame:
    """A verdict's cells as a table: estimate, interval, p and Holm-adjusted p, decision."""
    return pd.DataFrame(
        [
            {
                "cell": cell.cell,
                value: number(cell.estimate, digits),
                "interval": f"[{number(cell.low, digits)}, {number(cell.high, digits)}]",
                "p": number(cell.p, 3),
                "p (Holm)": number(cell.p_adjusted, 3),
                "rejected": "yes" if cell.rejected else "no",
                "note": cell.note,
            }
            for cell in verdict.cells
        ]
    )


# --------------------------------------------------------------------------------------------
# Joseph et al.
# --------------------------------------------------------------------------------------------


def _mismatch_rows(evidence: SeedRunsEvidence, loss_order: list[str]) -> pd.DataFrame:
    """Per (compressor, level, loss): mean mismatches over seeds with their interval (all and
    where the reference is right) and mean accuracy."""
    from compalign.verdicts.rules import mismatch_counts

    rows = []
    for compressor, level in evidence.cells():
        for loss in loss_order:
            if (compressor, level, loss) not in evidence.models:
                continue
            cell = (compressor, level)
            row: dict[str, Any] = {"compressor": compressor, "sparsity": level, "loss": loss}
            for column, ref_right in (("mismatches", False), ("mismatches_ref_correct", True)):
                mean, low, high = count_interval(mismatch_counts(evidence, cell, loss, ref_right))
                row.update({column: mean, f"{column}_ci_low": low, f"{column}_ci_high": high})
            predictions = evidence.model(cell, loss).predictions
            row["accuracy"] = float((predictions == evidence.labels[None, :]).mean())
            rows.append(row)
    return pd.DataFrame(rows)


def _reduction_rows(
    evidence: SeedRunsEvidence, losses: tuple[str, ...] = ("kd", "label_preserving")
) -> pd.DataFrame:
    """Reduction factors of `losses` (the paper's: kd and label_preserving) against ce (ratio of
    sums over seeds) with 95% Fieller intervals per cell, all and where the reference is right."""
    from compalign.verdicts.estimate import Ratio
    from compalign.verdicts.rules import mismatch_counts

    rows = []
    for cell in evidence.cells("ce"):
        for loss in losses:
            if (*cell, loss) not in evidence.models:
                continue
            row: dict[str, Any] = {"compressor": cell[0], "sparsity": cell[1], "loss": loss}
            for label, ref_right in (("reduction", False), ("reduction, ref. right", True)):
                ratio = Ratio(
                    mismatch_counts(evidence, cell, "ce", ref_right),
                    mismatch_counts(evidence, cell, loss, ref_right),
                )
                low, high = ratio.interval(0.95)
                row[label] = f"{number(ratio.point)}x [{number(low)}, {number(high)}]"
            row["paper (up to)"] = f"{JOSEPH_SIZE['all']}x / {JOSEPH_SIZE['ref_correct']}x"
            rows.append(row)
    return pd.DataFrame(rows)


def _floor_text(floor: list[dict[str, Any]]) -> str:
    if not floor:
        return "no noise floor (one seed: a second reference needs a second seed)"
    counts = [row["mismatches"] for row in floor]
    spread = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
    return (
        f"two references trained alike from other seeds disagree on {spread} "
        f"test images (mean {np.mean(counts):.1f} over {len(counts)} pair"
        f"{'s' if len(counts) > 1 else ''} of seeds)"
    )


JOSEPH_LOSSES = ("none", "ce", "kd", "label_preserving")  # the paper's, in its tables' order


def joseph(
    summary: pd.DataFrame,
    evidence: SeedRunsEvidence,
    out_dir: Path,
    record: RunRecord | None = None,
    tuned: bool = False,
) -> PaperReport:
    """Mismatches of ce, kd and label_preserving across sparsities and compressors beside the
    noise floor of two references; reduction factors against the paper's up to 4.1x (5.7x
    where the reference is right); class fairness and attribution agreement: each judged by its
    rule on every seed's per-example outcomes."""
    profile = record.profile if record else "cpu"
    report = PaperReport("joseph", f"Joseph et al. (arXiv 2012.01604), {profile} profile", record)
    seeds = evidence.seeds
    report.judged = _judged_with_power("joseph", judge_joseph(evidence), evidence)
    losses = [loss for loss in JOSEPH_LOSSES if any(key[2] == loss for key in evidence.models)]
    counts = _mismatch_rows(evidence, losses)
    floor = reference_floor(evidence)
    digits = 0 if len(seeds) == 1 else 1
    rows = []
    for (compressor, level), group in counts.groupby(["compressor", "sparsity"], sort=True):
        row: dict[str, Any] = {"compressor": compressor, "sparsity": level}
        for _, model in group.iterrows():
            row[f"{model.loss} accuracy"] = round(model.accuracy, 4)
            row[f"{model.loss} mismatches"] = _count_text(
                model.mismatches, model.mismatches_ci_low, model.mismatches_ci_high, digits
            )
            row[f"{model.loss} ref. right"] = _count_text(
                model.mismatches_ref_correct,
                model.mismatches_ref_correct_ci_low,
                model.mismatches_ref_correct_ci_high,
                digits,
            )
        rows.append(row)
    report.tables["mismatches"] = pd.DataFrame(rows)
    if floor:
        report.tables["noise_floor"] = pd.DataFrame(floor)
    report.tables["reduction_factors"] = _reduction_rows(evidence)
    compressed = summary[summary.role == "compressed"] if "role" in summary else summary
    columns = ["accuracy", "mismatches", "mismatches_ref_correct", "reduction_factor"]
    keys = [c for c in ("seed", "compressor", "sparsity", "loss") if c in compressed]
    report.tables["per_seed"] = compressed[[*keys, *[c for c in columns if c in compressed]]]
    for verdict, name, value in (
        (report.judged[4], "fairness", "label_preserving - ce, worst class Δ recall"),
        (report.judged[5], "attributions", "label_preserving - ce, attribution ρ"),
    ):
        if verdict.cells:
            report.tables[name] = _cell_table(verdict, value)
    floor_mean = float(np.mean([row["mismatches"] for row in floor])) if floor else None
    figure = joseph_mismatch_figure(counts, floor_mean)
    report.figures.append(save_png(figure, out_dir / "mismatches_vs_sparsity.png"))

    seed_text = (
        f"{len(seeds)} training seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})"
    )
    tuning_text = (
        "The losses' weights were tuned on the validation split (align.tune), every loss with the "
        "same number of candidates."
        if tuned
        else "The losses' weights are their configured ones (align.tune is off)."
    )
    report.sections += [
        "## Mismatches beside the noise floor",
        "",
        f"Test split; mean over {seed_text} [95% interval over the seeds and the test examples, "
        f"clipped at 0]. The floor: {_floor_text(floor)}; a compressed model's mismatches below "
        f"it are within what retraining the reference alone changes. {tuning_text}",
        "",
        _markdown(report.tables["mismatches"]),
        "",
        *(
            [
                "Two references against each other (the noise floor):",
                "",
                _markdown(report.tables["noise_floor"]),
                "",
            ]
            if floor
            else []
        ),
        "![mismatches vs sparsity](mismatches_vs_sparsity.png)",
        "",
        "## Reduction factors against ce, beside the paper's headline",
        "",
        "Ratio of the sums over seeds (ce's mismatches / the loss's), 95% Fieller interval per "
        "cell (the verdicts use simultaneous intervals over all cells).",
        "",
        _markdown(report.tables["reduction_factors"]),
    ]
    for name, title in (
        ("fairness", "Fairness across classes"),
        ("attributions", "Attribution agreement"),
    ):
        if name in report.tables:
            report.sections += [
                "",
                f"## {title}: label_preserving - ce per cell (90% intervals, Holm-adjusted p)",
                "",
                _markdown(report.tables[name]),
            ]
    report.sections += ["", *_losses_compared(evidence, report, digits)]
    report.sections += ["", "Each seed's own numbers are in `per_seed.csv`."]
    return report


def _losses_compared(evidence: SeedRunsEvidence, report: PaperReport, digits: int) -> list[str]:
    """The "Losses compared" section: every other loss of the run (focal_distillation, pw, …)
    against ce on the same seeds and test examples, beside the paper's; without any, how to add
    them. SoftAdapt's weighting is label_preserving under another option, so a second run's
    (bench/losses.py compare puts both in one table: docs/losses.md)."""
    others = sorted({key[2] for key in evidence.models} - set(JOSEPH_LOSSES))
    heading = ["## Losses compared", ""]
    pointer = (
        "SoftAdapt's weighting of label_preserving (`align.label_preserving.weighting=softadapt`) "
        "is the same loss under another option, so it needs a run of its own: "
        "`bench/losses.py compare` puts every loss, both weightings included, in one table "
        "(docs/losses.md, with its figures on the digits and on Fashion-MNIST)."
    )
    if not others:
        return [
            *heading,
            "This run holds the paper's losses only. `--set align.losses=[ce,kd,label_preserving,"
            "focal_distillation,pw]` adds positive-congruent training's focal distillation and "
            "Meyer & Wong's performance-weighted loss to this section. " + pointer,
        ]
    counts = _mismatch_rows(evidence, ["ce", "kd", "label_preserving", *others])
    # the paper's losses' factors are the report's reduction_factors table: only the others' are new
    factors = pd.concat(
        [report.tables["reduction_factors"], _reduction_rows(evidence, tuple(others))]
    ).set_index(["compressor", "sparsity", "loss"])
    rows = []
    for model in counts.itertuples():
        key = (model.compressor, model.sparsity, model.loss)
        found = factors.loc[key] if key in factors.index else None
        rows.append(
            {
                "compressor": model.compressor,
                "sparsity": model.sparsity,
                "loss": model.loss,
                "accuracy": round(model.accuracy, 4),
                "mismatches": _count_text(
                    model.mismatches, model.mismatches_ci_low, model.mismatches_ci_high, digits
                ),
                "vs ce": "–" if found is None else found["reduction"],
                "ref. right": _count_text(
                    model.mismatches_ref_correct,
                    model.mismatches_ref_correct_ci_low,
                    model.mismatches_ref_correct_ci_high,
                    digits,
                ),
                "vs ce, ref. right": "–" if found is None else found["reduction, ref. right"],
            }
        )
    report.tables["losses_compared"] = pd.DataFrame(rows)
    return [
        *heading,
        f"Every loss of this run against ce on the same seeds and test examples: the paper's, "
        f"then {', '.join(others)}. Mean over seeds [95% interval, clipped at 0]; the factor is "
        "ce's mismatches over the loss's (ratio of the sums over seeds, 95% Fieller interval "
        "per cell; no verdict is drawn from it). " + pointer,
        "",
        _markdown(report.tables["losses_compared"]),
    ]


# --------------------------------------------------------------------------------------------
# Meyer & Wong
# --------------------------------------------------------------------------------------------


def _metric(metrics: dict[str, float], key: str) -> float:
    return float(metrics.get(key, float("nan")))


def meyer(
    summary: pd.DataFrame,
    metrics: dict[str, dict[str, float]],
    evidence: SeedRunsEvidence,
    group: str,
    out_dir: Path,
    record: RunRecord | None = None,
) -> PaperReport:
    """Structured (Taylor) pruning at several FLOP reductions, ce against pw: per-group accuracy
    and AUROC, the gap between groups and how pruning changes it, per-class AUROC, accuracy
    cost, mismatches beside the noise floor: each finding judged by its rule."""
    profile = record.profile if record else "cpu"
    report = PaperReport("meyer", f"Meyer & Wong (arXiv 2211.10285), {profile} profile", record)
    report.judged = _judged_with_power("meyer", judge_meyer(evidence), evidence)
    compressed = summary[summary.role == "compressed"]
    values = sorted(
        {
            key.split(".")[2]
            for key in metrics.get("reference", {})
            if key.startswith(f"group.{group}.")
            and key.endswith(".accuracy")
            and key.count(".") == 3
        }
    )
    seeded = "seed" in summary.columns
    rows = []
    for _, model in compressed.sort_values(
        ["sparsity", "seed", "loss"] if seeded else ["sparsity", "loss"]
    ).iterrows():
        model_metrics = metrics[model["name"]]
        row: dict[str, Any] = {"FLOPs removed": model.sparsity}
        if seeded:
            row["seed"] = model.seed
        row.update({"loss": model.loss, "accuracy": round(model.accuracy, 4)})
        for value in values:
            row[f"accuracy {group}={value}"] = round(
                _metric(model_metrics, f"group.{group}.{value}.accuracy"), 4
            )
            row[f"AUROC {group}={value}"] = round(
                _metric(model_metrics, f"auroc.group.{group}.{value}"), 4
            )
        row["gap"] = round(_metric(model_metrics, f"group.{group}.accuracy_gap"), 4)
        row["gap change vs reference"] = round(
            _metric(model_metrics, f"group.{group}.accuracy_gap_change"), 4
        )
        row["AUROC"] = round(_metric(model_metrics, "auroc"), 4)
        row["worst class ΔAUROC"] = round(_metric(model_metrics, "worst_class_auroc_change"), 4)
        rows.append(row)
    report.tables["groups"] = pd.DataFrame(rows)
    if rows:
        figure = meyer_group_figure(report.tables["groups"], group)
        report.figures.append(save_png(figure, out_dir / "group_gap_vs_flops.png"))
    names = {
        "meyer.gap": ("gap", "pw - ce, accuracy gap"),
        "meyer.premise": ("premise", "ce - reference, accuracy gap"),
        "meyer.accuracy": ("accuracy", "pw - ce, accuracy"),
        "meyer.auroc_gap": ("auroc_gap", "pw - ce, AUROC gap"),
        "meyer.class_auroc": ("class_auroc", "pw - ce, worst class ΔAUROC"),
    }
    for verdict in report.judged:
        if verdict.cells:
            name, value = names[verdict.rule.key]
            report.tables[name] = _cell_table(verdict, value, 4)
    # mismatches beside the noise floor of two references
    counts = _mismatch_rows(evidence, ["ce", "pw"])
    floor = reference_floor(evidence)
    if len(counts):
        digits = 0 if len(evidence.seeds) == 1 else 1
        report.tables["mismatches"] = pd.DataFrame(
            [
                {
                    "FLOPs removed": row.sparsity,
                    "loss": row.loss,
                    "mismatches": _count_text(
                        row.mismatches, row.mismatches_ci_low, row.mismatches_ci_high, digits
                    ),
                    "…ref. right": _count_text(
                        row.mismatches_ref_correct,
                        row.mismatches_ref_correct_ci_low,
                        row.mismatches_ref_correct_ci_high,
                        digits,
                    ),
                }
                for row in counts.itertuples()
            ]
        )
    report.sections += [
        f"## The gap between the {group} groups and AUROC: the rules' cells",
        "",
        "Gap = the largest minus the smallest group accuracy (AUROC: one-vs-rest, macro over "
        "the classes present in the group). Intervals: 90% (the one-sided tests at 5%), over "
        "the seeds and the test examples, paired between models of one seed.",
        "",
    ]
    for name, title in (
        ("gap", "pw - ce, accuracy gap"),
        ("premise", "ce - reference, accuracy gap"),
        ("accuracy", "pw - ce, accuracy (non-inferiority margin 0.01)"),
        ("auroc_gap", "pw - ce, AUROC gap between groups"),
        ("class_auroc", "pw - ce, worst class's AUROC change"),
    ):
        if name in report.tables:
            report.sections += [f"### {title}", "", _markdown(report.tables[name]), ""]
    if "mismatches" in report.tables:
        report.sections += [
            "## Mismatches beside the noise floor",
            "",
            f"The floor: {_floor_text(floor)}.",
            "",
            _markdown(report.tables["mismatches"]),
            "",
        ]
    report.sections += [
        f"## Accuracy and AUROC by group ({group}), per model and seed",
        "",
        _markdown(report.tables["groups"]),
        "",
        "![group gap vs FLOPs](group_gap_vs_flops.png)" if rows else "",
        "",
        "The paper gives no single headline number to set beside these tables (its results are "
        "plots per dataset and pruning level); the effects the power checks use are ours and "
        "are stated in the rule table.",
    ]
    return report


# --------------------------------------------------------------------------------------------
# Hooker et al.
# --------------------------------------------------------------------------------------------


def _pie_interval(
    evidence: PopulationEvidence, members: np.ndarray, seed: int
) -> tuple[int, float, float]:
    """(PIEs, 95% percentile interval) of a population against the dense one, resampling the
    members of both with replacement."""
    classes = len(evidence.class_names)
    k = evidence.members
    everyone = np.arange(k)[None, :]
    dense_modes = pop.modes(evidence.dense, everyone, classes)[0]
    observed = int((pop.modes(members, everyone, classes)[0] != dense_modes).sum())
    dense_draws = pop.bootstrap_members(k, BOOTSTRAP_MEMBERS, seed + 1)
    member_draws = pop.bootstrap_members(k, BOOTSTRAP_MEMBERS, seed)
    counts = np.concatenate(
        [
            (
                pop.modes(members, member_draws[start : start + 200], classes)
                != pop.modes(evidence.dense, dense_draws[start : start + 200], classes)
            ).sum(axis=1)
            for start in range(0, BOOTSTRAP_MEMBERS, 200)
        ]
    )
    low, high = np.percentile(counts, [2.5, 97.5])
    return observed, float(low), float(high)


def _impacted(evidence: PopulationEvidence, members: np.ndarray, alpha: float) -> tuple[int, int]:
    """(classes with raw p <= alpha, with Benjamini-Hochberg adjusted p <= alpha) of Welch's test
    between the dense population and `members` (Hooker et al.'s normalised recalls)."""
    from compalign.populations import class_impact

    impact = class_impact(evidence.dense, members, evidence.labels, evidence.class_names, alpha)
    return int((impact.p <= alpha).sum()), int(impact.impacted.sum())


def _impacted_rows(impact: pd.DataFrame) -> pd.DataFrame:
    columns = ["level", "class", "change", "t", "p", "p_adjusted", "impacted", "direction"]
    if not len(impact):
        return pd.DataFrame(columns=columns)
    return impact[(impact.p <= 0.05) | impact.impacted][[c for c in columns if c in impact]]


def hooker(
    pruning: pd.DataFrame,
    impact: pd.DataFrame,
    quantization: dict[str, pd.DataFrame],
    evidence: PopulationEvidence,
    out_dir: Path,
    record: RunRecord | None = None,
    protocol: str | None = None,
    loss: str = "ce",
    alpha: float = 0.05,
) -> PaperReport:
    """PIE counts and impacted classes by sparsity beside the noise floor of a second dense
    population (bootstrap intervals over members), quantization against pruning on populations
    of the same kind, PIE vs non-PIE accuracy; each finding judged by its rule (permutation
    tests over members)."""
    profile = record.profile if record else "cpu"
    report = PaperReport("hooker", f"Hooker et al. (arXiv 1911.05248), {profile} profile", record)
    report.judged = _judged_with_power("hooker", judge_hooker(evidence, alpha), evidence)
    pruning = (
        pruning[pruning["loss"] == loss].sort_values("level") if "loss" in pruning else pruning
    )
    floor_pies = _pie_interval(evidence, evidence.floor, seed=0)
    floor_raw, floor_bh = _impacted(evidence, evidence.floor, alpha)
    rows = [
        {
            "population": "second dense (noise floor)",
            "level": 0.0,
            "PIEs [95% CI]": f"{floor_pies[0]} [{floor_pies[1]:g}, {floor_pies[2]:g}]",
            "impacted classes, raw p": floor_raw,
            "impacted classes, BH": floor_bh,
            "top-1": float((evidence.floor == evidence.labels[None, :]).mean()),
            "paper ImageNet top-1 (ResNet-50)": HOOKER_TOP1[0.0],
        }
    ]
    intervals = {}
    for position, level in enumerate(evidence.levels):
        members = evidence.pruned[level]
        pies, low, high = _pie_interval(evidence, members, seed=10 + position)
        intervals[level] = (pies, low, high)
        raw, bh = _impacted(evidence, members, alpha)
        rows.append(
            {
                "population": f"pruned {level:g}",
                "level": level,
                "PIEs [95% CI]": f"{pies} [{low:g}, {high:g}]",
                "impacted classes, raw p": raw,
                "impacted classes, BH": bh,
                "top-1": float((members == evidence.labels[None, :]).mean()),
                "paper ImageNet top-1 (ResNet-50)": HOOKER_TOP1.get(round(level, 1), float("nan")),
            }
        )
    report.tables["pies_by_sparsity"] = pd.DataFrame(rows)
    quantized_rows = []
    for position, name in enumerate(sorted(evidence.quantized)):
        like, like_low, like_high = _pie_interval(
            evidence, evidence.quantized[name], seed=100 + position
        )
        row = {
            "quantizer": name,
            "PIEs, of the second dense population [95% CI]": f"{like} [{like_low:g}, {like_high:g}]",
        }
        if name in evidence.quantized_paired:
            paired, p_low, p_high = _pie_interval(
                evidence, evidence.quantized_paired[name], seed=200 + position
            )
            row["PIEs, of the same members (authors') [95% CI]"] = (
                f"{paired} [{p_low:g}, {p_high:g}]"
            )
        quantized_rows.append(row)
    if quantized_rows:
        report.tables["quantization_vs_pruning"] = pd.DataFrame(quantized_rows)
    if len(impact):
        report.tables["impacted_classes"] = _impacted_rows(impact)
    figure = hooker_pie_figure(
        pd.DataFrame(
            {
                "level": list(intervals),
                "pie_count": [v[0] for v in intervals.values()],
                "pie_low": [v[1] for v in intervals.values()],
                "pie_high": [v[2] for v in intervals.values()],
            }
        ),
        {name: int(_pie_interval(evidence, q, 0)[0]) for name, q in evidence.quantized.items()},
        floor=floor_pies,
        pruning_summary=pruning,
    )
    report.figures.append(save_png(figure, out_dir / "pies_vs_sparsity.png"))
    # "PIEs are harder": true by construction, so described beside the floor's disagreements
    dense_correct = evidence.dense == evidence.labels[None, :]
    classes = len(evidence.class_names)
    dense_modes = pop.modes(evidence.dense, np.arange(evidence.members)[None, :], classes)[0]
    floor_modes = pop.modes(evidence.floor, np.arange(evidence.members)[None, :], classes)[0]
    floor_mask = floor_modes != dense_modes
    highest = evidence.levels[-1] if evidence.levels else None
    harder = "no pruned level"
    if highest is not None:
        pruned_modes = pop.modes(
            evidence.pruned[highest], np.arange(evidence.members)[None, :], classes
        )[0]
        mask = pruned_modes != dense_modes

        def accuracy(selected: np.ndarray) -> str:
            return f"{dense_correct[:, selected].mean():.2f}" if selected.any() else "–"

        harder = (
            f"the dense population's top-1 is {accuracy(mask)} on the {int(mask.sum())} PIEs at "
            f"sparsity {highest:g} and {accuracy(~mask)} on the rest; on the {int(floor_mask.sum())} "
            f"examples where the second dense population's modal label differs it is "
            f"{accuracy(floor_mask)}: disagreement from training noise alone picks hard examples too"
        )
    report.notes.append(
        "PIEs are harder examples: **not judged** (true by construction: an example whose modal "
        f"label two populations disagree on is one the dense members are unsure of; {harder})."
    )
    described = PROTOCOLS.get(protocol or "", "not recorded")
    report.sections += [
        f"Protocol: {protocol or 'unknown'}: {described}. Modal labels break ties to the largest "
        "label (their `mode().max()`); a class's normalised recall is its recall minus the "
        "population's mean top-1; Welch's t-test per class and level. The verdicts count "
        "classes at the authors' raw p <= 0.05 (the permutation test controls the error of "
        "the trend); Benjamini-Hochberg counts are shown beside. Quantization is judged on the "
        "second dense population's members quantized, against the first dense population: "
        "independently trained members, as the pruned ones; the authors' comparison (the same "
        "members quantized, no training noise) is shown beside.",
        "",
        "## PIEs and impacted classes by sparsity, beside the noise floor",
        "",
        "PIE counts with 95% intervals from resampling the members of both populations. A "
        "resample repeats some members and leaves others out, which changes the modal labels, "
        "so an interval can lie above its count (as where the populations agree closely); the "
        "verdicts use the permutation tests above, not these intervals.",
        "",
        _markdown(report.tables["pies_by_sparsity"]),
        "",
        "![PIEs vs sparsity](pies_vs_sparsity.png)",
    ]
    if "quantization_vs_pruning" in report.tables:
        report.sections += [
            "",
            "## Quantization against pruning",
            "",
            _markdown(report.tables["quantization_vs_pruning"]),
        ]
    if "impacted_classes" in report.tables:
        report.sections += [
            "",
            "## Classes with raw p <= 0.05 (Welch t-test); `impacted`: adjusted p <= 0.05",
            "",
            _markdown(report.tables["impacted_classes"]),
        ]
    return report


__all__ = ["NOT_JUDGED", "PaperReport", "RunRecord", "hooker", "joseph", "meyer"]
