"""The command line as a user runs it: bad input, a killed run resumed, reproducible numbers."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time

import pandas as pd
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import BIN, ROOT, TINY, cli_env, run_cli

SUMMARY = "reports/pipeline/summary.parquet"


BAD_INPUT = [
    (["run", "--set", "reference.epochs=-1"], "reference.epochs"),
    (["run", "--set", "align.losses=[ce,nope]"], "align.losses"),
    (["run", "--params", "missing.yaml"], "missing.yaml"),
    (["stage", "nope"], "stage 'nope'"),
    (["run", "--set", "noequals"], "section.key=value"),
    (["run", "--set", "data.source=cifar10"], "data/raw/cifar-10-batches-py"),
    (["run", "--set", "data.source=imagefolder", "--set", "data.root=nowhere"], "nowhere"),
    (["reproduce", "meyer", "--profile", "paper"], "data/raw/celeba/img_align_celeba"),
    (["reproduce", "nobody"], "joseph, meyer, hooker, all"),
]
# the installed command itself, in a process of its own, for a refusal by the params models
# and one by the command line; the others run the same entry point in this process (each new
# process would import torch again only to refuse: 4-5 s of CPU each)
IN_A_PROCESS = ({"run", "--set", "reference.epochs=-1"}, {"reproduce", "nobody"})


def check_refused(args, needle, stderr, returncode, folder, before) -> None:
    """One line naming what is wrong, exit 2, no traceback; `run` and `reproduce` write
    nothing (validation comes before any set-up: no Prefect home)."""
    assert returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert "Traceback" not in stderr
    if args[0] in ("run", "reproduce"):
        assert sorted(p.name for p in folder.iterdir()) == before


@pytest.mark.parametrize(("args", "needle"), BAD_INPUT)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path, monkeypatch, capsys, args, needle
):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    before = sorted(p.name for p in tmp_path.iterdir())
    if set(args) in IN_A_PROCESS:
        result = run_cli(*args, cwd=tmp_path, timeout=120)
        check_refused(args, needle, result.stderr, result.returncode, tmp_path, before)
        return
    from flows.entry import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["compalign", *args])
    for name in ("PREFECT_HOME", "PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as exited:
        main()
    check_refused(args, needle, capsys.readouterr().err, exited.value.code, tmp_path, before)


def wait_for_alignment(process, project):
    """Block until the first alignment is in the store (the run is then in its middle)."""
    deadline = time.monotonic() + 300
    align_dir = project / "artifacts" / "align"
    while not (align_dir.is_dir() and any(align_dir.glob("*/manifest.json"))):
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "no alignment finished in time"
        time.sleep(0.05)


def start_run(project, *extra):
    env = cli_env()
    return subprocess.Popen(
        [str(BIN / "compalign"), "run", "--params", str(TINY), *extra],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_killed_run_resumes_from_cache_without_duplicates(tmp_path):
    """SIGKILL once the first alignment is stored; the rerun reuses every finished stage, logs
    each model once, and marks the killed run's MLflow parent KILLED."""
    # one task at a time: the kill lands after the first of 8 alignments, 7 still to come
    levels = [0.5, 0.9]
    extra = ["--set", f"compress.sparsities={levels}", "--set", "run.workers=1"]
    process = start_run(tmp_path, *extra)
    wait_for_alignment(process, tmp_path)
    server = psutil.Process(process.pid).children(recursive=True)  # its temporary Prefect server
    process.send_signal(signal.SIGKILL)
    process.wait()
    for child in server:  # nothing survives SIGKILL's lack of clean-up but the server: reap it
        child.kill()
    finished_before = {p.parent.name for p in (tmp_path / "artifacts").glob("*/*/manifest.json")}

    result = run_cli("run", "--params", str(TINY), *extra, "--verbose", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    log = result.stdout + result.stderr  # --verbose: every task run's log lines
    for stage in ("prepare", "reference"):
        assert f"Task run '{stage} " in log
        assert all(
            "Cached" in line
            for line in log.splitlines()
            if f"Task run '{stage} " in line and "Finished" in line
        )
    finished_after = {p.parent.name for p in (tmp_path / "artifacts").glob("*/*/manifest.json")}
    assert finished_before <= finished_after  # nothing lost

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("role") in ("reference", "compressed")]
    names = [r.info.run_name for r in children]
    assert len(names) == len(set(names)) == 1 + len(levels) * 5  # every model logged once
    assert all(r.info.status == "FINISHED" for r in children)
    parents = [r for r in runs if r.data.tags.get("role") == "pipeline"]
    assert sorted(r.info.status for r in parents) == ["FINISHED", "KILLED"]


@pytest.mark.slow
def test_sigterm_exits_143_cleanly(tmp_path):
    """SIGTERM mid-run: exit code 143, the MLflow parent KILLED, the Prefect server stopped."""
    process = start_run(tmp_path, "--set", "align.epochs=40")
    wait_for_alignment(process, tmp_path)
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output
    assert "terminated: finished stages are cached" in output
    psutil.wait_procs(children, timeout=30)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.role = 'pipeline'")
    assert [run.info.status for run in parents] == ["KILLED"]


# each task's torch threads from the run graph alone, whatever else keeps the machine busy
REPEATABLE = ["--set", "run.busy_cores=0"]


@pytest.mark.slow
def test_same_seed_same_numbers_in_a_fresh_project(tmp_path):
    """Two fresh projects, same params: every metric identical (seeds fixed, deterministic CPU).
    run.busy_cores=0: each task's torch threads from the run graph alone, not from what else
    keeps the machine busy as it starts (which would change the reference's count, so its
    rounding, between two runs on a shared machine: README, "Will your run give the same
    numbers?")."""
    first, second = tmp_path / "a", tmp_path / "b"
    for project in (first, second):
        project.mkdir()
        result = run_cli("run", "--params", str(TINY), *REPEATABLE, cwd=project)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "tasks: 0 Cached" in result.stdout
        check_plain_output(result, project)
        if project == first:
            check_quick_rerun(result, project)
    columns = [
        "name",
        "accuracy",
        "mismatches",
        "mismatches_ci_low",
        "mismatches_ci_high",
        "mismatches_ref_correct",
        "reduction_factor",
        "reduction_factor_ci_low",
        "reduction_factor_ci_high",
        "worst_class_recall_change",
        "group_gap_change",
        "attribution_agreement",
        "ece",
    ]
    a, b = (pd.read_parquet(p / SUMMARY)[columns] for p in (first, second))
    pd.testing.assert_frame_equal(a, b)
    assert (a.mismatches > 0).any()  # the comparison is not trivially about zeros


QUICK_CHECK = """
import sys
from flows.rerun import replay
print("answered" if replay(sys.argv[1:]) else "declined")
print("torch imported" if "torch" in sys.modules else "torch not imported")
"""


def quick(project, *args, env=None):
    """flows.rerun.replay of `compalign <args>` in `project`, in a process of its own with the
    environment run_cli gives the command: its two lines (answered?, torch imported?)."""
    result = subprocess.run(
        [str(BIN / "python"), "-c", QUICK_CHECK, *args],
        cwd=project,
        env=cli_env(env),
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.splitlines()[-2:]


def check_quick_rerun(first_run, project):
    """The same command again is answered by flows/rerun.py without importing torch: the same
    summary, every task Cached, nothing recorded; changed params, --refresh or a store entry
    that no longer matches its digest go to the usual path."""
    rerun = run_cli(
        "run", "--params", str(TINY), *REPEATABLE, cwd=project, env={"PYTHONPROFILEIMPORTTIME": "1"}
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in rerun.stderr.splitlines()]
    assert "flows.rerun" in imported and "torch" not in imported and "prefect" not in imported
    table = first_run.stdout.split("35 tasks:")[0]
    assert rerun.stdout.startswith(table)
    assert "35 tasks: 35 Cached, 0 run\nNothing ran: every task is cached" in rerun.stdout
    assert "MLflow parent run" in rerun.stdout
    with sqlite3.connect(project / ".compalign" / "prefect" / "prefect.db") as db:
        assert db.execute("SELECT count(*) FROM flow_run").fetchone() == (1,)

    tiny = ["run", "--params", str(TINY), *REPEATABLE]
    assert quick(project, *tiny) == ["answered", "torch not imported"]
    assert quick(project, *tiny, "-v") == ["answered", "torch not imported"]
    assert quick(project, *tiny, "--set", "align.epochs=3")[0] == "declined"
    assert quick(project, *tiny, "--refresh")[0] == "declined"
    assert quick(project, *tiny, env={"COMPALIGN_REFRESH": "1"})[0] == "declined"
    assert quick(project, *tiny, env={"COMPALIGN_SOMETHING": "new"})[0] == "declined"
    costs = next((project / "artifacts" / "costs").glob("*/costs.json"))
    costs.write_text(costs.read_text() + " ")  # no longer the file its manifest's digest names
    assert quick(project, *tiny) == ["declined", "torch not imported"]


def check_plain_output(result, project):
    """Output to a pipe: a few plain lines (no per-epoch lines: they are in Prefect's task
    logs), the summary table, where the results are."""
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) <= 40, "\n".join(lines)
    assert not any(" epoch " in line for line in lines)
    assert any(line.startswith("35/35 tasks, 0 cached") for line in result.stderr.splitlines())
    assert "magnitude_global vs reference" in result.stdout
    assert "Reference: accuracy" in result.stdout
    assert "In reports/pipeline/summary.md and reports/pipeline/report.html: " in result.stdout
    assert "MLflow parent run" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()[:16]) <= 100  # the table
    # the epochs are in the task logs of the project's Prefect database
    with sqlite3.connect(project / ".compalign" / "prefect" / "prefect.db") as db:
        epochs = db.execute("SELECT count(*) FROM log WHERE message LIKE '% epoch %/%'").fetchone()
    tiny = yaml.safe_load(TINY.read_text())
    assert epochs[0] == tiny["reference"]["epochs"] + 8 * tiny["align"]["epochs"]


# Each command, stopped where it sets up Prefect's environment: Prefect must not be imported yet
# (it reads its settings once, at import; results would go to ~/.prefect/storage, where the stage
# cache keys never look, and a deleted store entry would come back as a stale cache hit).
BEFORE_SETUP = """
import sys
import flows.cli as cli

def stop(*_args, **_kwargs):
    print("prefect imported" if "prefect" in sys.modules else "clean")
    raise SystemExit(0)

cli._prepare_process = stop
sys.argv = ["compalign", *sys.argv[1:]]
cli.main()
"""


@pytest.mark.parametrize(
    "args",
    [
        ["run"],
        ["populations"],
        ["reproduce", "all"],
        ["serve", "--cron", "0 3 * * *"],
    ],
)
def test_prefect_is_configured_before_it_is_imported(args, tmp_path):
    # a folder of its own: in the repository root a user's `make run` leaves a cached run, which
    # `compalign run` answers without setting anything up
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    result = subprocess.run(
        [str(BIN / "python"), "-c", BEFORE_SETUP, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


def test_version_names_the_package_version_and_the_commit(tmp_path):
    from importlib.metadata import version

    from typer.testing import CliRunner

    from flows.cli import _checkout_commit, app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    head = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert result.output.startswith(f"compalign {version('compalign')} (git {head}")
    assert _checkout_commit(tmp_path) is None  # not a checkout: the version alone


HELP_CHECK = """
import sys
from flows.entry import main

sys.argv = ["compalign", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print("torch imported" if "torch" in sys.modules else "torch not imported", file=sys.stderr)
"""


COMMANDS = ("run", "populations", "reproduce", "audit", "stage", "params", "init", "serve")


@pytest.mark.parametrize("args", [["--help"], [], *([command, "--help"] for command in COMMANDS)])
def test_help_answers_without_importing_torch(args, tmp_path):
    """Help is answered by typer and the CLI module alone: no torch (nor the params models,
    which import the method registries), so it prints at once; no type placeholders."""
    result = subprocess.run(
        [str(BIN / "python"), "-c", HELP_CHECK, *args],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stderr.strip().splitlines()[-1] == "torch not imported", result.stderr
    shown = result.stdout + result.stderr  # no arguments: the help, on stderr
    assert "Usage: compalign" in shown
    assert not re.search(r"<(bool|str|int|path|list\[str\])>", shown), shown  # type placeholders
    assert "..." not in shown.replace("COMMAND [ARGS]...", "") and "…" not in shown  # not cut
    if args[:1] == ["audit"]:  # the example rule is printed whole
        assert "mismatches_ref_correct_ci_high<=20" in shown


def test_init_writes_the_defaults_once_and_params_prints_them_without_a_file(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from compalign.config import Params, load_params, params_yaml
    from compalign.errors import UserError
    from flows.cli import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    shown = runner.invoke(app, ["params"])  # no params.yaml here: the defaults
    assert shown.exit_code == 0, shown.output
    assert shown.output == params_yaml()
    created = runner.invoke(app, ["init"])
    assert created.exit_code == 0, created.output
    assert (tmp_path / "params.yaml").read_text() == params_yaml()
    assert load_params(tmp_path / "params.yaml") == Params()
    (tmp_path / "params.yaml").write_text("run:\n  experiment: mine\n")
    again = runner.invoke(app, ["init"])  # never overwritten
    assert isinstance(again.exception, UserError) and "exists" in str(again.exception)
    assert (tmp_path / "params.yaml").read_text() == "run:\n  experiment: mine\n"
    assert "experiment: mine" in runner.invoke(app, ["params"]).output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]
