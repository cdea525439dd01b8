"""The paper builders of `compalign reproduce` on made-up results: files, tables and verdicts
that follow the numbers (a finding that fails in the data is reported as not held)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from compalign.report import papers as paper_reports

LOSSES = ("ce", "kd", "label_preserving")


def joseph_summary(lp_mismatches: int) -> pd.DataFrame:
    """Two compressors at two sparsities; ce leaves 20 mismatches, kd 15, label_preserving
    `lp_mismatches`, with intervals of +-2 and reduction factors against ce."""
    rows = []
    for compressor in ("magnitude_global", "magnitude_layerwise"):
        for sparsity in (0.9, 0.98):
            for loss, count in zip(LOSSES, (20, 15, lp_mismatches), strict=True):
                factor = 20 / count
                rows.append(
                    {
                        "name": f"{compressor}-{sparsity}-{loss}",
                        "role": "compressed",
                        "compressor": compressor,
                        "sparsity": sparsity,
                        "loss": loss,
                        "accuracy": 0.95,
                        "mismatches": count,
                        "mismatches_ci_low": count - 2,
                        "mismatches_ci_high": count + 2,
                        "mismatches_ref_correct": count - 1,
                        "mismatches_ref_correct_ci_low": count - 3,
                        "mismatches_ref_correct_ci_high": count + 1,
                        "reduction_factor": factor,
                        "reduction_factor_ci_low": 20 / (count + 2),
                        "reduction_factor_ci_high": 20 / (count - 2),
                        "reduction_factor_ref_correct": factor,
                        "reduction_factor_ref_correct_ci_low": 20 / (count + 2),
                        "reduction_factor_ref_correct_ci_high": 20 / (count - 2),
                        "worst_class_recall_change": -count / 100,
                        "attribution_agreement": 1 - count / 100,
                    }
                )
    return pd.DataFrame(rows)


def test_joseph_writes_tables_figure_and_verdicts(tmp_path):
    report = paper_reports.joseph(joseph_summary(5), tmp_path, "cpu")
    files = report.write(tmp_path)
    names = {path.name for path in files}
    assert {
        "README.md",
        "mismatches.csv",
        "mismatches.md",
        "reduction_factors.csv",
        "reduction_factors.md",
        "fairness_and_attributions.csv",
        "mismatches_vs_sparsity.png",
    } <= names
    assert all(path.is_file() and path.stat().st_size > 0 for path in files)
    factors = pd.read_csv(tmp_path / "reduction_factors.csv")
    lp = factors[factors.loss == "label_preserving"]
    assert (lp.reduction.str.startswith("4.00 [2.86, 6.67]")).all()
    assert (factors["paper (up to)"] == "4.1x / 5.7x").all()
    readme = (tmp_path / "README.md").read_text()
    assert readme.count("**held**") == 3
    assert "4.00 [2.86, 6.67]x" in readme


def test_joseph_reports_a_loss_that_does_not_help_as_not_held(tmp_path):
    report = paper_reports.joseph(joseph_summary(30), tmp_path, "cpu")
    assert all("**did not hold**" in verdict for verdict in report.verdicts)


def meyer_inputs(pw_gap_change: float):
    levels = (0.3, 0.5)
    reference = {"accuracy": 0.95, "group.rare.0.accuracy": 0.98, "group.rare.1.accuracy": 0.8}
    reference["group.rare.accuracy_gap"] = 0.18
    rows, metrics = [], {"reference": reference}
    for level in levels:
        for loss, change in (("ce", 0.02), ("pw", pw_gap_change)):
            name = f"structured-{level}-{loss}"
            rows.append(
                {
                    "name": name,
                    "role": "compressed",
                    "sparsity": level,
                    "loss": loss,
                    "accuracy": 0.94,
                }
            )
            metrics[name] = {
                "group.rare.0.accuracy": 0.97,
                "group.rare.1.accuracy": 0.97 - 0.18 - change,
                "group.rare.accuracy_gap": 0.18 + change,
                "group.rare.accuracy_gap_change": change,
            }
    return pd.DataFrame(rows), metrics


@pytest.mark.parametrize(
    ("pw_change", "verdict"), [(-0.01, "**held**"), (0.05, "**did not hold**")]
)
def test_meyer_judges_the_gap_change_of_pw_against_ce(tmp_path, pw_change, verdict):
    summary, metrics = meyer_inputs(pw_change)
    report = paper_reports.meyer(summary, metrics, "rare", tmp_path, "cpu")
    files = {path.name for path in report.write(tmp_path)}
    assert {"README.md", "groups.csv", "groups.md", "group_gap_vs_flops.png"} <= files
    groups = pd.read_csv(tmp_path / "groups.csv")
    assert list(groups.loss) == ["reference", "ce", "pw", "ce", "pw"]
    assert groups.loc[groups.loss == "pw", "gap change vs reference"].eq(pw_change).all()
    assert (
        report.verdicts[0].startswith("The performance-weighted loss")
        and verdict in (report.verdicts[0])
    )
    assert "**held**" in report.verdicts[1]  # equal accuracy


@pytest.mark.parametrize(
    ("interval", "side", "verdict"),
    [
        ((-0.05, -0.01), "pw smaller", "**held**"),
        ((-0.05, 0.02), "within noise", "**did not hold**"),
    ],
)
def test_meyer_judges_pw_against_ce_by_the_paired_interval(tmp_path, interval, side, verdict):
    """With bootstrap intervals, pw's smaller gap change counts only where the paired interval
    of (pw change - ce change) lies below 0; an interval across 0 is noise."""
    summary, metrics = meyer_inputs(-0.01)
    for name, values in metrics.items():
        if name.endswith("-pw"):
            values["group.rare.accuracy_gap_change_vs_ce"] = -0.03
            values["group.rare.accuracy_gap_change_vs_ce_ci_low"] = interval[0]
            values["group.rare.accuracy_gap_change_vs_ce_ci_high"] = interval[1]
        if name.endswith("-ce"):
            values["group.rare.accuracy_gap_change_ci_low"] = 0.01
            values["group.rare.accuracy_gap_change_ci_high"] = 0.04
        if name != "reference":
            values["auroc"] = 0.97
    report = paper_reports.meyer(summary, metrics, "rare", tmp_path, "cpu")
    report.write(tmp_path)
    table = pd.read_csv(tmp_path / "gap_change_ce_vs_pw.csv")
    assert table["pw against ce"].tolist() == [side, side]
    assert table["ce gap change [95% CI]"].tolist()[0] == "0.020 [0.010, 0.040]"
    assert verdict in report.verdicts[0] and "Rule:" in report.verdicts[0]
    assert "**held**" in report.verdicts[1]  # ce's gap grew beyond noise at both levels
    assert (table["pw AUROC"] == 0.97).all()


def test_meyer_combines_seeds_into_one_interval_per_level(tmp_path):
    """With several training seeds, each level's pw - ce comes from across_seeds over the seeds'
    paired bootstrap intervals: seeds that disagree widen the interval to include 0, so a level
    that one seed alone would call "pw smaller" is noise across seeds."""
    frames, metrics = [], {}
    for seed, difference in ((0, -0.03), (1, 0.04), (2, -0.01)):
        summary, seed_metrics = meyer_inputs(-0.01)
        suffix = "" if seed == 0 else f"@seed{seed}"
        summary["name"] = summary["name"] + suffix
        summary["seed"] = seed
        frames.append(summary)
        for name, values in seed_metrics.items():
            if name.endswith("-pw"):
                values["group.rare.accuracy_gap_change_vs_ce"] = difference
                values["group.rare.accuracy_gap_change_vs_ce_ci_low"] = difference - 0.01
                values["group.rare.accuracy_gap_change_vs_ce_ci_high"] = difference + 0.01
            metrics[name if name == "reference" else name + suffix] = values
    report = paper_reports.meyer(pd.concat(frames), metrics, "rare", tmp_path, "cpu")
    report.write(tmp_path)
    table = pd.read_csv(tmp_path / "gap_change_ce_vs_pw.csv")
    assert table["seeds"].tolist() == [3, 3]
    assert table["pw against ce"].tolist() == ["within noise", "within noise"]
    point, low, high = paper_reports._seed_interval(
        np.array([-0.03, 0.04, -0.01]),
        np.array([[-0.04, -0.02], [0.03, 0.05], [-0.02, 0.0]]),
        0.95,
        "linear",
    )
    assert table["pw − ce [95% CI]"][0] == f"{point:.3f} [{low:.3f}, {high:.3f}]"
    assert "3 training seeds" in report.verdicts[0] and "**did not hold**" in report.verdicts[0]
    assert len(pd.read_csv(tmp_path / "gap_change_ce_vs_pw_per_seed.csv")) == 6


def test_hooker_tables_and_verdicts_follow_the_counts(tmp_path):
    pruning = pd.DataFrame(
        {
            "level": [0.3, 0.9],
            "loss": ["ce", "ce"],
            "pie_count": [1, 12],
            "pie_fraction": [1 / 450, 12 / 450],
            "reference_top1_on_pies": [0.5, 0.7],
            "reference_top1_on_rest": [0.99, 0.99],
            "compressed_top1_on_pies": [0.2, 0.3],
            "compressed_top1_on_rest": [0.99, 0.98],
            "compressed_top1": [0.99, 0.97],
            "impacted_classes": [0, 1],
            "impacted_classes_raw": [0, 2],
            "impacted": ["", "9 (-0.080, p=0.001, p_BH=0.003)"],
        }
    )
    impact = pd.DataFrame(
        {
            "level": [0.9, 0.9, 0.9],
            "class": [9, 4, 1],
            "change": [-0.08, 0.02, 0.0],
            "t": [-7.0, 3.0, 0.1],
            "p": [0.001, 0.01, 0.9],
            "p_adjusted": [0.003, 0.06, 0.9],
            "direction": ["worse", "", ""],
            "impacted": [True, False, False],
        }
    )
    quantization = {
        "quantize_dynamic": pruning.iloc[[0]].assign(pie_count=0),
        "half (float16)": pruning.iloc[[0]].assign(pie_count=15),
    }
    report = paper_reports.hooker(
        pruning, impact, quantization, tmp_path, "cpu", protocol="from_scratch"
    )
    files = {path.name for path in report.write(tmp_path)}
    assert {
        "pies_by_sparsity.csv",
        "quantization_vs_pruning.md",
        "impacted_classes.csv",
        "pies_vs_sparsity.png",
        "README.md",
    } <= files
    table = pd.read_csv(tmp_path / "pies_by_sparsity.csv")
    assert list(table["paper ImageNet top-1 (ResNet-50)"]) == [76.46, 72.57]
    impacted_table = pd.read_csv(tmp_path / "impacted_classes.csv")
    assert len(impacted_table) == 2  # raw p <= 0.05 only
    # the decision is on the Benjamini-Hochberg adjusted p, shown beside the raw one
    assert impacted_table.impacted.tolist() == [True, False]
    assert impacted_table.p_adjusted.tolist() == [0.003, 0.06]
    growth, harder, impacted, quantized = report.verdicts
    assert "**held**" in growth and "1, 0.9: 12" in growth
    assert "**held**" in harder and "2 of 2" in harder
    assert "**held**" in impacted and "adjusted p <= 0.05: 0.3: 0, 0.9: 1" in impacted
    assert "raw p <= 0.05, the authors' rule: 0.3: 0, 0.9: 2" in impacted
    readme = (tmp_path / "README.md").read_text()
    assert "Protocol: from_scratch: each pruned member trained from its own seed" in readme
    # one quantizer harms more examples than the highest sparsity: only partly held
    assert "**partly held**" in quantized and "half (float16): 15 PIEs" in quantized


def seeded(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat([frame.assign(seed=seed) for seed, frame in enumerate(frames)])


def test_across_seeds_combines_seed_spread_with_test_resampling():
    """mean ± t(ν) √(s²/S + SE²), SE from the mean bootstrap interval width, ν by
    Welch-Satterthwaite: checked against the formula worked by hand."""
    from scipy import stats

    summary = pd.DataFrame(
        {
            "seed": [0, 1, 2],
            "loss": "ce",
            "mismatches": [10.0, 12.0, 14.0],
            "mismatches_ci_low": [6.0, 8.0, 10.0],
            "mismatches_ci_high": [14.0, 16.0, 18.0],
        }
    )
    row = paper_reports.across_seeds(summary, ["loss"], "mismatches").iloc[0]
    seed_var, test_var = 4.0 / 3, (8 / (2 * stats.norm.ppf(0.975))) ** 2
    dof = (seed_var + test_var) ** 2 / (seed_var**2 / 2)
    half = stats.t.ppf(0.975, dof) * (seed_var + test_var) ** 0.5
    assert row.seeds == 3 and row.mismatches == 12.0 and row.mismatches_sd == 2.0
    assert row.mismatches_low == pytest.approx(12 - half)
    assert row.mismatches_high == pytest.approx(12 + half)
    # wider than any one seed's bootstrap interval: the seeds' spread is in it
    assert row.mismatches_high - row.mismatches_low > 8
    # one seed: its own bootstrap interval; a ratio on the log scale: the geometric mean
    one = paper_reports.across_seeds(summary[summary.seed == 1], ["loss"], "mismatches").iloc[0]
    assert (one.mismatches, one.mismatches_low, one.mismatches_high) == (12.0, 8.0, 16.0)
    ratios = summary.rename(columns=lambda c: c.replace("mismatches", "reduction_factor"))
    ratio = paper_reports.across_seeds(ratios, ["loss"], "reduction_factor", scale="log")
    assert ratio.reduction_factor.iloc[0] == pytest.approx((10 * 12 * 14) ** (1 / 3))
    # no mismatches left (an infinite ratio): the union of the seeds' intervals
    ratios.loc[0, ["reduction_factor", "reduction_factor_ci_high"]] = float("inf")
    union = paper_reports.across_seeds(ratios, ["loss"], "reduction_factor", scale="log").iloc[0]
    assert (union.reduction_factor_low, union.reduction_factor_high) == (6.0, float("inf"))


def test_joseph_judges_the_headline_on_every_seed(tmp_path):
    """Two seeds where label_preserving cuts mismatches 4x and one where it does worse than ce:
    one seed alone would say held; across the three seeds the interval reaches below 1."""
    good = joseph_summary(5)
    report = paper_reports.joseph(seeded([good, good, good]), tmp_path, "cpu")
    assert "**held**" in report.verdicts[0] and "3 training seeds (0, 1, 2)" in report.verdicts[0]
    assert "4.00 [" in report.verdicts[0]
    bad = seeded([good, good, joseph_summary(30)])
    report = paper_reports.joseph(bad, tmp_path, "cpu")
    assert "**did not hold**" in report.verdicts[0]
    factors = report.tables["reduction_factors"]
    low = float(factors.reduction.iloc[-1].split("[")[1].split(",")[0])
    assert low < 1
    assert len(report.tables["per_seed"]) == len(bad)
    assert "Welch–Satterthwaite" in "\n".join(report.sections)


def test_joseph_without_attribution_maps_does_not_judge_attributions(tmp_path):
    summary = joseph_summary(5).assign(attribution_agreement=float("nan"))
    report = paper_reports.joseph(summary, tmp_path, "cpu")
    assert "**held**" in report.verdicts[0]
    assert "**not judged**" in report.verdicts[2] and "attribution" in report.verdicts[2]
