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
from typing import Annotated

import typer

from compalign.config import Params, load_params
from compalign.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)

ParamsOption = Annotated[
    Path, typer.Option("--params", "-p", help="params file (YAML, one section per stage)")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override one value: section.key=value (repeatable)"),
]
VerboseOption = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="print every task's log lines (one per epoch) on the terminal"
    ),
]


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
    from tasks.store import entry_dir, is_complete, stage_key

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
    from flows.preflight import check_project
    from flows.runtime import configure_environment

    check_project()  # writable, space left, its databases readable: before the first write
    configure_environment()
    if flows:  # a Prefect API server that dies with this process (flows/server.py)
        from flows.server import start_api_server

        start_api_server()
    # read by tasks.store.training_runtime, in this process and in Dask workers it starts
    os.environ["COMPALIGN_RESUME_EVERY"] = str(params.run.resume_every)
    os.environ["COMPALIGN_COMPILE"] = "1" if params.run.compile else "0"
    if refresh:
        os.environ["COMPALIGN_REFRESH"] = "1"
        os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # MLflow notices tasks/tracking.py silences around each logging call; set once here as well,
    # because warnings.catch_warnings there is not thread-safe and task threads log at once
    import warnings

    warnings.filterwarnings("ignore", message="The specified dataset source can be")
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
    signal.signal(signal.SIGINT, _interrupt)
    from compalign.files import remove_stale_scratch
    from tasks.store import ARTIFACTS_DIR

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

        from tasks import tracking

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
    """The result of a run whose every task is cached, from the store (flows/cached.py), before
    Prefect, MLflow or a worker starts; None when the flow must run."""
    from flows.cached import cached_run
    from flows.graph import REPORT_DIR

    result = cached_run(params, REPORT_DIR)
    return None if result is None else {**result, "cached_run": True}


def _echo_task_counts(tasks: list[dict]) -> None:
    cached = sum(task["state"] == "Cached" for task in tasks)
    typer.echo(f"{len(tasks)} tasks: {cached} Cached, {len(tasks) - cached} run")


def _tail_lines(params: Params, result: dict, cached_run: bool) -> list[str]:
    """What follows the summary table: the task counts, and where the MLflow run is."""
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
        from flows.cached import MLFLOW_UI
        from tasks.tracking import ui_links

        links = ui_links(MLFLOW_UI, result["experiment_id"], result["parent_run_id"])
    lines += [
        f"MLflow parent run {result['parent_run_id']} in experiment "
        f"{params.run.experiment!r} ({result['tracking_uri']}).",
        f"See it with `make ui`, then open {links['run']}",
        f"(all runs, to compare: {links['runs']})",
    ]
    return lines


def _remember(digest: str | None, params: Params, result: dict, summary: str) -> None:
    """Keep this answer for the next identical `compalign run` (flows/quick.py), once every
    task of it is a cache hit; a run whose answer cannot be kept is not an error."""
    from flows.cached import RUNS_DIR, run_digest, task_keys
    from flows.quick import console_kind, remember

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


@app.command()
def run(
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    refresh: Annotated[bool, typer.Option(help="recompute every stage, ignoring caches")] = False,
    verbose: VerboseOption = False,
) -> None:
    """Run the whole pipeline (Prefect flow): prepare, reference, compress, align, audit."""
    from flows.quick import inputs_digest

    digest = inputs_digest(params_file, overrides or [])  # before anything can change
    params = load_params(params_file, overrides or [])
    _check_data(params)
    import pandas as pd
    from rich.console import Console

    from compalign.report.tables import print_summary
    from flows.graph import REPORT_DIR
    from flows.quick import console_kind

    result = None if refresh else _cached_run(params)
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
    for line in _tail_lines(params, result, cached_run=bool(result.get("cached_run"))):
        typer.echo(line)
    _remember(digest, params, result, summary)


@app.command()
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
    typer.echo(
        f"Tables and galleries in {REPORT_DIR}/; MLflow parent run {result['parent_run_id']} "
        f"in experiment {params.run.experiment!r} (`make ui`)."
    )


@app.command()
def reproduce(
    paper: Annotated[str, typer.Argument(help="joseph, meyer, hooker or all")],
    profile: Annotated[
        str, typer.Option(help="cpu (embedded data) or paper (dataset on disk)")
    ] = "cpu",
    device: Annotated[
        str | None, typer.Option(help="auto, cpu or cuda (default: the profile's)")
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(
            help="training seeds per configuration (default: the profile's reproduce.seeds)"
        ),
    ] = None,
    overrides: SetOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Regenerate a seed paper's results: tables, figures and verdicts in reports/<paper>/."""
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


@app.command("audit")
def audit_command(
    reference: Annotated[
        str, typer.Option("--reference", "-r", help="the reference model: a model spec (see below)")
    ],
    compressed: Annotated[
        list[str],
        typer.Option("--compressed", "-c", help="a candidate as NAME=SPEC (repeatable)"),
    ],
    params_file: Annotated[
        Path | None,
        typer.Option("--params", "-p", help="params file (default: params.yaml if there is one)"),
    ] = None,
    overrides: SetOption = None,
    fail_on: Annotated[
        list[str] | None,
        typer.Option(
            "--fail-on",
            help="release rule METRIC<=VALUE (or >=, <, >), e.g. mismatches_ref_correct_ci_high<=20;"
            " a failed rule exits 1 (repeatable)",
        ),
    ] = None,
    reference2: Annotated[
        str | None,
        typer.Option("--reference2", help="a second reference (another seed): the noise floor"),
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
) -> None:
    """Audit models you bring against a reference on the test split of the `data` section.

    A model spec is a compalign checkpoint folder, torchvision:NAME@STATE_DICT,
    timm:NAME@STATE_DICT, a TorchScript file (.pt, .ts), a torch.export program (.pt2) or an
    ONNX file (.onnx). Writes reports/compare/{summary.parquet,predictions.parquet,report.html}
    and one MLflow parent run with a child per model.
    """
    from compalign.compare import parse_candidate
    from compalign.gate import check_rules, parse_rule
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

    checked = audit_preflight(params, reference, candidates, reference2, rules, refresh)
    hold_audit_lock(Path("reports/compare"))  # until the process ends: the report is its own
    _prepare_process(params, refresh, flows=True)
    checked.save()
    from flows.compare import REPORT_DIR, audit_flow

    _server_ready(params.run.experiment)
    with _resumable("stages"), _display(verbose):
        result = audit_flow(params.model_dump(), reference, candidates, reference2)
    _echo_comparison(result)
    typer.echo(
        f"Report: {REPORT_DIR / 'report.html'}; tables in {REPORT_DIR}/. MLflow parent run "
        f"{result['parent_run_id']} in experiment {params.run.experiment!r} (`make ui`)."
    )
    failures = check_rules(rules, {name: result["metrics"][name] for name in result["candidates"]})
    if result.get("degenerate") and not reference_at_chance:
        failures.insert(0, f"FAILED {result['degenerate']}")
    for line in failures:
        typer.echo(line, err=True)
    if failures:
        raise typer.Exit(1)


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


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="prepare, reference, compress, align or audit")],
    params_file: ParamsOption = Path("params.yaml"),
) -> None:
    """Run one stage into DVC's fixed paths (what dvc.yaml's commands call)."""
    from tasks.store import PIPELINE_STAGES

    if name not in PIPELINE_STAGES:
        raise UserError(f"stage {name!r}: unknown; choose one of {', '.join(PIPELINE_STAGES)}")
    params = load_params(params_file)
    if name == "prepare":
        _check_data(params)
    _prepare_process(params)
    from flows.stages import STAGES

    STAGES[name](params)


@app.command("params")
def show_params(
    params_file: ParamsOption = Path("params.yaml"), overrides: SetOption = None
) -> None:
    """Validate the params and print them in full, defaults included."""
    import yaml

    params = load_params(params_file, overrides or [])
    typer.echo(yaml.safe_dump(params.model_dump(), sort_keys=False).rstrip())


@app.command()
def serve(
    cron: Annotated[str, typer.Option(help='schedule, a cron expression such as "0 3 * * *"')],
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    name: Annotated[
        str | None, typer.Option(help="deployment name (default: compalign-pipeline-<dataset>)")
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
