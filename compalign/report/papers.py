"""The tables, figures and verdicts of `compalign reproduce`: one builder per paper.

Each builder takes the results of the runs it asked for and writes, to its output directory,
tables as CSV and Markdown, figures as PNG, and README.md: every table beside the paper's own
headline figure where the paper gives one, and a sentence per headline finding saying whether
our run reproduces it (and by which rule it was judged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from compalign.report.figures import (
    hooker_pie_figure,
    joseph_mismatch_figure,
    meyer_group_figure,
    save_png,
)

JOSEPH_HEADLINE = {"all": 4.1, "ref_correct": 5.7}
# Hooker et al.: mean ImageNet ResNet-50 top-1 by sparsity (NOTES.md), for a sense of scale
HOOKER_TOP1 = {0.0: 76.68, 0.1: 76.66, 0.3: 76.46, 0.5: 75.87, 0.7: 75.02, 0.9: 72.57}


@dataclass
class PaperReport:
    """What a builder produced: named tables, figure paths, verdicts, and the README text."""

    paper: str
    title: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write every table (CSV + Markdown) and README.md; return all files (figures too)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        files = list(self.figures)
        for name, table in self.tables.items():
            table.to_csv(out_dir / f"{name}.csv", index=False)
            (out_dir / f"{name}.md").write_text(_markdown(table) + "\n")
            files += [out_dir / f"{name}.csv", out_dir / f"{name}.md"]
        text = [f"# {self.title}", "", "## Findings", ""]
        text += [f"- {verdict}" for verdict in self.verdicts]
        text += ["", *self.sections]
        (out_dir / "README.md").write_text("\n".join(text).rstrip() + "\n")
        files.append(out_dir / "README.md")
        return files


def _markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, floatfmt=".4g")


def _number(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return "∞" if math.isinf(value) else f"{value:.{digits}f}"


def _interval(row: pd.Series, column: str, digits: int = 2) -> str:
    return f"{_number(row[column], digits)} [{_number(row[f'{column}_ci_low'], digits)}, {_number(row[f'{column}_ci_high'], digits)}]"


def _held(condition: bool, partly: bool = False) -> str:
    return "**held**" if condition else ("**partly held**" if partly else "**did not hold**")


# --------------------------------------------------------------------------------------------
# Several training seeds (`reproduce.seeds`)
#
# flows/reproduce.py runs a configuration once per training seed and hands a builder every
# seed's summary rows, one after the other, with a `seed` column (flows.reproduce.SeedRuns).
# - joseph() reads every number through across_seeds() and judges each verdict on its interval.
# - meyer(): the per-level table should come from across_seeds(summary, ["sparsity", "loss"],
#   column) for each column it shows, once the group gap and its change are summary columns with
#   `_ci_low` / `_ci_high` (a per-seed fairlearn bootstrap); "pw limits the gap" should then be
#   judged on paired_difference(summary, ["sparsity"], "<gap change column>", "pw", "ce") through
#   across_seeds (the interval of pw minus ce below 0, or including 0), as joseph() does for
#   fairness. Until it does, its `metrics` are keyed by each summary row's `name`, which carries
#   `@seed<seed>` for every seed but the first, so its per-row lookups stay right.
# - hooker(): no seeds are added. The members of a population already are independent training
#   seeds (populations.size), and its verdicts are statistics over them: PIEs from the members'
#   modal labels, impacted classes from Welch's test over the members' recalls.
# --------------------------------------------------------------------------------------------

SEED_RULE = (
    "Across seeds: the mean over training seeds with an interval that covers both the seeds and "
    "the resampling of the test examples: mean ± t(ν, 0.975) · √(s²/S + SE²), where s is the "
    "standard deviation of the S per-seed values, SE the test-resampling standard error (the "
    "mean over seeds of each seed's 95% bootstrap interval width / (2 · 1.96): every seed is "
    "audited on the same test examples, so this part does not shrink with more seeds) and ν the "
    "Welch–Satterthwaite degrees of freedom (the bootstrap part counted as known). Reduction "
    "factors (ratios) are combined on the log scale (geometric mean). Where a seed's value or "
    "bound is 0 or infinite (no mismatches left), the interval is the union of the seeds' "
    "bootstrap intervals and the point is their median. With one seed the interval is that "
    "seed's bootstrap interval; columns without a bootstrap interval get the seed part only."
)


def across_seeds(
    summary: pd.DataFrame,
    keys: list[str],
    column: str,
    level: float = 0.95,
    scale: str = "linear",
) -> pd.DataFrame:
    """One row per `keys` group of a multi-seed summary (a `seed` column, one row per seed):
    `column` as its mean over seeds, `<column>_sd` (spread across seeds), `_min`, `_max`,
    `seeds` (how many), and `<column>_low` / `_high`: the interval of SEED_RULE, which also
    covers test resampling where the summary has `<column>_ci_low` / `_ci_high`. `scale="log"`
    for ratios. A summary without a `seed` column is one seed."""
    if scale not in ("linear", "log"):
        raise ValueError(f"scale must be linear or log, not {scale!r}")
    frame = summary if "seed" in summary else summary.assign(seed=0)
    bounds = [f"{column}_ci_low", f"{column}_ci_high"]
    has_bounds = all(name in frame for name in bounds)
    rows = []
    for group_keys, group in frame.groupby(keys, sort=True, dropna=False):
        group_keys = group_keys if isinstance(group_keys, tuple) else (group_keys,)
        values = group[column].to_numpy(dtype=float)
        low_high = group[bounds].to_numpy(dtype=float) if has_bounds else None
        point, low, high = _seed_interval(values, low_high, level, scale)
        rows.append(
            {
                **dict(zip(keys, group_keys, strict=True)),
                "seeds": len(values),
                column: point,
                f"{column}_low": low,
                f"{column}_high": high,
                f"{column}_sd": float(np.std(values, ddof=1))
                if len(values) > 1 and np.all(np.isfinite(values))
                else math.nan,
                f"{column}_min": float(np.min(values)),
                f"{column}_max": float(np.max(values)),
            }
        )
    columns = [*keys, "seeds", column, *(f"{column}_{part}" for part in PARTS)]
    return pd.DataFrame(rows, columns=columns)


PARTS = ("low", "high", "sd", "min", "max")


def _seed_interval(
    values: np.ndarray, bounds: np.ndarray | None, level: float, scale: str
) -> tuple[float, float, float]:
    """(point, low, high) of SEED_RULE for one group's per-seed values and bootstrap bounds."""
    from scipy import stats

    seeds = len(values)
    checked = values if bounds is None else np.concatenate([values, bounds.ravel()])
    usable = np.all(np.isfinite(checked)) and (scale == "linear" or np.all(checked > 0))
    if not usable:
        if bounds is None:
            return float(np.median(values)), math.nan, math.nan
        return float(np.median(values)), float(np.min(bounds[:, 0])), float(np.max(bounds[:, 1]))
    forward, back = (np.log, np.exp) if scale == "log" else (lambda x: x, lambda x: x)
    points = forward(values)
    mean = float(np.mean(points))
    if seeds == 1 and bounds is not None:
        return float(values[0]), float(bounds[0, 0]), float(bounds[0, 1])
    z = stats.norm.ppf(0.5 + level / 2)
    test_var = 0.0
    if bounds is not None:
        test_se = float(np.mean((forward(bounds[:, 1]) - forward(bounds[:, 0])) / (2 * z)))
        test_var = test_se**2
    seed_var = float(np.var(points, ddof=1)) / seeds if seeds > 1 else math.nan
    if math.isnan(seed_var):
        return float(back(mean)), math.nan, math.nan
    total = seed_var + test_var
    if total == 0:
        return float(back(mean)), float(back(mean)), float(back(mean))
    # Welch-Satterthwaite: only the seed part is estimated with finite (S - 1) df
    dof = math.inf if seed_var == 0 else total**2 / (seed_var**2 / (seeds - 1))
    quantile = stats.t.ppf(0.5 + level / 2, dof) if math.isfinite(dof) else z
    half = quantile * math.sqrt(total)
    return float(back(mean)), float(back(mean - half)), float(back(mean + half))


def _seed_text(row: pd.Series | dict, column: str, digits: int = 2) -> str:
    """'mean [low, high]' of an `across_seeds` row."""
    return (
        f"{_number(row[column], digits)} [{_number(row[f'{column}_low'], digits)}, "
        f"{_number(row[f'{column}_high'], digits)}]"
    )


def _compare(low: float, high: float) -> str:
    """Where an interval of a difference lies: 'above 0', 'below 0' or 'includes 0'."""
    if low > 0:
        return "above 0"
    if high < 0:
        return "below 0"
    return "includes 0"


def paired_difference(
    summary: pd.DataFrame, keys: list[str], column: str, loss: str, baseline: str
) -> pd.DataFrame:
    """Per seed and `keys` group, `column` of `loss` minus that of `baseline` (the same seed's
    run), as a summary-like frame (`seed`, keys, column) for `across_seeds`."""
    frame = summary if "seed" in summary else summary.assign(seed=0)
    index = ["seed", *keys]
    left = frame[frame.loss == loss].set_index(index)[column]
    right = frame[frame.loss == baseline].set_index(index)[column]
    return (left - right).dropna().rename(column).reset_index()


# --------------------------------------------------------------------------------------------
# Joseph et al.
# --------------------------------------------------------------------------------------------


def joseph(summary: pd.DataFrame, out_dir: Path, profile: str, tuned: bool = False) -> PaperReport:
    """Mismatches of ce, kd and label_preserving across sparsities and compressors; reduction
    factors against the paper's up to 4.1x (5.7x where the reference is right); class fairness
    and attribution agreement with and without alignment. `summary` holds one row per model and
    training seed (`seed` column; none: one seed); every number is a mean over seeds with the
    interval of SEED_RULE, and each verdict states the rule that uses it. `tuned`: the losses'
    weights were chosen on the validation split, each loss with the same number of candidates."""
    report = PaperReport("joseph", f"Joseph et al. (arXiv 2012.01604), {profile} profile")
    summary = summary if "seed" in summary else summary.assign(seed=0)
    compressed = summary[summary.role == "compressed"].copy()
    seeds = sorted(compressed.seed.unique().tolist())
    count_digits = 0 if len(seeds) == 1 else 1
    keys = ["compressor", "sparsity", "loss"]
    accuracy = across_seeds(compressed, keys, "accuracy")
    mismatches = across_seeds(compressed, keys, "mismatches").merge(
        across_seeds(compressed, keys, "mismatches_ref_correct").drop(columns="seeds"), on=keys
    )
    aligned = compressed[compressed.loss.isin(["kd", "label_preserving"])]
    factors = across_seeds(aligned, keys, "reduction_factor", scale="log").merge(
        across_seeds(aligned, keys, "reduction_factor_ref_correct", scale="log").drop(
            columns="seeds"
        ),
        on=keys,
    )
    by_model = mismatches.merge(accuracy[[*keys, "accuracy"]], on=keys)

    rows = []
    for (method, sparsity), group in by_model.groupby(["compressor", "sparsity"], sort=True):
        row: dict[str, Any] = {"compressor": method, "sparsity": sparsity}
        for _, model in group.iterrows():
            row[f"{model.loss} accuracy"] = round(model.accuracy, 4)
            row[f"{model.loss} mismatches"] = _seed_text(model, "mismatches", count_digits)
            row[f"{model.loss} ref. right"] = _seed_text(
                model, "mismatches_ref_correct", count_digits
            )
        rows.append(row)
    report.tables["mismatches"] = pd.DataFrame(rows)

    ce_counts = mismatches[mismatches.loss == "ce"].set_index(["compressor", "sparsity"])
    factor_rows = []
    for _, model in factors.merge(mismatches[[*keys, "mismatches"]], on=keys).iterrows():
        factor_rows.append(
            {
                "compressor": model.compressor,
                "sparsity": model.sparsity,
                "loss": model.loss,
                "ce mismatches": round(
                    ce_counts.loc[(model.compressor, model.sparsity), "mismatches"], 1
                ),
                "mismatches": round(model.mismatches, 1),
                "reduction": _seed_text(model, "reduction_factor"),
                "reduction, ref. right": _seed_text(model, "reduction_factor_ref_correct"),
                "paper (up to)": f"{JOSEPH_HEADLINE['all']}x / {JOSEPH_HEADLINE['ref_correct']}x",
            }
        )
    report.tables["reduction_factors"] = pd.DataFrame(factor_rows)

    columns = ["accuracy", "mismatches", "mismatches_ref_correct", "reduction_factor"]
    report.tables["per_seed"] = compressed[["seed", *keys, *columns]].sort_values(
        ["compressor", "sparsity", "loss", "seed"]
    )

    fairness_columns = {
        "worst_class_recall_change": "worst class Δ recall",
        "attribution_agreement": "attribution ρ",
    }
    fairness_means = compressed.groupby(keys, sort=True)[list(fairness_columns)].mean()
    fairness = []
    for (method, sparsity), group in fairness_means.groupby(level=[0, 1], sort=True):
        losses = group.droplevel([0, 1])
        fairness.append(
            {
                "compressor": method,
                "sparsity": sparsity,
                **{
                    f"{loss} {label}": losses.loc[loss, column]
                    for column, label in fairness_columns.items()
                    for loss in losses.index
                },
            }
        )
    report.tables["fairness_and_attributions"] = pd.DataFrame(fairness)

    figure = joseph_mismatch_figure(
        mismatches.rename(
            columns={"mismatches_low": "mismatches_ci_low", "mismatches_high": "mismatches_ci_high"}
        )
    )
    report.figures.append(save_png(figure, out_dir / "mismatches_vs_sparsity.png"))

    # verdicts
    seed_text = (
        f"{len(seeds)} training seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})"
    )
    label_preserving = factors[factors.loss == "label_preserving"]
    highest = label_preserving.loc[label_preserving.groupby("compressor").sparsity.idxmax()]
    beats = [row.reduction_factor_low > 1 for _, row in highest.iterrows()]
    at_highest = "; ".join(
        f"{row.compressor} at {row.sparsity:g}: {_seed_text(row, 'reduction_factor')}x"
        for _, row in highest.iterrows()
    )
    worth = label_preserving.merge(
        ce_counts.reset_index()[["compressor", "sparsity", "mismatches"]],
        on=["compressor", "sparsity"],
    )
    worth = worth[worth.mismatches >= 5]  # ratios of a handful of mismatches say little
    best = worth.sort_values("reduction_factor", ascending=False).head(1)
    best_text = "no level where ce left 5 or more mismatches"
    if len(best):
        row = best.iloc[0]
        best_text = (
            f"{_seed_text(row, 'reduction_factor')}x ({_seed_text(row, 'reduction_factor_ref_correct')}x "
            f"where the reference is right) with {row.compressor} at {row.sparsity:g}"
        )
    report.verdicts.append(
        f"Label-preserving alignment cuts mismatches several-fold (paper: up to 4.1x, 5.7x where the "
        f"reference is right): {_held(all(beats), any(beats))} ({at_highest}). Our largest reduction "
        f"where ce left at least 5 mismatches: {best_text}. Rule: at the highest sparsity of each "
        f"compressor the interval of the reduction factor (ce mismatches / label_preserving "
        f"mismatches, each seed against its own ce) across {seed_text} and test resampling lies "
        f"above 1."
    )
    for column, claim, measure in (
        (
            "worst_class_recall_change",
            "Alignment also improves fairness across classes",
            "the worst class's recall change with label_preserving minus that with ce",
        ),
        (
            "attribution_agreement",
            "Alignment improves agreement of attributions",
            "integrated-gradients Spearman correlation with the reference, label_preserving "
            "minus ce",
        ),
    ):
        difference = across_seeds(
            paired_difference(
                compressed, ["compressor", "sparsity"], column, "label_preserving", "ce"
            ),
            ["compressor", "sparsity"],
            column,
        )
        sides = [
            _compare(row[f"{column}_low"], row[f"{column}_high"])
            for _, row in difference.iterrows()
        ]
        not_worse = int((difference[column] >= 0).sum())
        above, below, total = sides.count("above 0"), sides.count("below 0"), len(sides)
        if total == 0:  # e.g. attribution maps off, or no compression with both losses
            report.verdicts.append(
                f"{claim}: **not judged** (no compression has {column} of both ce and label_preserving)."
            )
            continue
        report.verdicts.append(
            f"{claim}: {_held(not_worse > total / 2 and below == 0, not_worse > 0)} ({measure}: mean "
            f"over seeds ≥ 0 at {not_worse} of {total} compressions; its interval across seeds lies "
            f"above 0 at {above} and below 0 at {below}). Rule: held when the mean difference is "
            f"≥ 0 at more than half of the compressions and its interval lies below 0 at none."
        )
    tuning_text = (
        "The losses' weights were tuned on the validation split (align.tune), every loss with the "
        "same number of candidates: label_preserving and kd over their weight grids, ce (which "
        "has no weights) over as many fine-tuning seeds; each keeps the candidate with the fewest "
        "validation mismatches at no lower validation accuracy than its configured one."
        if tuned
        else "The losses' weights are their configured ones (align.tune is off)."
    )
    report.sections += [
        "## Seeds and intervals",
        "",
        f"Every configuration ran with {seed_text}: the seed moves reference training, "
        "compression and fine-tuning; the data split and the test examples stay the same. "
        f"{SEED_RULE} Each seed's own numbers are in `per_seed.csv`. {tuning_text}",
        "",
        "## Mismatches (test split; mean over seeds [interval across seeds and test resampling])",
        "",
        _markdown(report.tables["mismatches"]),
        "",
        "![mismatches vs sparsity](mismatches_vs_sparsity.png)",
        "",
        "## Reduction factors against ce, beside the paper's headline",
        "",
        _markdown(report.tables["reduction_factors"]),
        "",
        "## Fairness across classes and attribution agreement (means over seeds)",
        "",
        _markdown(report.tables["fairness_and_attributions"]),
    ]
    return report


# --------------------------------------------------------------------------------------------
# Meyer & Wong
# --------------------------------------------------------------------------------------------


def _meyer_value(metrics: dict[str, float], key: str) -> float:
    return float(metrics.get(key, float("nan")))


def _meyer_interval(metrics: dict[str, float], key: str, digits: int = 3) -> str:
    """ "value [low, high]" of a metric with `_ci_low` / `_ci_high`, the value alone without."""
    value = _meyer_value(metrics, key)
    low, high = _meyer_value(metrics, f"{key}_ci_low"), _meyer_value(metrics, f"{key}_ci_high")
    if math.isnan(low):
        return _number(value, digits)
    return f"{_number(value, digits)} [{_number(low, digits)}, {_number(high, digits)}]"


def _meyer_side(difference: float, low: float, high: float) -> str:
    """Where pw's gap change lies against ce's: "smaller" / "larger" when the paired interval of
    the difference excludes 0 (or, without an interval, by the sign), else "noise"."""
    if math.isnan(low):
        return "smaller" if difference <= 0 else "larger"
    if high < 0:
        return "smaller"
    if low > 0:
        return "larger"
    return "noise"


def meyer(
    summary: pd.DataFrame,
    metrics: dict[str, dict[str, float]],
    group: str,
    out_dir: Path,
    profile: str,
) -> PaperReport:
    """Structured (Taylor) pruning at several FLOP reductions, ce against pw: per-group accuracy
    and AUROC, the gap between groups, how pruning changes it (with paired bootstrap intervals)
    and whether pw's change differs from ce's beyond test-set noise."""
    report = PaperReport("meyer", f"Meyer & Wong (arXiv 2211.10285), {profile} profile")
    reference = metrics["reference"]
    rows = []
    compressed = summary[summary.role == "compressed"]
    values = sorted(
        {
            key.split(".")[2]
            for key in reference
            if key.startswith(f"group.{group}.")
            and key.endswith(".accuracy")
            and key.count(".") == 3
        }
    )
    seeded = "seed" in summary.columns
    order = ["sparsity", "seed", "loss"] if seeded else ["sparsity", "loss"]
    for _, model in compressed.sort_values(order).iterrows():
        model_metrics = metrics[model["name"]]
        row = {"FLOPs removed": model.sparsity}
        if seeded:
            row["seed"] = model.seed
        row.update({"loss": model.loss, "accuracy": round(model.accuracy, 4)})
        for value in values:
            row[f"accuracy {group}={value}"] = round(
                model_metrics[f"group.{group}.{value}.accuracy"], 4
            )
            if f"group.{group}.{value}.auroc" in model_metrics:
                row[f"AUROC {group}={value}"] = round(
                    model_metrics[f"group.{group}.{value}.auroc"], 4
                )
        row["gap"] = round(model_metrics[f"group.{group}.accuracy_gap"], 4)
        row["gap change vs reference"] = round(
            model_metrics[f"group.{group}.accuracy_gap_change"], 4
        )
        row["gap change [95% CI]"] = _meyer_interval(
            model_metrics, f"group.{group}.accuracy_gap_change"
        )
        if "auroc" in model_metrics:
            row["AUROC"] = round(model_metrics["auroc"], 4)
            row["AUROC change"] = round(_meyer_value(model_metrics, "auroc_change"), 4)
            row["worst class ΔAUROC"] = round(
                _meyer_value(model_metrics, "worst_class_auroc_change"), 4
            )
            for value in values:
                key = f"auroc.group.{group}.{value}"
                if key in model_metrics and f"AUROC {group}={value}" not in row:
                    row[f"AUROC {group}={value}"] = round(model_metrics[key], 4)
        rows.append(row)
    reference_row: dict[str, Any] = {"FLOPs removed": 0.0}
    if seeded:
        reference_row["seed"] = ""
    reference_row.update({"loss": "reference", "accuracy": round(reference["accuracy"], 4)})
    for value in values:
        reference_row[f"accuracy {group}={value}"] = round(
            reference[f"group.{group}.{value}.accuracy"], 4
        )
    reference_row["gap"] = round(reference[f"group.{group}.accuracy_gap"], 4)
    reference_row["gap change vs reference"] = 0.0
    if "auroc" in reference:
        reference_row["AUROC"] = round(reference["auroc"], 4)
    report.tables["groups"] = pd.DataFrame([reference_row, *rows])

    table = pd.DataFrame(rows)
    figure = meyer_group_figure(table, group)
    report.figures.append(save_png(figure, out_dir / "group_gap_vs_flops.png"))

    # ce against pw at each level and seed: pw's gap change minus ce's, paired over the same
    # bootstrap resamples of the test examples (the pw audit's `..._vs_ce`); then, per level,
    # across seeds (SEED_RULE: the interval covers the seeds and the test resampling)
    keys = ["sparsity", "seed"] if seeded else ["sparsity"]
    name = f"group.{group}.accuracy_gap_change"
    pairs = []
    for key, models in compressed.groupby(keys, sort=True):
        by_loss = models.set_index("loss")
        if not {"ce", "pw"} <= set(by_loss.index):
            continue
        ce, pw = metrics[by_loss.loc["ce", "name"]], metrics[by_loss.loc["pw", "name"]]
        difference = _meyer_value(pw, f"{name}_vs_ce")
        if math.isnan(difference):
            difference = _meyer_value(pw, name) - _meyer_value(ce, name)
        key = key if isinstance(key, tuple) else (key,)
        pairs.append(
            {
                "sparsity": key[0],
                "seed": key[1] if seeded else 0,
                "difference": difference,
                "difference_ci_low": _meyer_value(pw, f"{name}_vs_ce_ci_low"),
                "difference_ci_high": _meyer_value(pw, f"{name}_vs_ce_ci_high"),
                **{
                    f"{loss}_{part}": _meyer_value(values_of, f"{name}{suffix}")
                    for loss, values_of in (("ce", ce), ("pw", pw))
                    for part, suffix in (
                        ("change", ""),
                        ("change_ci_low", "_ci_low"),
                        ("change_ci_high", "_ci_high"),
                    )
                },
                "ce_accuracy": float(by_loss.loc["ce", "accuracy"]),
                "pw_accuracy": float(by_loss.loc["pw", "accuracy"]),
                "ce_auroc": _meyer_value(ce, "auroc"),
                "pw_auroc": _meyer_value(pw, "auroc"),
            }
        )
    comparison, sides, ce_grew = [], [], []
    if pairs:
        frame = pd.DataFrame(pairs)
        if frame[["difference_ci_low", "difference_ci_high"]].isna().any().any():
            frame = frame.drop(columns=["difference_ci_low", "difference_ci_high"])
        combined = {
            column: across_seeds(frame, ["sparsity"], column).set_index("sparsity")
            for column in (
                "difference",
                "ce_change",
                "pw_change",
                "ce_accuracy",
                "pw_accuracy",
                "ce_auroc",
                "pw_auroc",
            )
        }
        for level, row in combined["difference"].iterrows():
            difference, low, high = row["difference"], row["difference_low"], row["difference_high"]
            side = _meyer_side(difference, low, high)
            sides.append(side)
            ce_row = combined["ce_change"].loc[level]
            ce_low = ce_row["ce_change_low"]
            ce_grew.append(ce_low > 0 if not math.isnan(ce_low) else ce_row["ce_change"] > 0)
            comparison.append(
                {
                    "FLOPs removed": level,
                    "seeds": int(row["seeds"]),
                    "ce gap change [95% CI]": _seed_text(ce_row, "ce_change", 3),
                    "pw gap change [95% CI]": _seed_text(
                        combined["pw_change"].loc[level], "pw_change", 3
                    ),
                    "pw − ce [95% CI]": (
                        f"{_number(difference, 3)} [{_number(low, 3)}, {_number(high, 3)}]"
                        if not math.isnan(low)
                        else _number(difference, 3)
                    ),
                    "pw against ce": {
                        "smaller": "pw smaller",
                        "larger": "pw larger",
                        "noise": "within noise",
                    }[side],
                    **{
                        label: round(float(combined[column].loc[level, column]), 4)
                        for label, column in (
                            ("ce accuracy", "ce_accuracy"),
                            ("pw accuracy", "pw_accuracy"),
                            ("ce AUROC", "ce_auroc"),
                            ("pw AUROC", "pw_auroc"),
                        )
                    },
                }
            )
    if comparison:
        report.tables["gap_change_ce_vs_pw"] = pd.DataFrame(comparison)
        smaller = [side == "smaller" for side in sides]
        larger = sum(side == "larger" for side in sides)
        noise = sum(side == "noise" for side in sides)
        seeds = comparison[0]["seeds"]
        report.verdicts.append(
            f"The performance-weighted loss limits the bias pruning adds to a subgroup: "
            f"{_held(sum(smaller) > len(smaller) / 2, any(smaller))} ({seeds} training "
            f"seed{'s' if seeds != 1 else ''}; pw's change of the accuracy "
            f"gap between the {group} groups is below ce's at {sum(smaller)} of {len(sides)} "
            f"FLOP reductions, above it at {larger}, and the two cannot be told apart at {noise}: "
            + ", ".join(
                f"{entry['FLOPs removed']:g}: pw − ce {entry['pw − ce [95% CI]']}"
                for entry in comparison
            )
            + "). Rule: at a reduction, pw is below (above) ce when the 95% interval of "
            "(pw gap change − ce gap change) lies below (above) 0; the difference is paired "
            "over the test examples within a seed (bootstrap) and combined across seeds by the "
            "rule below; held when below at more than half of the reductions."
        )
        report.verdicts.append(
            f"Pruning with plain cross-entropy widens the gap (the premise): "
            f"{_held(sum(ce_grew) > len(ce_grew) / 2, any(ce_grew))} (the interval of ce's gap "
            f"change lies above 0 at {sum(ce_grew)} of {len(ce_grew)} reductions)."
        )
        close = [entry["pw accuracy"] >= entry["ce accuracy"] - 0.01 for entry in comparison]
        report.verdicts.append(
            f"…without costing overall accuracy: {_held(all(close), any(close))} (pw within 1 "
            f"point of ce or better, mean over seeds, at {sum(close)} of {len(close)} reductions)."
        )
        if seeded:
            report.tables["gap_change_ce_vs_pw_per_seed"] = pd.DataFrame(pairs)
    report.sections += [
        f"## The gap between the {group} groups: ce against pw",
        "",
        "Gap = the largest minus the smallest group accuracy; change = against the unpruned "
        "reference. Intervals: within a seed, 95% paired bootstrap over the test examples "
        "(every model is resampled alike); across seeds, " + SEED_RULE[len("Across seeds: ") :],
        "",
        _markdown(report.tables["gap_change_ce_vs_pw"]) if comparison else "(no ce/pw pair)",
        "",
        f"## Accuracy and AUROC by group ({group}), gap between groups and its change",
        "",
        _markdown(report.tables["groups"]),
        "",
        "![group gap vs FLOPs](group_gap_vs_flops.png)",
        "",
        "The paper gives no single headline number to set beside this table (its results are "
        "plots per dataset and pruning level); the findings above are judged by the rules they "
        "state.",
    ]
    return report


# --------------------------------------------------------------------------------------------
# Hooker et al.
# --------------------------------------------------------------------------------------------


# What each populations protocol means, for the report (flows.populations.protocol_used)
HOOKER_PROTOCOLS = {
    "from_scratch": "each pruned member trained from its own seed, gradual magnitude pruning "
    "inside its training run (Hooker et al.'s protocol)",
    "from_dense": "each pruned member is dense member k pruned, then fine-tuned (not the "
    "authors' protocol)",
}


def _hooker_impacted(impact: pd.DataFrame) -> pd.DataFrame:
    """Every class with raw p <= 0.05 at some level, with its raw and Benjamini-Hochberg adjusted
    p; `impacted` is the decision (on the adjusted p)."""
    columns = ["level", "class", "change", "t", "p", "p_adjusted", "impacted", "direction"]
    if not len(impact):
        return pd.DataFrame(columns=columns)
    if "p_adjusted" not in impact:  # a table from before BH: the raw decision, said as such
        impact = impact.assign(p_adjusted=float("nan"))
    return impact[(impact.p <= 0.05) | impact.impacted][columns]


def hooker(
    pruning: pd.DataFrame,
    impact: pd.DataFrame,
    quantization: dict[str, pd.DataFrame],
    out_dir: Path,
    profile: str,
    protocol: str | None = None,
) -> PaperReport:
    """PIE counts vs sparsity, PIE vs non-PIE accuracy, impacted classes vs sparsity (decided on
    Benjamini-Hochberg adjusted p, raw p beside), quantization against pruning; mean top-1 by
    sparsity beside the paper's ImageNet figures; `protocol` (from_scratch | from_dense) says how
    the pruned members were made."""
    report = PaperReport("hooker", f"Hooker et al. (arXiv 1911.05248), {profile} profile")
    pruning = pruning.sort_values("level")
    if "impacted_classes_raw" not in pruning:
        pruning = pruning.assign(impacted_classes_raw=pruning.impacted_classes)
    table = pruning[
        [
            "level",
            "loss",
            "pie_count",
            "pie_fraction",
            "reference_top1_on_pies",
            "reference_top1_on_rest",
            "compressed_top1_on_pies",
            "compressed_top1_on_rest",
            "compressed_top1",
            "impacted_classes",
            "impacted_classes_raw",
            "impacted",
        ]
    ].copy()
    table["paper ImageNet top-1 (ResNet-50)"] = [
        HOOKER_TOP1.get(round(level, 1), float("nan")) for level in table.level
    ]
    report.tables["pies_by_sparsity"] = table
    rows = [
        {
            "compression": f"gradual magnitude {row.level:g}",
            "PIEs": row.pie_count,
            "fraction": row.pie_fraction,
            "compressed top-1": row.compressed_top1,
        }
        for row in pruning.itertuples()
    ]
    for method, frame in quantization.items():
        row = frame.iloc[0]
        rows.append(
            {
                "compression": method,
                "PIEs": row.pie_count,
                "fraction": row.pie_fraction,
                "compressed top-1": row.compressed_top1,
            }
        )
    report.tables["quantization_vs_pruning"] = pd.DataFrame(rows)
    if len(impact):
        report.tables["impacted_classes"] = _hooker_impacted(impact)

    figure = hooker_pie_figure(pruning, quantization)
    report.figures.append(save_png(figure, out_dir / "pies_vs_sparsity.png"))

    counts = pruning.pie_count.to_numpy()
    increasing = bool(np.all(np.diff(counts) >= 0))
    report.verdicts.append(
        f"PIEs grow with sparsity: {_held(increasing, counts[-1] > counts[0])} (PIE counts "
        + ", ".join(f"{row.level:g}: {row.pie_count}" for row in pruning.itertuples())
        + ")."
    )
    with_pies = pruning[pruning.pie_count > 0]
    harder = (with_pies.reference_top1_on_pies < with_pies.reference_top1_on_rest).tolist()
    report.verdicts.append(
        f"PIEs are harder examples (the dense population is less accurate on them than on the rest, "
        f"and removing them raises top-1): {_held(all(harder) and len(harder) > 0, any(harder))} "
        f"({sum(harder)} of {len(harder)} levels with PIEs)."
    )
    impacted = pruning.impacted_classes.to_numpy()
    report.verdicts.append(
        f"More classes are disparately impacted at higher sparsity: {_held(impacted[-1] > impacted[0], impacted[-1] >= impacted[0])} "
        f"(classes with Benjamini-Hochberg adjusted p <= 0.05: "
        + ", ".join(f"{row.level:g}: {row.impacted_classes}" for row in pruning.itertuples())
        + "; with raw p <= 0.05, the authors' rule: "
        + ", ".join(f"{row.level:g}: {row.impacted_classes_raw}" for row in pruning.itertuples())
        + ")."
    )
    if quantization:
        highest = int(counts[-1])
        fewer = {
            method: int(frame.pie_count.iloc[0]) < highest for method, frame in quantization.items()
        }
        report.verdicts.append(
            f"Quantization harms fewer examples than high sparsity: {_held(all(fewer.values()), any(fewer.values()))} ("
            + ", ".join(
                f"{method}: {int(frame.pie_count.iloc[0])} PIEs"
                for method, frame in quantization.items()
            )
            + f", against {highest} at {pruning.level.iloc[-1]:g} sparsity)."
        )
    described = HOOKER_PROTOCOLS.get(protocol or "", "not recorded")
    report.sections += [
        f"Protocol: {protocol or 'unknown'}: {described}. Modal labels break ties to the largest "
        "label (their `mode().max()`); a class's normalised recall is its recall minus the "
        "population's mean top-1 at that level; Welch's t-test per class and level, decided on "
        "Benjamini-Hochberg adjusted p over every class x level (raw p beside it).",
        "",
        "## PIEs by sparsity, beside the paper's ImageNet top-1 by sparsity",
        "",
        _markdown(report.tables["pies_by_sparsity"]),
        "",
        "![PIEs vs sparsity](pies_vs_sparsity.png)",
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
