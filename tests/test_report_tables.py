"""The summary frame of a pipeline run and its Markdown and terminal tables, and the
populations' PIE table, on made-up audit results."""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest
from rich.console import Console

from compalign.report.tables import (
    costs_frame,
    display_frame,
    populations_markdown,
    print_populations,
    print_summary,
    summary_frame,
    summary_markdown,
)


def _result(name, role, compressor, level, loss, kind="weight_sparsity", **metrics):
    base = {
        "accuracy": 0.9,
        "accuracy_change": -0.01,
        "mismatches": 12,
        "mismatches_ci_low": 8,
        "mismatches_ci_high": 16,
        "reduction_factor": 1.5,
        "reduction_factor_ci_low": 1.1,
        "reduction_factor_ci_high": 2.0,
        "ece": 0.03,
        "group.odd.accuracy_gap_change": 0.02,
        "group.even.accuracy_gap_change": -0.04,
        "attribution.saliency.spearman_mean": 0.5,
        "attribution.integrated_gradients.spearman_mean": 0.7,
    }
    labels = {"name": name, "role": role, "compressor": compressor, "sparsity": level}
    labels.update({"loss": loss, "level_kind": kind})
    return {"labels": labels, "metrics": {**base, **metrics}, "run_id": f"run-{name}"}


RESULTS = [
    _result("reference", "reference", "none", 0.0, "none", "none"),
    _result("m-0.5-ce", "compressed", "magnitude", 0.5, "ce"),
    _result("m-0.5-kd", "compressed", "magnitude", 0.5, "kd"),
    _result("q-none", "compressed", "quantize_dynamic", 0.0, "none", "none"),
]
COSTS = {
    result["labels"]["name"]: {
        "params_total": 1e5,
        "params_nonzero": 5e4 * (index + 1),
        "macs": 1e6 * (index + 1),
        "size_bytes": 4e5,
        "size_gzip_bytes": 3e5,
        "latency_ms_b1": 1.0 + index,
        "latency_ms_b64": 10.0 + index,
        "latency_threads": 2,
    }
    for index, result in enumerate(RESULTS)
}


def test_summary_frame_rows_ratios_and_picks():
    """One row per model; ce is its own baseline; costs relative to the reference's; the group
    whose gap changed most; integrated gradients before saliency."""
    frame = summary_frame(RESULTS, COSTS)
    assert frame.name.tolist() == ["reference", "m-0.5-ce", "m-0.5-kd", "q-none"]
    ce = frame.set_index("name").loc["m-0.5-ce"]
    assert ce.reduction_factor == ce.reduction_factor_ref_correct == 1.0
    assert frame.set_index("name").loc["m-0.5-kd", "reduction_factor"] == 1.5
    assert frame.macs_ratio.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert (frame.group == "even").all() and (frame.group_gap_change == -0.04).all()
    assert (frame.attribution_agreement == 0.7).all()
    assert frame.run_id.tolist()[1] == "run-m-0.5-ce"
    assert math.isnan(summary_frame(RESULTS).macs_ratio.iloc[0])  # no costs measured


def test_display_and_costs_frames_as_strings():
    frame = summary_frame(RESULTS, COSTS)
    shown = display_frame(frame)
    assert shown.compressor.tolist() == ["magnitude", "magnitude", "quantize_dynamic"]
    assert shown.level.tolist() == ["0.5", "0.5", "–"]  # no level for a quantizer
    assert shown["mismatches [95% CI]"].tolist()[0] == "12 [8, 16]"
    assert shown["group gap Δ"].tolist()[0] == "-0.040 (even)"
    costs = costs_frame(frame)
    assert costs.compressor.tolist()[0] == "reference" and costs["MACs ×"].tolist()[1] == "2.00"
    assert costs_frame(summary_frame(RESULTS)).empty


def test_summary_markdown_has_the_reference_and_the_costs():
    text = summary_markdown(summary_frame(RESULTS, COSTS))
    assert text.startswith("Reference: accuracy 0.9000, ECE 0.030, 100,000 parameters")
    assert "| magnitude " in text and "Costs (CPU latency" in text
    assert "Costs" not in summary_markdown(summary_frame(RESULTS))


@pytest.mark.parametrize("costs", [COSTS, None])
def test_print_summary_prints_the_table_and_where_the_costs_are(costs):
    console = Console(record=True, width=240, file=io.StringIO())
    print_summary(summary_frame(RESULTS, costs), console)
    text = console.export_text()
    assert "compressed vs reference" in text and "quantize_dynamic" in text
    # the costs table is in summary.md and the HTML report; the terminal says so
    assert ("summary.md and report.html: costs." in text) == (costs is not None)
    assert "Reference: accuracy 0.9000" in text


def test_summary_fits_100_columns_with_the_key_columns_first(capsys, monkeypatch):
    """The default grid's labels (one compressor, the longest loss name, 4 levels x 5 losses):
    not a terminal, so 100 columns; the headline columns shown, the rest named with where they
    are."""
    losses = ["none", "ce", "kd", "label_preserving", "pw"]
    results = [RESULTS[0]] + [
        _result(f"g-{level}-{loss}", "compressed", "magnitude_global", level, loss)
        for level in (0.9, 0.95, 0.97, 0.98)
        for loss in losses
    ]
    monkeypatch.delenv("COLUMNS", raising=False)
    print_summary(summary_frame(results, COSTS), more="summary.md")  # stdout: captured, a pipe
    text = capsys.readouterr().out
    print(text)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert "magnitude_global vs reference" in lines[0]
    header = lines[1].split()
    assert header[:5] == ["level", "loss", "accuracy", "Δ", "acc."]  # the labels, then metrics
    assert "mismatches" in header
    assert any(
        line.startswith("label_preserving") or " label_preserving " in line for line in lines
    )
    assert len(lines) <= 2 + 1 + 20 + 4  # title, header, rule, a row per model, notes
    more = next(line for line in lines if line.startswith("In summary.md: "))
    assert "ECE" in " ".join(lines[lines.index(more) :]) and "costs." in text


def _pies(impacted: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    summary = pd.DataFrame(
        {
            "level": [0.5, None],
            "loss": ["ce", "none"],
            "pie_count": [4, 0],
            "pie_fraction": [0.02, 0.0],
            "pies_compressed_mode_correct": [1, 0],
            "reference_top1_on_pies": [0.5, math.nan],
            "reference_top1_on_rest": [0.95, 0.95],
            "compressed_top1_on_pies": [0.25, math.nan],
            "compressed_top1_on_rest": [0.9, 0.93],
            "pies_shared_with_first_loss": [4, 0],
            "impacted_classes": [int(impacted), 0],
            "impacted": ["cat (-0.100, p=0.010)" if impacted else "", ""],
        }
    )
    impact = pd.DataFrame(
        {
            "level": [0.5, 0.5],
            "loss": ["ce", "ce"],
            "class": ["cat", "dog"],
            "change": [-0.1, 0.01],
            "t": [-4.0, 0.2],
            "p": [0.01, 0.8],
            "direction": ["worse" if impacted else "", ""],
            "impacted": [impacted, False],
        }
    )
    return summary, impact


@pytest.mark.parametrize("impacted", [True, False])
def test_populations_markdown_lists_the_impacted_classes(impacted):
    text = populations_markdown(*_pies(impacted))
    assert text.startswith("PIEs per compression level and loss:")
    assert text.endswith("none") != impacted
    assert ("| cat " in text) == impacted and "| dog " not in text


def test_print_populations_shows_a_dash_for_no_level():
    console = Console(record=True, width=200, file=io.StringIO())
    print_populations(_pies(True)[0], console)
    text = console.export_text()
    assert "Pruning Identified Exemplars" in text
    assert "cat (-0.100, p=0.010)" in text and "│     – │ none" in text
