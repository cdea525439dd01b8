"""compalign/report/headline.py: the per-loss headline and the model of each loss that changed
its reference least at the highest level."""

from __future__ import annotations

import math

import pandas as pd

from compalign.report.headline import (
    fewest_mismatches_per_loss,
    headline_markdown,
    highest_level,
    populations_headline,
)

NAN = math.nan


def summary() -> pd.DataFrame:
    rows = [("reference", "reference", "none", 0.0, "none", "none", 0.9, NAN, NAN, NAN)]
    for compressor, level, loss, accuracy, mismatches, ref_correct in [
        ("magnitude_global", 0.5, "ce", 0.88, 10, 8),
        ("magnitude_global", 0.9, "ce", 0.80, 30, 25),
        ("magnitude_global", 0.9, "kd", 0.82, 20, 15),
        ("random_unstructured", 0.7, "kd", 0.70, 40, 12),  # its compressor's highest level
        ("random_unstructured", 0.7, "ce", 0.72, 35, 30),
        ("quantize_dynamic", 0.0, "none", 0.89, 3, 2),
    ]:
        kind = "none" if compressor.startswith("quantize") else "weight_sparsity"
        name = compressor if kind == "none" else f"{compressor}-{level:g}"
        rows.append(
            (
                f"{name}-{loss}",
                "compressed",
                compressor,
                level,
                kind,
                loss,
                accuracy,
                mismatches,
                ref_correct,
                accuracy - 0.9,
            )
        )
    frame = pd.DataFrame(
        rows,
        columns=[
            "name",
            "role",
            "compressor",
            "sparsity",
            "level_kind",
            "loss",
            "accuracy",
            "mismatches",
            "mismatches_ref_correct",
            "accuracy_change",
        ],
    )
    frame["mismatches_ci_low"] = frame["mismatches"] - 2
    frame["mismatches_ci_high"] = frame["mismatches"] + 2
    return frame


def test_highest_level_is_per_compressor_and_a_quantizer_has_one():
    names = sorted(highest_level(summary())["name"])
    assert names == [
        "magnitude_global-0.9-ce",
        "magnitude_global-0.9-kd",
        "quantize_dynamic-none",
        "random_unstructured-0.7-ce",
        "random_unstructured-0.7-kd",
    ]


def test_fewest_mismatches_where_the_reference_is_right_per_loss():
    assert fewest_mismatches_per_loss(summary()) == {
        "kd": "random_unstructured-0.7-kd",  # 12 < 15, though it has more mismatches overall
        "ce": "magnitude_global-0.9-ce",
        "none": "quantize_dynamic-none",
    }


def test_ties_go_to_fewer_mismatches_overall():
    frame = summary()
    frame.loc[frame["name"] == "random_unstructured-0.7-kd", "mismatches_ref_correct"] = 15
    assert fewest_mismatches_per_loss(frame)["kd"] == "magnitude_global-0.9-kd"


def test_headline_lists_each_loss_at_the_highest_level_with_intervals():
    text = headline_markdown(summary(), "digits / small_cnn")
    assert text.startswith("## digits / small_cnn")
    assert "Reference accuracy: 0.9000." in text
    assert "| magnitude_global 0.9 | kd | 0.8200 | -0.0800 | 20 [18, 22] | 15 |" in text
    assert "| quantize_dynamic | none |" in text
    assert "magnitude_global 0.5" not in text
    assert "**quantize_dynamic-none** (2)" in text


def test_populations_headline_shows_the_highest_level():
    frame = pd.DataFrame(
        {
            "level": [0.5, 0.9, 0.9],
            "loss": ["ce", "ce", "kd"],
            "pie_count": [3, 9, 7],
            "pie_fraction": [0.015, 0.045, 0.035],
            "compressed_top1": [0.9, 0.8, 0.82],
            "impacted_classes": [0, 2, 1],
            "reference_top1": [0.93] * 3,
        }
    )
    text = populations_headline(frame, "PIEs")
    assert "| 0.9 | ce | 9 | 0.0450 | 0.8000 | 2 |" in text
    assert "| 0.5 |" not in text


def test_a_summary_without_losses_has_a_headline_per_model():
    frame = summary().drop(columns=["compressor", "loss", "level_kind", "sparsity"])
    frame["role"] = ["reference"] + ["candidate"] * (len(frame) - 1)
    assert fewest_mismatches_per_loss(frame) == {}
    text = headline_markdown(frame, "models you bring")
    assert "| magnitude_global-0.9-kd | – | 0.8200 |" in text


def test_the_audit_headline_speaks_of_candidates_and_the_gate_with_specs_as_code():
    """The audit's headline (Prefect artifact, MLflow description): per candidate what it
    changed and its gate result, then every rule; a spec's `@` never becomes a mail link."""
    from compalign.gate import parse_rule, verdicts
    from compalign.report.headline import audit_headline

    frame = pd.DataFrame(
        [
            {
                "name": "reference",
                "role": "reference",
                "spec": "torchvision:resnet18@w.pt",
                "accuracy": 0.98,
            },
            {
                "name": "reference2",
                "role": "reference2",
                "spec": "torchvision:resnet18@w1.pt",
                "accuracy": 0.97,
                "mismatches": 10.0,
                "mismatches_ci_low": 5.0,
                "mismatches_ci_high": 16.0,
            },
            {
                "name": "int8",
                "role": "candidate",
                "spec": "int8.onnx",
                "accuracy": 0.98,
                "accuracy_change": 0.0,
                "mismatches": 0.0,
                "mismatches_ref_correct": 0.0,
            },
            {
                "name": "pruned",
                "role": "candidate",
                "spec": "p.pt2",
                "accuracy": 0.9,
                "accuracy_change": -0.08,
                "mismatches": 39.0,
                "mismatches_ref_correct": 34.0,
            },
        ]
    )
    found = verdicts(
        [parse_rule("mismatches<=20")],
        {"int8": {"mismatches": 0.0}, "pruned": {"mismatches": 39.0}},
    )
    text = audit_headline(frame, "digits: against torchvision:resnet18@w.pt", found)
    assert text.startswith("## digits: against `torchvision:resnet18@w.pt`\n")
    assert "@" not in text.replace("`torchvision:resnet18@w.pt`", "").replace(
        "`torchvision:resnet18@w1.pt`", ""
    )
    assert "per loss" not in text and "| loss |" not in text
    assert "Noise floor" in text and "10 [5, 16]" in text
    assert "| `int8` | 0.9800 | +0.0000 | 0 | 0 | passed |" in text
    assert "| `pruned` | 0.9000 | -0.0800 | 39 | 34 | **FAILED** |" in text
    assert "**Release gate: failed** (1 rule on 2 candidates; failed: `pruned`)." in text
    assert "| `pruned` | `mismatches` | 39 | <= 20 | **FAILED** |" in text
    assert "Release gate" not in audit_headline(frame, "t", [])
