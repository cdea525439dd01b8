"""The paper builders of `compalign reproduce` on simulated runs (compalign.verdicts.simulate):
a report opens with what was run and the rule table, judges every finding by its rule, never
gives a count an interval below 0, and shows the noise floors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from compalign.report import papers as paper_reports
from compalign.verdicts import simulate
from compalign.verdicts.evidence import Outcomes, SeedRunsEvidence


def record(paper: str, seeds: int = 3) -> paper_reports.RunRecord:
    return paper_reports.RunRecord(
        paper=paper,
        profile="cpu",
        profile_file=f"profiles/{paper}-cpu.yaml",
        dataset="digits",
        image="8x8, 1 channel",
        splits={"train": 1078, "val": 269, "test": 450},
        classes=10,
        model="small_cnn",
        reference_epochs=30,
        align_epochs=20,
        seeds=seeds,
        members=8,
        code="compalign 0.1.0, commit abc",
        torch="2.14.1",
        threads="reference 2, compressed models 1",
        cpu_kernels="AVX512",
        host="x86_64, 2 cores",
        wall_seconds=600.0,
        started="2026-12-07 08:00 UTC",
        overrides=["reproduce.seeds=3"],
        data_digest="0123456789ab",
    )


def joseph_summary(evidence: SeedRunsEvidence) -> pd.DataFrame:
    rows = []
    for seed in evidence.seeds:
        for compressor, level, loss in evidence.models:
            rows.append(
                {
                    "seed": seed,
                    "name": f"{compressor}-{level}-{loss}",
                    "role": "compressed",
                    "compressor": compressor,
                    "sparsity": level,
                    "loss": loss,
                    "accuracy": 0.95,
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def joseph_evidence():
    design = simulate.JosephDesign(
        ce_mismatches={("magnitude_global", 0.95): 4.0, ("magnitude_global", 0.98): 40.0}
    )
    return simulate.joseph_draw(design, np.random.default_rng(7), reduction=6.0)


def test_joseph_opens_with_what_was_run_then_the_rules_then_the_verdicts(tmp_path, joseph_evidence):
    report = paper_reports.joseph(
        joseph_summary(joseph_evidence), joseph_evidence, tmp_path, record("joseph")
    )
    names = {path.name for path in report.write(tmp_path)}
    assert {
        "README.md",
        "mismatches.csv",
        "noise_floor.csv",
        "reduction_factors.csv",
        "per_seed.csv",
        "mismatches_vs_sparsity.png",
    } <= names
    readme = (tmp_path / "README.md").read_text()
    run, rules, findings = (
        readme.index(s) for s in ("## What was run", "## The rules", "## Findings")
    )
    assert run < rules < findings
    for fact in (
        "digits, 8x8",
        "450",
        "small_cnn",
        "reference 30 epochs",
        "3 training seeds",
        "profiles/joseph-cpu.yaml",
        "commit abc",
        "torch 2.14.1",
        "AVX512",
        "10.0 min",
        "CIFAR-10",
    ):
        assert fact in readme.split("## The rules")[0], fact
    assert "Holm over every (compressor, level) cell" in readme
    direction, size = report.judged[0], report.judged[1]
    assert direction.held and "magnitude_global 0.98" in direction.detail
    assert size.status in ("size reached", "size not reached", "not judged")
    assert all(verdict in readme for verdict in report.verdicts)


def test_joseph_counts_never_get_an_interval_below_zero(tmp_path, joseph_evidence):
    report = paper_reports.joseph(
        joseph_summary(joseph_evidence), joseph_evidence, tmp_path, record("joseph")
    )
    cells = report.tables["mismatches"].filter(like="mismatches").to_numpy().ravel()
    lows = [float(cell.split("[")[1].split(",")[0]) for cell in cells]
    assert min(lows) >= 0
    assert "disagree on" in "\n".join(report.sections)  # the noise floor, beside the counts


def test_joseph_with_label_preserving_identical_to_ce_holds_nothing(tmp_path, joseph_evidence):
    models = dict(joseph_evidence.models)
    for (compressor, level, loss), outcomes in joseph_evidence.models.items():
        if loss == "ce":
            models[(compressor, level, "label_preserving")] = Outcomes(
                outcomes.predictions.copy(), attribution=outcomes.attribution
            )
    same = SeedRunsEvidence(
        joseph_evidence.labels, 10, joseph_evidence.seeds, joseph_evidence.reference, models
    )
    report = paper_reports.joseph(joseph_summary(same), same, tmp_path, record("joseph"))
    assert all(
        "**did not hold**" in verdict or "**not judged**" in verdict for verdict in report.verdicts
    )


def test_joseph_with_one_seed_judges_nothing(tmp_path):
    evidence = simulate.joseph_draw(simulate.JosephDesign(seeds=1), np.random.default_rng(1))
    report = paper_reports.joseph(joseph_summary(evidence), evidence, tmp_path, record("joseph", 1))
    assert all("**not judged** (needs >= 2 training seeds" in v for v in report.verdicts)
    assert "noise_floor" not in report.tables  # one reference: no pair to compare


def meyer_inputs(evidence: SeedRunsEvidence):
    rows, metrics = (
        [],
        {"reference": {"group.rare.0.accuracy": 0.99, "group.rare.1.accuracy": 0.97}},
    )
    for seed in evidence.seeds:
        for compressor, level, loss in evidence.models:
            name = f"{compressor}-{level}-{loss}@seed{seed}"
            rows.append(
                {
                    "seed": seed,
                    "name": name,
                    "role": "compressed",
                    "compressor": compressor,
                    "sparsity": level,
                    "loss": loss,
                    "accuracy": 0.95,
                }
            )
            metrics[name] = {
                "group.rare.0.accuracy": 0.98,
                "group.rare.1.accuracy": 0.9,
                "group.rare.accuracy_gap": 0.08,
                "group.rare.accuracy_gap_change": 0.06,
                "auroc": 0.99,
            }
    return pd.DataFrame(rows), metrics


def test_meyer_judges_the_gap_auroc_and_accuracy_beside_the_floor(tmp_path):
    evidence = simulate.meyer_draw(simulate.MeyerDesign(), np.random.default_rng(3), pw_share=0.2)
    summary, metrics = meyer_inputs(evidence)
    report = paper_reports.meyer(summary, metrics, evidence, "rare", tmp_path, record("meyer"))
    names = {path.name for path in report.write(tmp_path)}
    assert {
        "gap.csv",
        "premise.csv",
        "accuracy.csv",
        "auroc_gap.csv",
        "class_auroc.csv",
        "mismatches.csv",
        "groups.csv",
        "README.md",
    } <= names
    keys = [verdict.rule.key for verdict in report.judged]
    assert keys == [
        "meyer.gap",
        "meyer.premise",
        "meyer.accuracy",
        "meyer.auroc_gap",
        "meyer.class_auroc",
    ]
    assert report.judged[0].held  # pw loses a fifth of ce's margin: a smaller gap
    readme = (tmp_path / "README.md").read_text()
    assert "AUROC" in readme.split("## Findings")[1] and "disagree on" in readme


def test_hooker_shows_the_floor_and_judges_by_permutation(tmp_path):
    evidence = simulate.hooker_draw(simulate.HookerDesign(), np.random.default_rng(5), True)
    pruning = pd.DataFrame(
        {
            "level": evidence.levels,
            "loss": "ce",
            "reference_top1_on_pies": 0.5,
            "reference_top1_on_rest": 0.99,
            "compressed_top1_on_pies": 0.3,
            "compressed_top1_on_rest": 0.98,
        }
    )
    impact = pd.DataFrame(
        {
            "level": [0.9],
            "class": ["0"],
            "change": [-0.1],
            "t": [5.0],
            "p": [0.001],
            "p_adjusted": [0.04],
            "impacted": [True],
            "direction": ["worse"],
        }
    )
    report = paper_reports.hooker(
        pruning, impact, {}, evidence, tmp_path, record("hooker"), protocol="from_scratch"
    )
    names = {path.name for path in report.write(tmp_path)}
    assert {
        "pies_by_sparsity.csv",
        "quantization_vs_pruning.csv",
        "impacted_classes.csv",
        "pies_vs_sparsity.png",
    } <= names
    table = pd.read_csv(tmp_path / "pies_by_sparsity.csv")
    assert table.population.iloc[0] == "second dense (noise floor)"
    assert list(table["paper ImageNet top-1 (ResNet-50)"])[1:] == [76.46, 75.87, 75.02, 72.57]
    assert [v.rule.key for v in report.judged] == [
        "hooker.pies",
        "hooker.classes",
        "hooker.quantization",
    ]
    assert report.judged[0].held and "permutation p" in report.judged[0].detail
    assert "**not judged** (true by construction" in report.verdicts[-1]
    quantized = pd.read_csv(tmp_path / "quantization_vs_pruning.csv")
    assert "PIEs, of the same members (authors') [95% CI]" in quantized.columns


def test_joseph_compares_every_other_loss_of_the_run_against_ce(tmp_path, joseph_evidence):
    """focal_distillation here a copy of ce (factor 1) and pw of label_preserving: each beside
    ce on the same seeds and test examples, in the "Losses compared" section and its CSV."""
    models = dict(joseph_evidence.models)
    for (compressor, level, loss), outcomes in joseph_evidence.models.items():
        copies = {"ce": "focal_distillation", "label_preserving": "pw"}
        if loss in copies:
            models[(compressor, level, copies[loss])] = Outcomes(
                outcomes.predictions.copy(), attribution=outcomes.attribution
            )
    more = SeedRunsEvidence(
        joseph_evidence.labels, 10, joseph_evidence.seeds, joseph_evidence.reference, models
    )
    report = paper_reports.joseph(joseph_summary(more), more, tmp_path, record("joseph"))
    table = report.tables["losses_compared"].set_index(["sparsity", "loss"])
    paper = {loss for *_, loss in joseph_evidence.models} - {"none"}
    assert set(table.index.get_level_values("loss")) == paper | {"focal_distillation", "pw"}
    assert table.loc[(0.98, "focal_distillation"), "vs ce"].startswith("1.00x [")
    assert table.loc[(0.98, "pw"), "vs ce"] == table.loc[(0.98, "label_preserving"), "vs ce"]
    assert table.loc[(0.98, "ce"), "vs ce"] == "–"
    text = "\n".join(report.sections)
    assert "## Losses compared" in text and "then focal_distillation, pw." in text
    # the paper's verdicts are label_preserving's: the other losses change none of them
    plain = paper_reports.joseph(
        joseph_summary(joseph_evidence), joseph_evidence, tmp_path, record("joseph")
    )
    assert report.verdicts == plain.verdicts


def test_joseph_with_the_papers_losses_only_says_how_to_compare_others(tmp_path, joseph_evidence):
    report = paper_reports.joseph(
        joseph_summary(joseph_evidence), joseph_evidence, tmp_path, record("joseph")
    )
    assert "losses_compared" not in report.tables
    text = "\n".join(report.sections)
    section = text[text.index("## Losses compared") :]
    assert "align.losses=[ce,kd,label_preserving,focal_distillation,pw]" in section
    assert "bench/losses.py compare" in section
