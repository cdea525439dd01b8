"""The HTML pages of a pipeline run and of a populations run, on small hand-made frames."""

from __future__ import annotations

import base64
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from compalign.report.figures import compressed_rows as _compressed
from compalign.report.figures import figure_png
from compalign.report.figures import level_figure as _level_figure
from compalign.report.figures import loss_colors as _loss_colors
from compalign.report.html import pipeline_report, populations_report

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
CLASSES = ["zero", "one", "two"]
PIPELINE_SECTIONS = [
    "Accuracy vs compression level",
    "Mismatches vs compression level",
    "Reduction factor vs ce",
    "Per-class recall change",
    "Accuracy gap between groups",
    "Costs relative to the reference",
    "Comparison table",
]
POPULATIONS_SECTIONS = [
    "PIE count vs compression level",
    "Top-1 on PIEs and on the rest",
    "Impacted classes",
    "PIE galleries",
    "Tables",
]
COSTS = {"macs": 1000.0, "size_bytes": 400.0, "latency_ms_b64": 3.0}


def _row(name, compressor, level, loss, kind="weight_sparsity", accuracy=0.8, **extra):
    row = {
        "name": name,
        "role": "compressed",
        "compressor": compressor,
        "sparsity": level,
        "level_kind": kind,
        "loss": loss,
        "accuracy": accuracy,
        "accuracy_change": accuracy - 0.9,
        "mismatches": 40.0,
        "mismatches_ci_low": 30.0,
        "mismatches_ci_high": 50.0,
        "reduction_factor": 1.0 if loss == "ce" else 1.2,
        "reduction_factor_ci_low": 1.0 if loss == "ce" else 0.9,
        "reduction_factor_ci_high": 1.0 if loss == "ce" else 1.5,
        "group": "odd",
        "group_gap_change": 0.02,
        "ece": 0.1,
        "run_id": f"run-{name}",
    }
    for cost, value in COSTS.items():
        row[cost] = value * (0.5 if kind == "none" else 1.0)
    row.update(extra)
    return row


def _summary(rows: list[dict]) -> pd.DataFrame:
    """A summary_frame-like table: the reference first, then `rows`, with cost ratios."""
    reference = _row("reference", "none", 0.0, "none", kind="none", accuracy=0.9)
    reference.update({"role": "reference", "group": "", **COSTS})
    for key in ("accuracy_change", "mismatches", "reduction_factor", "group_gap_change"):
        reference[key] = math.nan
    frame = pd.DataFrame([reference, *rows])
    for cost, value in COSTS.items():
        frame[f"{cost}_ratio"] = frame[cost] / value
    return frame


def _full_summary() -> pd.DataFrame:
    rows = [
        _row(f"magnitude_global-{level:g}-{loss}", "magnitude_global", level, loss)
        for level in (0.5, 0.9)
        for loss in ("ce", "kd")
    ]
    rows.append(_row("structured-0.5-kd", "structured", 0.5, "kd", kind="flops_removed"))
    rows.append(_row("quantize_dynamic-ce", "quantize_dynamic", 0.0, "ce", kind="none"))
    return _summary(rows)


def _metrics(summary: pd.DataFrame, groups: bool = True) -> dict[str, dict[str, float]]:
    metrics = {}
    for index, name in enumerate(summary["name"]):
        entry = {f"recall_change.{c}": -0.1 * index + 0.05 * j for j, c in enumerate(CLASSES)}
        if groups:
            entry["group.odd.accuracy_gap"] = 0.05 + 0.01 * index
            if index:
                entry["group.odd.accuracy_gap_change"] = 0.01 * index - 0.02
        metrics[name] = entry
    return metrics


def _check_self_contained(text: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?://""", text, re.IGNORECASE)
    assert "<script" not in text.lower()
    images = re.findall(r"<img\b[^>]*>", text)
    assert images
    for image in images:
        source = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', image)
        assert source, image[:80]
        assert base64.b64decode(source.group(1)).startswith(PNG)


def _population_frames(
    pies: list[int], levels: list[float | None], losses: list[str], classes: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    summary = pd.DataFrame(
        [
            {
                "level": level,
                "loss": loss,
                "pie_count": count,
                "pie_fraction": count / 200,
                "pies_compressed_mode_correct": count // 2,
                "reference_top1_on_pies": 0.7 if count else math.nan,
                "reference_top1_on_rest": 0.95,
                "compressed_top1_on_pies": 0.3 if count else math.nan,
                "compressed_top1_on_rest": 0.93,
                "reference_top1": 0.94,
                "compressed_top1": 0.9,
                "pies_shared_with_first_loss": count,
                "impacted_classes": 1 if count else 0,
                "impacted": f"{classes[0]} (-0.100, p=0.010)" if count else "",
            }
            for count, level, loss in zip(pies, levels, losses, strict=True)
        ]
    )
    impact = pd.DataFrame(
        [
            {
                "class": name,
                "reference_normalised_recall": 0.0,
                "compressed_normalised_recall": 0.0,
                "change": -0.1 if index == 0 and count else 0.01,
                "t": -3.0,
                "p": 0.01 if index == 0 and count else 0.6,
                "impacted": bool(index == 0 and count),
                "direction": "worse" if index == 0 and count else "",
                "level": level,
                "loss": loss,
            }
            for count, level, loss in zip(pies, levels, losses, strict=True)
            for index, name in enumerate(classes)
        ]
    )
    return summary, impact


def _gallery(path: Path) -> Path:
    figure = Figure(figsize=(2, 1))
    figure.text(0.5, 0.5, "PIEs", ha="center")
    path.write_bytes(figure_png(figure))
    return path


def test_figure_png_returns_png_bytes():
    """figure_png draws a bare Figure to PNG bytes."""
    figure = Figure(figsize=(2, 2))
    figure.subplots().plot([0, 1], [1, 0])
    assert figure_png(figure).startswith(PNG)


def test_module_imports_neither_pyplot_nor_the_pipeline_services():
    """Importing the report package's modules pulls in no pyplot, Prefect or MLflow."""
    code = (
        "import sys, compalign.report.html, compalign.report.papers, compalign.report.tables; "
        "bad = [m for m in ('matplotlib.pyplot', 'prefect', 'mlflow') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_pipeline_report_has_every_section_and_model(tmp_path):
    """The pipeline page exists, is self-contained, names every section and model."""
    summary = _full_summary()
    path = pipeline_report(
        summary, _metrics(summary), CLASSES, tmp_path / "out" / "run.html", "Run", ["A note."]
    )
    assert path == tmp_path / "out" / "run.html" and path.is_file()
    text = path.read_text()
    _check_self_contained(text)
    for heading in PIPELINE_SECTIONS:
        assert f"<h2>{heading}</h2>" in text
    for name in summary["name"]:
        assert name in text
    assert "A note." in text
    assert (
        len(re.findall(r"<img\b", text)) == 6
    )  # accuracy, mismatches, reduction, recall, gap, costs


def test_pipeline_report_escapes_text(tmp_path):
    """A <script> in a model name, the title or a note is escaped, not executed."""
    summary = _full_summary()
    summary.loc[1, "name"] = "<script>alert(1)</script>"
    summary.loc[2, "loss"] = "$x$ & <b>"  # mathtext and markup in a label
    text = pipeline_report(
        summary, _metrics(summary), CLASSES, tmp_path / "run.html", "<script>t</script>", ["<i>"]
    ).read_text()
    _check_self_contained(text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;script&gt;t&lt;/script&gt;" in text and "<i>" not in text


def test_quantizers_get_their_own_panel():
    """Compressors without a level are drawn in a separate panel, not at level 0."""
    compressed = _compressed(_full_summary())
    figure = _level_figure(
        compressed,
        "accuracy",
        "accuracy",
        _loss_colors(list(compressed["loss"])),
        interval=False,
        baseline=None,
    )
    axes = [axis for axis in figure.axes if axis.get_visible()]
    assert [axis.get_title() for axis in axes] == ["magnitude_global", "structured", "quantizers"]
    levels = np.concatenate([line.get_xdata() for line in axes[0].get_lines()])
    assert set(np.round(levels, 6)) == {0.5, 0.9}
    assert [tick.get_text() for tick in axes[2].get_xticklabels()] == ["quantize_dynamic"]


def test_pipeline_report_single_level_and_quantizers_only(tmp_path):
    """A run with one level, or with quantizers only, still gets every figure."""
    single = _summary([_row("m-0.9-ce", "magnitude_global", 0.9, "ce")])
    quantized = _summary(
        [
            _row("quantize_dynamic-ce", "quantize_dynamic", 0.0, "ce", kind="none"),
            _row("half-kd", "half", 0.0, "kd", kind="none"),
        ]
    )
    for index, summary in enumerate((single, quantized)):
        text = pipeline_report(
            summary, _metrics(summary), CLASSES, tmp_path / f"{index}.html", "Run"
        ).read_text()
        _check_self_contained(text)
        assert len(re.findall(r"<img\b", text)) >= 5


def test_pipeline_report_edge_cases_skip_figures_with_a_note(tmp_path):
    """Non-finite reduction factors, missing costs and no groups do not raise."""
    summary = _summary(
        [
            _row("m-0.9-ce", "magnitude_global", 0.9, "ce"),
            _row("m-0.9-kd", "magnitude_global", 0.9, "kd", reduction_factor=math.inf),
            _row("m-0.9-pw", "magnitude_global", 0.9, "pw", reduction_factor=math.nan),
            _row("m-0.9-lp", "magnitude_global", 0.9, "lp", reduction_factor_ci_high=math.inf),
        ]
    )
    summary = summary.drop(columns=[c for c in summary.columns if c.startswith(tuple(COSTS))])
    text = pipeline_report(
        summary, _metrics(summary, groups=False), [], tmp_path / "run.html", "Run"
    ).read_text()
    _check_self_contained(text)
    assert 'alt="reduction factor against compression level' in text
    assert "Left out, reduction factor not finite: m-0.9-kd (∞), m-0.9-pw (–)." in text
    assert "no cost measurements" in text
    assert "audits no groups" in text
    # class names come from the metrics when none are given: the heatmap is still drawn
    assert 'alt="per-class recall change' in text


def test_pipeline_report_of_an_empty_run(tmp_path):
    """A summary with the reference alone (no compressed model, no metrics) does not raise."""
    text = pipeline_report(_summary([]), {}, CLASSES, tmp_path / "run.html", "Run").read_text()
    for heading in PIPELINE_SECTIONS:
        assert f"<h2>{heading}</h2>" in text
    assert "No figure: no compressed model has a finite accuracy." in text
    assert "No figure: no compressed model has a finite reduction factor." in text


def test_populations_report_has_every_section(tmp_path):
    """The populations page exists, is self-contained, shows every section and gallery."""
    summary, impact = _population_frames(
        [5, 40, 6, 50], [0.5, 0.9, 0.5, 0.9], ["ce", "ce", "kd", "kd"], CLASSES
    )
    galleries = {"PIEs at 0.9 with ce": _gallery(tmp_path / "g.png")}
    path = populations_report(summary, impact, galleries, tmp_path / "pop.html", "Pop", ["n=3"])
    assert path.is_file()
    text = path.read_text()
    _check_self_contained(text)
    for heading in POPULATIONS_SECTIONS:
        assert f"<h2>{heading}</h2>" in text
    assert "<h3>PIEs at 0.9 with ce</h3>" in text
    assert len(re.findall(r"<img\b", text)) == 4  # PIE count, top-1, impact, one gallery
    assert text.count('<tr class="hit">') == 4  # the impacted rows of the impact table


def test_populations_report_zero_pies_single_level_and_no_level(tmp_path):
    """Zero PIEs, one level, a population without a level and a missing gallery do not raise."""
    summary, impact = _population_frames([0, 0], [0.9, None], ["ce", "kd"], CLASSES)
    galleries = {
        "missing": tmp_path / "absent.png",
        "<script>x</script>": _gallery(tmp_path / "g.png"),
    }
    text = populations_report(summary, impact, galleries, tmp_path / "pop.html", "Pop").read_text()
    _check_self_contained(text)
    assert "No PIEs at any level" in text
    assert "No class is disparately impacted" in text
    assert "Not shown: absent.png is missing or not a PNG." in text
    assert "&lt;script&gt;x&lt;/script&gt;" in text


def test_populations_report_of_empty_frames(tmp_path):
    """Empty summary and impact frames give a page of notes."""
    text = populations_report(
        pd.DataFrame(), pd.DataFrame(), {}, tmp_path / "pop.html", "Pop"
    ).read_text()
    for heading in POPULATIONS_SECTIONS:
        assert f"<h2>{heading}</h2>" in text
    assert "<img" not in text


def test_compare_page_has_a_card_per_candidate_flagged_above_the_noise_floor(tmp_path):
    from compalign.report.html import compare_report

    def row(name, role, mismatches, low, high, floor=math.nan):
        return {
            "name": name,
            "role": role,
            "source": "onnx",
            "spec": f"{name}.onnx",
            "accuracy": 0.9,
            "accuracy_change": -0.01 if role == "candidate" else math.nan,
            "mismatches": mismatches,
            "mismatches_ci_low": low,
            "mismatches_ci_high": high,
            "mismatches_ref_correct": mismatches,
            "mismatches_ref_correct_ci_low": low,
            "mismatches_ref_correct_ci_high": high,
            "noise_floor_mismatches": floor,
            "params_total": 10.0,
        }

    summary = pd.DataFrame(
        [
            row("reference", "reference", math.nan, math.nan, math.nan),
            row("reference2", "reference2", 4, 2, 6),
            row("int8", "candidate", 3, 1, 5, floor=4),
            row("<pruned>", "candidate", 20, 15, 25, floor=4),
        ]
    )
    metrics = {name: {"recall_change.zero": -0.1} for name in summary["name"]}
    page = compare_report(summary, metrics, CLASSES, tmp_path / "page.html", "compare").read_text()
    assert len(re.findall(r'<div class="card(?: flag)?">', page)) == 2
    assert page.count('<div class="card flag">') == 1  # only the candidate above the floor
    assert "&lt;pruned&gt;" in page and "<pruned>" not in page  # escaped
    assert "noise floor (reference2)" in page and "<script" not in page


def _audit_summary() -> pd.DataFrame:
    def row(name, role, accuracy, mismatches, **extra):
        return {
            "name": name,
            "role": role,
            "source": "onnx" if name == "int8" else "torchvision",
            "spec": f"{name}.onnx" if name == "int8" else f"torchvision:resnet18@{name}.pt",
            "sha256": "ab" * 32,
            "accuracy": accuracy,
            "accuracy_change": accuracy - 0.98 if role != "reference" else math.nan,
            "mismatches": mismatches,
            "mismatches_ci_low": mismatches - 2 if mismatches == mismatches else math.nan,
            "mismatches_ci_high": mismatches + 3 if mismatches == mismatches else math.nan,
            "mismatches_ref_correct": mismatches,
            "ece_change": -0.0008794 if role != "reference" else math.nan,
            "worst_class_recall_change": -0.5 if name == "pruned" else 0.0,
            "params_total": 11_181_642.0,
            "latency_ms_b1": 17.0 if name == "int8" else 20.0,
            "latency_ms_b1_p10": 16.0,
            "latency_ms_b1_p90": 19.0,
            "latency_ms_b64": 1088.0 if name == "int8" else 220.0,
            "latency_ms_b64_p10": 1024.0 if name == "int8" else 210.0,
            "latency_ms_b64_p90": 1216.0 if name == "int8" else 240.0,
            "latency_fixed_batch": 1.0 if name == "int8" else math.nan,
            "latency_load": 3.4,
            "latency_cores": 2.0,
            "latency_threads": 2.0,
            **extra,
        }

    frame = pd.DataFrame(
        [
            row("reference", "reference", 0.98, math.nan),
            row("int8", "candidate", 0.98, 0.0),
            row("pruned", "candidate", 0.9, 39.0, attribution_agreement=0.9651),
        ]
    )
    for column in ("latency_ms_b1", "latency_ms_b64"):
        frame[f"{column}_ratio"] = frame[column] / frame[column].iloc[0]
    return frame


def test_the_audit_page_shows_the_gate_metrics_first_and_labelled_costs(tmp_path):
    from compalign.gate import parse_rule, verdicts
    from compalign.report.html import compare_report

    summary = _audit_summary()
    found = verdicts(
        [parse_rule("mismatches<=20"), parse_rule("worst_class_recall_change>=-0.05")],
        {name: summary.set_index("name").loc[name].to_dict() for name in ("int8", "pruned")},
    )
    metrics = {name: {"recall_change.zero": -0.1} for name in summary["name"]}
    page = compare_report(
        summary,
        metrics,
        CLASSES,
        tmp_path / "page.html",
        "digits: what the candidates changed",
        attribution_pngs={"pruned": figure_png(Figure(figsize=(1, 1)))},
        verdicts=found,
    ).read_text()
    # the gate on the cards: green for int8, red for pruned, every rule with value and bound
    assert '<div class="card pass">' in page and '<div class="card fail">' in page
    assert page.count("gate passed") == 1 and page.count("gate failed") == 1
    assert "<td>39 &lt;= 20</td>" in page and "<td>-0.500 &gt;= -0.05</td>" in page
    # the card's latency says how it was timed and that the load made it unreliable
    assert "<dd>×4.95 (batch 1 x 64, unreliable: load)</dd>" in page
    assert "<h2>Release gate</h2>" in page and page.count("FAILED") == 4  # cards and table
    assert "attribution agreement ρ</dt><dd>0.965</dd>" in page
    # one format per kind of number: accuracy 4 decimals, changes signed, ECE Δ 3 decimals
    assert "<dd>-0.0800</dd>" in page and "<dd>-0.001</dd>" in page and "0.0008794" not in page
    # sections with nothing to show are left out; the maps are folded
    assert "Accuracy gap between groups" not in page
    assert "<details><summary>pruned: mean ρ 0.965</summary>" in page
    # costs: a fixed-batch model's batch 64 labelled, the spread shown, the load flagged
    assert "1,088.00 (1,024.00–1,216.00), batch 1 x 64" in page
    assert "3.4 on 2 cores: unreliable" in page and "Unreliable latency" in page
    # the comparison table: metrics first, the files' digests last
    metrics_table = page.index("<h3>Metrics</h3>")
    files_table = page.index("<h3>Model files</h3>")
    assert metrics_table < files_table and page.index("ab" * 32) > files_table
    header = page[metrics_table : page.index("</tr>", metrics_table)]
    assert header.index(">accuracy<") < header.index(">mismatches<") and "sha256" not in header
