"""The `compalign` command line.

Params are validated before anything is imported or written: a user's mistake is one line on
stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from compalign.errors import UserError

if TYPE_CHECKING:
    from compalign.config import Params

# Plain help (click's layout): long examples wrap instead of being cut, and no type placeholders
# (`<bool>`, `<list[str]>`); each option names what it takes with its metavar.
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

ParamsOption = Annotated[
    Path,
    typer.Option(
        "--params", "-p", metavar="FILE", help="params file (YAML, one section per stage)"
    ),
]
OptionalParamsOption = Annotated[
    Path | None,
    typer.Option(
        "--params",
        "-p",
        metavar="FILE",
        help="params file (default: params.yaml if there is one, else the defaults)",
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="SECTION.KEY=VALUE",
        help="override one value, e.g. --set align.epochs=5 (repeatable)",
    ),
]
VerboseOption = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="print every task's log lines (one per epoch) on the terminal"
    ),
]


def load_params(path: Path | str | None, overrides: list[str] | None = None) -> Params:
    """compalign.config.load_params, imported when a command runs: the params models import
    the method registries and with them torch, which `--help` never needs."""
    from compalign.config import load_params as load

    return load(path, overrides)


def version_text() -> str:
    """The installed package's version, and the git commit when the code is a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = f"compalign {version('compalign')}"
    except PackageNotFoundError:  # run from a source tree that was never installed
        from compalign import __version__

        text = f"compalign {__version__}"
    commit = _checkout_commit(Path(__file__).resolve().parent.parent)
    return f"{text} (git {commit})" if commit else text


def _checkout_commit(root: Path) -> str | None:
    """The commit of the git checkout whose top level is `root` ('+' when it has uncommitted
    changes); None for an installed copy (or without git)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:
            return None  # a copy of the code inside some other repository
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "--short=12", "HEAD") + ("+" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _show_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="show the version and exit"
        ),
    ] = False,
) -> None:
    """compalign: what compression (pruning, quantization) changes beyond top-1 accuracy."""


def _display(verbose: bool):
    """The live progress display of a flow run (flows.display)."""
    from flows.display import FlowDisplay

    return FlowDisplay(verbose)


def _check_data(params: Params) -> None:
    """Refuse a dataset that is not on disk before anything starts, unless the store already
    holds it prepared."""
    from compalign.data import check_available
    from tasks.infra.store import entry_dir, is_complete, stage_key

    key = stage_key("prepare", {"data": params.data.prepare_params()})
    if not is_complete(entry_dir(key)):
        check_available(params.data)


def _prepare_process(params: Params, refresh: bool = False, flows: bool = False) -> None:
    """Environment for Prefect/MLflow, torch's thread count, and SIGTERM as a clean exit.

    Inside a flow Prefect turns SIGTERM into TerminationSignal (the flow marks its MLflow parent
    KILLED), then re-delivers it to the handler installed here, which exits with 143 through
    the normal shutdown: finally blocks and atexit hooks run, so the temporary Prefect server
    stops instead of outliving the process.
    """
    from flows.environment import configure_environment
    from flows.preflight import check_project

    check_project()  # writable, space left, its databases readable: before the first write
    configure_environment()
    if flows:  # a Prefect API server that dies with this process (flows/server.py)
        from flows.server import start_api_server

        start_api_server()
    # read by tasks.infra.store.training_runtime, in this process and in Dask workers it starts
    os.environ["COMPALIGN_RESUME_EVERY"] = str(params.run.resume_every)
    os.environ["COMPALIGN_COMPILE"] = "1" if params.run.compile else "0"
    if refresh:
        os.environ["COMPALIGN_REFRESH"] = "1"
        os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # MLflow notices tasks/infra/tracking.py silences around each logging call; set once here as well,
    # because warnings.catch_warnings there is not thread-safe and task threads log at once
    import warnings

    warnings.filterwarnings("ignore", message="The specified dataset source can be")
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
    signal.signal(signal.SIGINT, _interrupt)
    from compalign.files import remove_stale_scratch
    from tasks.infra.store import ARTIFACTS_DIR

    remove_stale_scratch(ARTIFACTS_DIR)  # what killed runs left half-written
    if params.run.threads:
        import torch

        torch.set_num_threads(params.run.threads)


def _server_ready(experiment: str | None = None) -> None:
    """Wait for the Prefect API server `_prepare_process` started, first creating the MLflow
    experiment (a new SQLite store runs MLflow's migrations, several seconds) and doing MLflow's
    one-time model-logging work (`tracking.warm_up`) while it starts."""
    if experiment is not None:
        import logging

        from tasks.infra import tracking

        # "Creating initial MLflow database tables..." on a new store: not news on a terminal
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        tracking.setup(experiment)
        tracking.warm_up()
    from flows.server import wait_for_api_server

    wait_for_api_server()


def _interrupt(signum: int, frame: object) -> None:
    """Ctrl-C: training loops in worker threads stop at their next batch (no signal reaches a
    thread), and the main thread gets its KeyboardInterrupt as usual."""
    from compalign.train import STOP_REQUESTED

    STOP_REQUESTED.set()
    signal.default_int_handler(signum, frame)


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    typer.echo("terminated: finished stages are cached; run the same command to resume", err=True)
    raise SystemExit(143)


@contextlib.contextmanager
def _resumable(what: str):
    """Ctrl-C during a flow: say that finished `what` are cached, exit 130 (no traceback)."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo(
            f"interrupted: finished {what} are cached; run the same command to resume", err=True
        )
        raise typer.Exit(130) from None


def _cached_run(params: Params) -> dict | None:
    """The result of a run whose every task is cached, from the store (flows/rerun.py), before
    Prefect, MLflow or a worker starts; None when the flow must run."""
    from flows.rerun import REPORT_DIR, cached_run

    result = cached_run(params, REPORT_DIR)
    return None if result is None else {**result, "cached_run": True}


def _echo_task_counts(tasks: list[dict]) -> None:
    cached = sum(task["state"] == "Cached" for task in tasks)
    typer.echo(f"{len(tasks)} tasks: {cached} Cached, {len(tasks) - cached} run")


def _tail_lines(
    params: Params, result: dict, cached_run: bool, users_server: str | None = None
) -> list[str]:
    """What follows the summary table: the task counts, where the MLflow run is and (for a
    flow run that ran) the Prefect flow run, with the commands that open them."""
    tasks = result["tasks"]
    cached = len(tasks) if cached_run else sum(task["state"] == "Cached" for task in tasks)
    lines = [f"{len(tasks)} tasks: {cached} Cached, {len(tasks) - cached} run"]
    if cached_run:
        lines.append(
            "Nothing ran: every task is cached, so no Prefect flow run or MLflow run was "
            "recorded (--refresh recomputes). The results are those of the run below."
        )
    links = result.get("links")
    if links is None:
        from flows.rerun import MLFLOW_UI
        from tasks.infra.tracking import ui_links

        links = ui_links(MLFLOW_UI, result["experiment_id"], result["parent_run_id"])
    from flows.pointers import mlflow_lines

    lines += mlflow_lines(
        result["tracking_uri"],
        params.run.experiment,
        links["run"],
        links["runs"],
        result["parent_run_id"],
    )
    if not cached_run and result.get("flow_run_id"):
        from flows.pointers import prefect_lines

        lines += prefect_lines(result["flow_run_id"], "", users_server)
    return lines


def _pointer_lines(params: Params, result: dict, users_server: str | None) -> list[str]:
    """Where a flow's results are and the commands that open them, runnable in any folder:
    the MLflow parent run (`mlflow ui --backend-store-uri ...`) and the Prefect flow run."""
    from flows.artifacts import mlflow_ui_base
    from flows.pointers import mlflow_lines, prefect_lines
    from tasks.infra.tracking import ui_links

    track = {"uri": result["tracking_uri"], "experiment_id": result["experiment_id"]}
    links = ui_links(mlflow_ui_base(track), result["experiment_id"], result["parent_run_id"])
    lines = mlflow_lines(
        result["tracking_uri"],
        params.run.experiment,
        links["run"],
        links["runs"],
        result["parent_run_id"],
    )
    if result.get("flow_run_id"):
        lines += prefect_lines(result["flow_run_id"], result["flow_run_name"], users_server)
    return lines


def _remember(digest: str | None, params: Params, result: dict, summary: str) -> None:
    """Keep this answer for the next identical `compalign run` (flows/rerun.py), once every
    task of it is a cache hit; a run whose answer cannot be kept is not an error."""
    from flows.rerun import RUNS_DIR, console_kind, remember, run_digest, task_keys

    if digest is None:
        return
    keys = task_keys(params)
    if keys is None:
        return
    with contextlib.suppress(OSError):
        remember(
            digest,
            keys=keys,
            run_dir=RUNS_DIR / run_digest(params, keys),
            settings=params.model_dump(mode="json"),
            experiment=params.run.experiment,
            console=console_kind(),
            summary=summary,
            lines=_tail_lines(params, result, cached_run=True),
        )


@app.command(short_help="Run the whole pipeline: prepare, reference, compress, align, audit.")
def run(
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    refresh: Annotated[bool, typer.Option(help="recompute every stage, ignoring caches")] = False,
    verbose: VerboseOption = False,
) -> None:
    """Run the whole pipeline (Prefect flow): prepare, reference, compress, align, audit."""
    from flows.rerun import inputs_digest

    digest = inputs_digest(params_file, overrides or [])  # before anything can change
    params = load_params(params_file, overrides or [])
    _check_data(params)
    import pandas as pd
    from rich.console import Console

    from compalign.report.tables import print_summary
    from flows.rerun import REPORT_DIR, console_kind

    result = None if refresh else _cached_run(params)
    users_server = os.environ.get("PREFECT_API_URL")
    if result is None:
        _prepare_process(params, refresh, flows=True)
        from flows.pipeline import run_pipeline

        _server_ready(params.run.experiment)
        with _resumable("stages"), _display(verbose):
            result = run_pipeline(params)
    kind = console_kind()
    console = Console(record=True, width=None if kind["terminal"] else kind["width"])
    print_summary(
        pd.DataFrame(result["summary"]),
        console=console,
        more=f"{REPORT_DIR}/summary.md and {REPORT_DIR}/report.html",
    )
    summary = console.export_text(styles=kind["terminal"])
    for line in _tail_lines(params, result, bool(result.get("cached_run")), users_server):
        typer.echo(line)
    _remember(digest, params, result, summary)


@app.command(short_help="Populations of dense and compressed models: PIEs (Hooker et al.).")
def populations(
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    refresh: Annotated[bool, typer.Option(help="recompute every member, ignoring caches")] = False,
    verbose: VerboseOption = False,
) -> None:
    """Populations of dense and compressed models: Pruning Identified Exemplars and disparately
    impacted classes (Hooker et al.); settings in the `populations` section."""
    params = load_params(params_file, overrides or [])
    _check_data(params)
    _prepare_process(params, refresh, flows=True)
    import pandas as pd

    from compalign.report.tables import print_populations
    from flows.populations import REPORT_DIR, run_populations

    _server_ready(params.run.experiment)
    with _resumable("members"), _display(verbose):
        result = run_populations(params)
    print_populations(pd.DataFrame(result["summary"]))
    _echo_task_counts(result["tasks"])
    typer.echo(f"Tables and galleries in {REPORT_DIR}/.")
    for line in _pointer_lines(params, result, None):
        typer.echo(line)


@app.command(short_help="Regenerate a seed paper's results (tables, figures, verdicts).")
def reproduce(
    # described in the docstring: in the Arguments list it would show a type ("<str>")
    paper: Annotated[str, typer.Argument(metavar="PAPER", hidden=True)],
    profile: Annotated[
        str,
        typer.Option(
            metavar="PROFILE",
            help="cpu (the embedded digits), fmnist (the Fashion-MNIST images of ../shared/data) "
            "or paper (the paper's dataset on disk)",
        ),
    ] = "cpu",
    device: Annotated[
        str | None,
        typer.Option(metavar="DEVICE", help="auto, cpu or cuda (default: the profile's)"),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="training seeds per configuration (default: the profile's reproduce.seeds)",
        ),
    ] = None,
    overrides: SetOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Regenerate a seed paper's results: tables, figures and verdicts in reports/<paper>/.

    PAPER is joseph, meyer, hooker or all."""
    from flows.profiles import PAPERS, PROFILES, paper_params

    if paper not in (*PAPERS, "all"):
        raise UserError(
            f"reproduce {paper!r}: unknown paper; choose one of {', '.join(PAPERS)}, all"
        )
    if profile not in PROFILES:
        raise UserError(f"--profile {profile!r}: choose one of {', '.join(PROFILES)}")
    overrides = list(overrides or []) + ([f"run.device={device}"] if device else [])
    overrides += [f"reproduce.seeds={seeds}"] if seeds is not None else []
    for name in PAPERS if paper == "all" else (paper,):
        params = paper_params(name, profile, overrides)  # every profile validated before any work
        _check_data(params)
    _prepare_process(params, flows=True)
    from flows.reproduce import run_reproduce

    _server_ready()
    with _resumable("stages"), _display(verbose):
        results = run_reproduce(paper, profile, overrides)
    for result in results:
        typer.echo(f"\n{result['paper']}: {result['report']} (MLflow run {result['run_id']})")
        for verdict in result["verdicts"]:
            typer.echo(f"  - {verdict}")


@app.command(
    "audit",
    short_help="Audit models you bring against a reference (a release gate).",
    epilog=(
        "Example (the files `compalign init --example` writes): compalign audit "
        "--reference torchvision:resnet18@resnet18_digits.pt --compressed "
        "int8=resnet18_digits_int8.onnx --reference2 torchvision:resnet18@resnet18_digits_seed1.pt "
        '--fail-on "mismatches_ref_correct_ci_high<=20"'
    ),
)
def audit_command(
    reference: Annotated[
        str,
        typer.Option(
            "--reference", "-r", metavar="SPEC", help="the reference model, as a model spec"
        ),
    ],
    compressed: Annotated[
        list[str],
        typer.Option(
            "--compressed",
            "-c",
            metavar="NAME=SPEC",
            help="a candidate, e.g. int8=model_int8.onnx (repeatable)",
        ),
    ],
    params_file: OptionalParamsOption = None,
    overrides: SetOption = None,
    fail_on: Annotated[
        list[str] | None,
        typer.Option(
            "--fail-on",
            metavar="RULE",
            help=(
                "a release rule METRIC<=VALUE (or >=, <, >) checked on every candidate, e.g. "
                "mismatches_ref_correct_ci_high<=20 or worst_class_recall_change>=-0.05; a "
                "failed rule exits 1 (repeatable)"
            ),
        ),
    ] = None,
    reference2: Annotated[
        str | None,
        typer.Option(
            "--reference2",
            metavar="SPEC",
            help="a second reference (another seed), the noise floor",
        ),
    ] = None,
    refresh: Annotated[bool, typer.Option(help="prepare the data again, ignoring caches")] = False,
    reference_at_chance: Annotated[
        bool,
        typer.Option(
            "--reference-at-chance",
            help="accept a reference whose accuracy is not clearly above chance (else such a"
            " degenerate comparison fails the gate: exit 1)",
        ),
    ] = False,
    verbose: VerboseOption = False,
    localize: Annotated[
        bool,
        typer.Option(
            "--localize",
            help="also find the layers that flip each candidate's labels (same module names as "
            "the reference): reports/compare/layers.parquet",
        ),
    ] = False,
) -> None:
    """Audit models you bring against a reference on the test split of the `data` section,
    and check release rules on every candidate.

    A model SPEC is a compalign checkpoint folder, torchvision:NAME@STATE_DICT,
    timm:NAME@STATE_DICT, a TorchScript file (.pt, .ts), a torch.export program (.pt2) or an
    ONNX file (.onnx).

    Writes reports/compare/ (summary.parquet, predictions.parquet, gate.json, report.html),
    one MLflow parent run with a child per model, and prints each rule's verdict on each
    candidate; exit code 1 when a rule fails, 2 for a mistake in the command.
    """
    from compalign.audited import parse_candidate
    from compalign.gate import parse_rule
    from compalign.model_sources import parse_spec

    if params_file is None and Path("params.yaml").is_file():
        params_file = Path("params.yaml")
    params = load_params(params_file, overrides or [])
    candidates = dict(parse_candidate(text) for text in compressed)
    if len(candidates) != len(compressed):
        raise UserError("--compressed: two candidates have the same name")
    rules = [parse_rule(text) for text in fail_on or []]
    specs = [reference, *candidates.values(), *([reference2] if reference2 else [])]
    for spec in specs:
        parse_spec(spec)
    _check_data(params)
    # data, models, outputs and rule names: refused before anything is written
    from flows.preflight import audit_preflight, hold_audit_lock
    from tasks.infra.paths import COMPARE_REPORT_DIR

    checked = audit_preflight(params, reference, candidates, reference2, rules, refresh)
    if localize:  # a format without module names: one line, before anything is written
        from compalign.audited import REFERENCE
        from compalign.localize import check_localizable

        models = checked.prepared.models
        check_localizable(models[REFERENCE].loaded, {n: models[n].loaded for n in candidates})
    users_server = os.environ.get("PREFECT_API_URL")
    hold_audit_lock(COMPARE_REPORT_DIR)  # until the process ends: the report is its own
    _prepare_process(params, refresh, flows=True)
    checked.save()
    from flows.compare import REPORT_DIR, audit_flow

    _server_ready(params.run.experiment)
    with _resumable("stages"), _display(verbose):
        result = audit_flow(
            params.model_dump(),
            reference,
            candidates,
            reference2,
            localize=localize,
            rules=[str(r) for r in rules],
        )
    _echo_comparison(result)
    if localize:
        from compalign.report.search import print_layers

        print_layers(result["layers"], result["layer_notes"])
    failures = _echo_gate(result["verdicts"])
    if result.get("degenerate") and not reference_at_chance:
        failures.insert(0, f"FAILED {result['degenerate']}")
    typer.echo(f"Report: {(REPORT_DIR / 'report.html').resolve()}; tables in {REPORT_DIR}/.")
    for line in _pointer_lines(params, result, users_server):
        typer.echo(line)
    for line in failures:
        typer.echo(line, err=True)
    if failures:
        raise typer.Exit(1)


def _echo_gate(verdicts: list[dict]) -> list[str]:
    """Every rule on every candidate with its value, bound and verdict; returns the FAILED
    lines (as compalign.gate.check_rules words them, for stderr and the exit code)."""
    if not verdicts:
        return []
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Release gate (every rule on every candidate)")
    for column in ("candidate", "rule", "value", "bound", "verdict"):
        table.add_column(column, justify="right" if column in ("value", "bound") else "left")
    failures = []
    from compalign.report.values import metric_text

    for verdict in verdicts:
        value = verdict["value"]
        shown = "not measured" if value != value else f"{value:g}"
        bound = f"{verdict['operator']} {verdict['bound']:g}"
        word = "passed" if verdict["passed"] else "FAILED"
        cell = shown if value != value else metric_text(verdict["metric"], value)
        table.add_row(verdict["candidate"], verdict["metric"], cell, bound, word)
        if not verdict["passed"]:
            failures.append(
                f"FAILED {verdict['candidate']}: {verdict['metric']} = {shown}, bound {bound}"
            )
    Console(width=120).print(table)
    candidates = list(dict.fromkeys(v["candidate"] for v in verdicts))
    failed = list(dict.fromkeys(v["candidate"] for v in verdicts if not v["passed"]))
    passed = [name for name in candidates if name not in failed]
    typer.echo(
        "Gate: "
        + "; ".join(
            part
            for part in (
                f"passed: {', '.join(passed)}" if passed else "",
                f"failed: {', '.join(failed)}" if failed else "",
            )
            if part
        )
        + "."
    )
    return failures


def _echo_comparison(result: dict) -> None:
    """The headline of each model: accuracy, mismatches with their interval, the noise floor."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Audit against the reference ({result['transform']})")
    for column in ("model", "accuracy", "Δ acc.", "mismatches [95% CI]", "…ref. right", "ECE"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in result["summary"]:
        interval = "–"
        if row.get("mismatches") == row.get("mismatches"):  # not NaN
            interval = (
                f"{row['mismatches']:.0f} [{row['mismatches_ci_low']:.0f}, "
                f"{row['mismatches_ci_high']:.0f}]"
            )
        right = row.get("mismatches_ref_correct")
        change = row.get("accuracy_change")
        table.add_row(
            row["name"],
            f"{row['accuracy']:.4f}",
            "–" if change != change else f"{change:+.4f}",
            interval,
            "–" if right != right else f"{right:.0f}",
            f"{row['ece']:.3f}",
        )
    Console(width=120).print(table)


@app.command(
    "search", short_help="How far can I compress? The most compressed model within release rules."
)
def search_command(
    method: Annotated[
        str,
        typer.Option(
            "--method",
            "-m",
            metavar="NAME",
            help="a compressor with levels (magnitude_global, structured, ...) or quantize_static",
        ),
    ],
    fail_on: Annotated[
        list[str],
        typer.Option(
            "--fail-on",
            metavar="RULE",
            help="release rule METRIC<=VALUE (or >=, <, >), as for `compalign audit`, checked on "
            "the validation split, e.g. mismatches_ref_correct_ci_high<=10 (repeatable)",
        ),
    ],
    loss: Annotated[
        str,
        typer.Option(
            metavar="LOSS", help="the loss each probe is fine-tuned with (none: not fine-tuned)"
        ),
    ] = "none",
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    refresh: Annotated[bool, typer.Option(help="recompute every probe, ignoring caches")] = False,
    verbose: VerboseOption = False,
) -> None:
    """How far can I compress? The most compressed model that meets every rule on the validation
    split: bisection over `search.levels`, or for quantize_static layers kept in float one at
    a time; the chosen model is then audited once on the test split. Writes
    reports/search/{probes.parquet,chosen.json,report.html}; exit 1 when no probe meets the
    rules."""
    from compalign.search import check_request

    params = load_params(params_file, overrides or [])
    rules = check_request(params, method, loss, fail_on)
    _check_data(params)
    _prepare_process(params, refresh, flows=True)
    from flows.search import REPORT_DIR, check_rules_on_data, run_search

    # a rule on a class or group column this dataset lacks: exit 2 before any probe runs
    check_rules_on_data(params, rules)
    users_server = os.environ.get("PREFECT_API_URL")
    _server_ready(params.run.experiment)
    with _resumable("probes"), _display(verbose):
        result = run_search(params, method, loss, fail_on)
    import pandas as pd

    from compalign.report.search import answer_lines, print_probes

    print_probes(pd.DataFrame(result["probes"]), fail_on)
    lines, failed = answer_lines(result["chosen"])
    for line in lines:
        typer.echo(line, err=failed)
    typer.echo(
        f"Report: {(REPORT_DIR / 'report.html').resolve()}; probes.parquet and chosen.json in "
        f"{REPORT_DIR}/."
    )
    for line in _pointer_lines(params, result, users_server):
        typer.echo(line)
    if failed:
        raise typer.Exit(1)


@app.command(short_help="Run one stage into DVC's fixed paths (dvc.yaml's commands).")
def stage(
    name: Annotated[str, typer.Argument(metavar="STAGE", hidden=True)],  # see the docstring
    params_file: ParamsOption = Path("params.yaml"),
) -> None:
    """Run one stage into DVC's fixed paths (what dvc.yaml's commands call).

    STAGE is one of DVC's stages: prepare, reference, compress, align, audit, predictions."""
    from tasks import dvc_stages

    if name not in dvc_stages():
        raise UserError(f"stage {name!r}: unknown; choose one of {', '.join(dvc_stages())}")
    params = load_params(params_file)
    if name == "prepare":
        _check_data(params)
    _prepare_process(params)
    from flows.stages import run_stage

    run_stage(name, params)


@app.command("params", short_help="Print the params in use, every key with its description.")
def show_params(
    params_file: OptionalParamsOption = None,
    overrides: SetOption = None,
) -> None:
    """Validate the params and print them in full as a params file: defaults included, each
    key with its description. Without a params file: the defaults (what `compalign init`
    writes)."""
    from compalign.config import params_yaml

    if params_file is None and Path("params.yaml").is_file():
        params_file = Path("params.yaml")
    params = load_params(params_file, overrides or [])
    typer.echo(params_yaml(params).rstrip())


@app.command(short_help="Write a commented params.yaml here (--example: a runnable example).")
def init(
    example: Annotated[
        bool,
        typer.Option(
            "--example",
            help=(
                "also write a small example to audit: the digits as an image folder, a "
                "torchvision ResNet-18 trained on them, another seed, an int8 ONNX copy and a "
                "pruned torch.export copy (a few minutes on 2 cores)"
            ),
        ),
    ] = False,
    params_file: Annotated[
        Path, typer.Option("--params", "-p", metavar="FILE", help="where to write the params")
    ] = Path("params.yaml"),
) -> None:
    """Write the default params (every key with its description) to params.yaml in this
    folder; with --example, a folder `compalign audit` runs on as the README shows. Nothing
    that exists is overwritten."""
    if example:
        _init_example(params_file)
        return
    from compalign.config import params_yaml

    if params_file.exists():
        raise UserError(
            f"{params_file}: exists; nothing written (remove it, or pass --params OTHER.yaml)"
        )
    _write_new(params_file, params_yaml())
    typer.echo(
        f"Wrote {params_file}: the defaults, every key with its description. Edit it, or "
        "override one value per command with --set section.key=value."
    )


def _write_new(path: Path, text: str) -> None:
    """Write `path`, which must not exist yet, whole or not at all."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as scratch:
        scratch.write(text)
    try:
        os.link(scratch.name, path)  # fails if `path` appeared meanwhile: nothing replaced
    finally:
        os.unlink(scratch.name)


def _init_example(params_file: Path) -> None:
    """`compalign init --example`: written in a scratch folder, moved into place at the end
    (an interrupted or failed init leaves nothing behind)."""
    import shutil
    import tempfile

    from compalign.example import EXAMPLE_FILES, IMAGES, README_COMMAND, existing, write_example

    folder = params_file.parent
    found = existing(folder) + ([str(params_file)] if params_file.exists() else [])
    if found:
        raise UserError(
            f"{', '.join(dict.fromkeys(found))}: already here; nothing written (run "
            "`compalign init --example` in an empty folder)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".compalign-example-", dir=folder))
    try:
        write_example(scratch, say=lambda line: typer.echo(line, err=True))
        for name in [IMAGES, *EXAMPLE_FILES.values()]:
            (scratch / name).rename(folder / name)
        (scratch / "params.yaml").rename(params_file)
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing written", err=True)
        raise typer.Exit(130) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    typer.echo(f"Wrote the example in {folder.resolve()}. Audit it with:\n\n{README_COMMAND}")


@app.command(short_help="Run the pipeline on a schedule (a Prefect deployment).")
def serve(
    cron: Annotated[
        str, typer.Option(metavar="CRON", help='schedule, a cron expression such as "0 3 * * *"')
    ],
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    name: Annotated[
        str | None,
        typer.Option(
            metavar="NAME", help="deployment name (default: compalign-pipeline-<dataset>)"
        ),
    ] = None,
) -> None:
    """Run the pipeline on a schedule: register it with the Prefect server at PREFECT_API_URL
    (`prefect server start`) and keep running to execute the scheduled runs."""
    from flows.serve import api_url, default_name, serve_pipeline

    params = load_params(params_file, overrides or [])
    api_url()  # before anything is written: without it there is nothing to serve to
    _check_data(params)
    # keeps the user's PREFECT_API_URL: configure_environment sets PREFECT_HOME only without one
    _prepare_process(params)
    serve_pipeline(params, cron, name or default_name(params))


def main() -> None:
    """Entry point: a UserError becomes one line on stderr and exit code 2 (usage errors are
    typer's: usage, the error, exit code 2)."""
    try:
        app()
    except UserError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except OSError as error:  # the environment's fault (a full disk, a read-only folder)
        from flows.preflight import environment_error

        message = environment_error(error)
        if message is None:
            raise
        typer.echo(f"error: {message}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
