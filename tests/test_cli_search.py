"""`compalign search` as a user runs it: a search on tiny settings that chooses a level, its
rerun with a tighter budget answered from the stored probes (exit 1: none), and mistakes that
are one line with exit code 2 before anything is written."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY, run_cli

FAST = [
    "--set",
    "search.levels=[0.5,0.9,0.99]",
    "--set",
    "audit.attribution_samples=0",
    "--set",
    "audit.bootstrap_samples=100",
]


def _project(tmp_path):
    shutil.copy(TINY, tmp_path / "params.yaml")
    return tmp_path


@pytest.mark.slow
def test_a_search_chooses_a_level_and_a_tighter_rerun_reuses_its_probes(tmp_path):
    project = _project(tmp_path)
    rule = "mismatches_ci_high<=20"
    result = run_cli(
        "search", "--method", "magnitude_global", "--fail-on", rule, *FAST, cwd=project
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Answer: magnitude_global-0.5-none (level 0.5)" in result.stdout
    assert "The probe above it fails: magnitude_global-0.9-none@val" in result.stdout

    chosen = json.loads((project / "reports/search/chosen.json").read_text())
    assert chosen["chosen"]["level"] == 0.5 and chosen["searched_on"] == "val"
    assert chosen["next"]["level"] == 0.9 and not chosen["next"]["passes"]
    above = chosen["next"]["rules"][0]["value"]
    assert above > 20  # the probe above the answer fails the rule on the validation split
    test = chosen["test_audit"]
    assert test["name"] == "magnitude_global-0.5-none"
    assert {"mismatches", "mismatches_ci_high", "size_bytes"} <= set(test["metrics"])
    probes = pd.read_parquet(project / "reports/search/probes.parquet")
    assert list(probes["level"]) == [0.5, 0.9] and list(probes["passes"]) == [True, False]
    assert list(probes[rule]) == [
        c["rules"][0]["value"] for c in (chosen["chosen"], chosen["next"])
    ]
    assert (project / "reports/search/report.html").is_file()

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(run for run in runs if run.data.tags.get("role") == "search")
    assert parent.data.tags["search.answer"] == "magnitude_global-0.5-none"
    assert "test/mismatches" in parent.data.metrics
    children = {
        run.info.run_name: run
        for run in runs
        if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert {"magnitude_global-0.5-none@val", "magnitude_global-0.9-none@val"} <= set(children)
    assert children["magnitude_global-0.5-none@val"].data.tags["split"] == "val"
    assert "split" not in children["magnitude_global-0.5-none"].data.tags  # the test audit

    tighter = run_cli(
        "search",
        "--method",
        "magnitude_global",
        "--fail-on",
        "mismatches_ci_high<=1",
        *FAST,
        cwd=project,
    )
    assert tighter.returncode == 1, tighter.stdout + tighter.stderr
    assert "none: the least compressed probe already fails" in tighter.stderr
    assert "magnitude_global-0.5-none@val: mismatches_ci_high = " in tighter.stderr
    again = json.loads((project / "reports/search/chosen.json").read_text())
    assert again["chosen"] is None and again["probes_run"] == 0  # every probe from the store


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        (["--method", "half", "--fail-on", "mismatches<=1"], "has no levels to search"),
        (["--method", "magnitude_global", "--fail-on", "mismatch<=1"], "unknown metric 'mismatch'"),
    ],
)
def test_search_mistakes_are_one_line_exit_2_and_write_nothing(
    tmp_path, cli_here, arguments, needle
):
    project = _project(tmp_path)
    before = sorted(path.name for path in project.iterdir())
    result = cli_here("search", *arguments, cwd=project)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert sorted(path.name for path in project.iterdir()) == before
