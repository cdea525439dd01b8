"""The paper builders of `compalign reproduce` on made-up results: files, tables and verdicts
that follow the numbers (a finding that fails in the data is reported as not held)."""

from __future__ import annotations

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
