"""compalign.report.search: the search page, its figure, and what `compalign search` prints."""

from __future__ import annotations

import math

import pandas as pd

from compalign.report.search import answer_lines, probes_table, search_figure, search_report

RULE = "mismatches_ref_correct_ci_high<=10"


def _probes() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "probe": [1, 2, 3],
            "name": ["m-0.5-ce@val", "m-0.9-ce@val", "m-0.95-ce@val"],
            "level": [0.5, 0.9, 0.95],
            "float_layers": ["", "", ""],
            "passes": [True, True, False],
            "cached": [True, False, False],
            RULE: [0.0, 7.0, 31.0],
            "mismatches": [0.0, 4.0, 25.0],
            "mismatches_ci_low": [0.0, 1.0, 18.0],
            "mismatches_ci_high": [0.0, 8.0, 33.0],
            "size_gzip_bytes": [2e5, 6e4, 4e4],
            "latency_ms_b64": [1.0, 1.0, 1.0],
            "accuracy": [0.99, 0.98, 0.9],
        }
    )


def _summary(name: str, level: float, value: float, passes: bool) -> dict:
    return {
        "name": name,
        "level": level,
        "float_layers": [],
        "run_id": "r",
        "passes": passes,
        "rules": [{"rule": RULE, "value": value}],
        "costs": {},
    }


def _chosen() -> dict:
    return {
        "method": "m",
        "loss": "ce",
        "rules": [RULE],
        "search": "bisection",
        "probes": 3,
        "probes_run": 2,
        "monotonicity_violations": [],
        "chosen": _summary("m-0.9-ce@val", 0.9, 7.0, True),
        "next": _summary("m-0.95-ce@val", 0.95, 31.0, False),
        "answer": "m-0.9-ce",
        "examples": {"val": 269, "test": 450},
        "reference_costs": {"size_gzip_bytes": 3.5e5},
        "test_audit": {
            "name": "m-0.9-ce",
            "run_id": "t",
            "rules": [{"rule": RULE, "value": 12.0, "holds": False}],
            "metrics": {
                "accuracy": 0.97,
                "mismatches": 9.0,
                "mismatches_ref_correct_ci_high": 12.0,
            },
        },
    }


def test_the_answer_names_the_level_the_probe_above_and_the_test_audit():
    lines, failed = answer_lines(_chosen())
    assert not failed
    assert lines[0].startswith("Answer: m-0.9-ce (level 0.9)")
    assert "mismatches_ref_correct_ci_high = 7 (bound <= 10)" in lines[0]
    assert "The probe above it fails: m-0.95-ce@val" in lines[1]
    assert "on test: mismatches_ref_correct_ci_high<=10 FAILS" in lines[2]
    assert "validation has 269 examples, test 450" in lines[3]


def test_no_answer_is_the_least_compressed_probe_with_its_numbers():
    chosen = {**_chosen(), "chosen": None, "test_audit": None}
    chosen["least_compressed"] = _summary("m-0.5-ce@val", 0.5, 14.0, False)
    lines, failed = answer_lines(chosen)
    assert failed and lines == [
        "none: the least compressed probe already fails (m-0.5-ce@val: "
        "mismatches_ref_correct_ci_high = 14 (bound <= 10))"
    ]


def test_the_page_shows_every_probe_its_rule_values_and_the_figure(tmp_path):
    path = search_report(_probes(), _chosen(), tmp_path / "report.html", "a search")
    html = path.read_text()
    assert html.count("data:image/png;base64,") == 1
    for text in ("m-0.95-ce@val", "31 ✗", "7 ✓", "m-0.9-ce", "The probe above it"):
        assert text in html
    table = probes_table(_probes(), [RULE])
    assert list(table[RULE]) == ["0 ✓", "7 ✓", "31 ✗"]


def test_the_figure_marks_the_chosen_probe_and_the_reference():
    figure = search_figure(_probes(), "m-0.9-ce@val", {"size_gzip_bytes": 3.5e5})
    axis = figure.axes[0]
    labels = axis.get_legend_handles_labels()[1]
    assert {"meets the rules", "fails", "chosen", "reference"} <= set(labels)
    assert axis.get_xlabel().startswith("size, gzip")
    assert len(figure.axes) == 1  # latency does not vary between these probes: no panel
    assert search_figure(_probes().iloc[:0], None) is None
    assert not math.isnan(axis.get_xlim()[0])
