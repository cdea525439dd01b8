"""The rerun layer: a `compalign run` with nothing changed, answered without running the flow.

Every stage call is cached in the store (tasks/infra/store.py) and by Prefect on the same key;
above them, this module answers a whole run whose every task is a cache hit, in two steps:

- `cached_run` (the slower path, torch imported): computes the cache key of every task of the
  run from the params, the code and the data: the same calls the flow makes (flows/graph.py),
  the same keys (`stage_key`), each task's inputs read from its upstream task's Prefect result
  record, as Prefect itself does for a cached task. When every key has a finished store entry
  and a valid result record, and a finished flow run of exactly these keys (and of the same
  orchestration and report code) recorded its result (`record_run`), that result is the answer:
  the summary is printed and the run's report files are put back in reports/pipeline. Nothing
  is started or recorded (no Prefect flow run, no MLflow run).
- `replay` (the quick path, before torch, pandas, Prefect or MLflow is imported: the first
  thing `compalign` does, flows/entry.py): `cached_run` has to validate the params and compute
  every task's key, which imports the whole package (torch, torchvision, timm, torch-pruning,
  scikit-learn): about 5 of the 6.5 s such a rerun took. Once it has answered (or a flow run has
  finished), the answer is remembered (`remember`) under the digest of everything the keys can
  depend on, read without those imports:
  - the command's own inputs: the params file's bytes, the `--set` overrides, the working
    folder, the environment variables the package reads (COMPALIGN_*, PREFECT_*, MLFLOW_*,
    CUDA_VISIBLE_DEVICES), the Python version and platform, whether GPU device files exist;
  - every source file of the package (compalign/, tasks/, flows/: a change anywhere misses,
    even one no task uses) and the name and version of every installed distribution (the
    dist-info folder names: an upgraded torch misses);
  - the files and folders the validated params name (data.root, a reference model file, ...):
    their sizes and modification times, every file under a folder included, taken when the
    answer was remembered and compared now; the MLflow experiment's identity in the local
    SQLite store.
  A later `compalign run` with the same digest checks, as the slower path does, that every
  task's store entry is still finished (its main file has the digest its manifest records) and
  that Prefect's result record is still a cache hit; that the run's recorded result is the one
  the summary was rendered from; then restores the report files and prints the remembered
  summary, rendered for the same kind of console (terminal or not, width, colours).

Anything missing or changed, `--refresh` or COMPALIGN_REFRESH, and the flow runs as usual.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sqlite3
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.infra.code import ROOT
from tasks.infra.paths import (
    MLFLOW_STORE,
    PIPELINE_REPORT_DIR,
    PREFECT_RESULTS_DIR,
    QUICK_DIR,
    RUNS_DIR,
)
from tasks.infra.store import (
    entry_dir,
    is_complete,
    plain_json_record,
    refresh_requested,
    stage_key,
)

if TYPE_CHECKING:  # the package's config imports torch: kept out of the quick path
    from compalign.config import Params
    from flows.graph import Input

MLFLOW_UI = "http://127.0.0.1:5000"  # where `make ui` serves it
REPORT_DIR = PIPELINE_REPORT_DIR  # the run's summary and report
RESULT_FILE = "result.json"
REPORTS = "reports"
# Code that shapes a run's summary and reports but enters no task's key.
PRESENTATION = ("flows", "tasks/reports", "tasks/infra/tracking.py", "compalign/report")
# Settings of how a run executes, not of what it computes.
EXECUTION = ("workers", "threads", "busy_cores", "gpu_workers", "runner", "dask_address")
SOURCES = ("compalign", "tasks", "flows")
SCHEME = 1  # bump when what the quick digest covers changes
ENVIRONMENT = ("COMPALIGN_", "PREFECT_", "MLFLOW_", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
GPU_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")
TERMINAL_WIDTH = 100  # what summary tables fit when the output is not a terminal (logs, CI)
WITNESS_LIMIT = 200_000  # files under the folders params name; above it nothing is remembered
MEMOS_KEPT = 32  # remembered answers kept per project, the most recently written


# --- the slower path: every task's key computed from the params -------------------------------


def _record(key: str) -> Any:
    """The result Prefect stored for `key`, if its store entry is finished and the record is
    one Prefect would read back as a cache hit; else raise LookupError."""
    path = PREFECT_RESULTS_DIR / key
    if not (path.is_file() and is_complete(entry_dir(key)) and plain_json_record(path)):
        raise LookupError(key)
    record = json.loads(path.read_text())
    if record["metadata"].get("expiration") is not None:
        raise LookupError(key)
    return json.loads(record["result"])


def task_keys(params: Params) -> list[str] | None:
    """The cache key of every task of the run `params` ask for, in the flow's order; None when
    one of them would not be a cache hit (so the keys after it cannot be known without running
    it)."""
    from compalign.train import resolve_device
    from flows.graph import field_of, pipeline_steps, resolve

    track = tracking_identity(params.run.experiment)
    if track is None:
        return None
    device = str(resolve_device(params.run.device))
    results: dict[str, Any] = {}

    def result_of(source: Input) -> Any:
        return field_of(results[source.step], source)

    keys = []
    for step in pipeline_steps(params, device, track, None):
        key = stage_key(step.stage, resolve(step.arguments, result_of))
        try:
            results[step.id] = _record(key)
        except LookupError:
            return None
        keys.append(key)
    return keys


def records_hold(keys: list[str]) -> bool:
    """Every task of `keys` would still be a cache hit: its store entry is finished and its
    Prefect result record is one Prefect reads back."""
    try:
        for key in keys:
            _record(key)
    except LookupError:
        return False
    return True


def run_digest(params: Params, keys: list[str]) -> str:
    """Names a run: its task keys, its params but how it executes, and the orchestration and
    report code."""
    settings = params.model_dump()
    settings["run"] = {k: v for k, v in settings["run"].items() if k not in EXECUTION}
    digest = hashlib.sha256(json.dumps([keys, settings], sort_keys=True, default=str).encode())
    for name in PRESENTATION:
        path = ROOT / name
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file() and "__pycache__" not in file.parts:
                digest.update(file.relative_to(ROOT).as_posix().encode())
                digest.update(file.read_bytes())
    return digest.hexdigest()[:32]


def record_run(params: Params, result: dict[str, Any], report_dir: Path) -> Path | None:
    """After a finished flow run: keep its result and report files under the digest of its
    task keys, for `cached_run`."""
    keys = task_keys(params)
    if keys is None:  # a task's record was not kept (e.g. a result Prefect did not persist)
        return None
    directory = RUNS_DIR / run_digest(params, keys)
    scratch = directory.with_name(directory.name + f".tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    if Path(report_dir).is_dir():
        shutil.copytree(report_dir, scratch / REPORTS)
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / RESULT_FILE).write_text(json.dumps(result, default=str) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    scratch.rename(directory)
    return directory


def cached_run(params: Params, report_dir: Path) -> dict[str, Any] | None:
    """The recorded result of a finished run whose every task is a cache hit now, with every
    task counted as Cached and its report files restored; None when the flow must run."""
    if refresh_requested() or os.environ.get("PREFECT_TASKS_REFRESH_CACHE", "").lower() in (
        "1",
        "true",
    ):
        return None
    keys = task_keys(params)
    if keys is None:
        return None
    directory = RUNS_DIR / run_digest(params, keys)
    if not (directory / RESULT_FILE).is_file():
        return None
    result = json.loads((directory / RESULT_FILE).read_text())
    result["tasks"] = [{**task, "state": "Cached"} for task in result["tasks"]]
    if (directory / REPORTS).is_dir():
        shutil.copytree(directory / REPORTS, report_dir, dirs_exist_ok=True)
    return result


# --- the quick path: the remembered answer of the same command ---------------------------------


def tracking_identity(experiment: str) -> dict[str, str] | None:
    """What tasks.infra.tracking.setup returns for `experiment`, read from a local SQLite store
    without MLflow; None when there is no such store or experiment (the flow then makes them)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / MLFLOW_STORE}"
    database = Path(uri.removeprefix("sqlite:///"))
    if not uri.startswith("sqlite:///") or not database.is_file():
        return None
    try:
        with sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True) as connection:
            row = connection.execute(
                "SELECT experiment_id, creation_time, lifecycle_stage FROM experiments "
                "WHERE name = ?",
                (experiment,),
            ).fetchone()
    except sqlite3.Error:
        return None
    if row is None or row[2] != "active":
        return None
    return {"uri": uri, "experiment_id": str(row[0]), "store_id": f"{uri}|{row[0]}|{row[1]}"}


def console_kind() -> dict[str, Any]:
    """The console the summary is printed on, as print_summary sizes it: a terminal's width and
    colours, or TERMINAL_WIDTH without colours for logs and pipes."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        return {"terminal": False, "width": TERMINAL_WIDTH, "colors": None}
    return {"terminal": True, "width": console.width, "colors": console.color_system}


def _installed() -> list[str]:
    """Every installed distribution's dist-info folder name (name and version)."""
    names: set[str] = set()
    for key in ("purelib", "platlib"):
        folder = Path(sysconfig.get_paths()[key])
        if folder.is_dir():
            names.update(entry.name for entry in os.scandir(folder) if entry.name.endswith("-info"))
    return sorted(names)


def inputs_digest(params_file: Path, overrides: list[str]) -> str | None:
    """The digest of the command's inputs, the package's code and the installed distributions;
    None when the params file cannot be read (the usual path says why)."""
    try:
        params_bytes = params_file.read_bytes()
    except OSError:
        return None
    digest = hashlib.sha256()
    head = {
        "scheme": SCHEME,
        "params_file": str(params_file),
        "overrides": list(overrides),
        "cwd": os.getcwd(),
        "environment": {
            name: value
            for name, value in sorted(os.environ.items())
            if name.startswith(ENVIRONMENT)
        },
        "python": sys.version,
        "prefix": sys.prefix,
        "platform": platform.platform(),
        "gpu_files": [Path(name).exists() for name in GPU_FILES],
        "installed": _installed(),
    }
    digest.update(json.dumps(head, sort_keys=True).encode())
    digest.update(hashlib.sha256(params_bytes).digest())
    for folder in SOURCES:
        for file in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" not in file.parts:
                digest.update(file.relative_to(ROOT).as_posix().encode())
                digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:32]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str) and value:
        yield value


def _stat(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_size, status.st_mtime_ns]


def witnesses(settings: dict[str, Any]) -> dict[str, Any] | None:
    """Size and modification time of every file the params name, and of every file under every
    folder they name; None when there are too many to check quickly."""
    seen: dict[str, Any] = {}
    count = 0
    for text in sorted(set(_strings(settings))):
        if len(text) > 4096 or "\n" in text:
            continue
        path = Path(text)
        try:
            if path.is_file():
                seen[text] = _stat(path)
            elif path.is_dir():
                listing = _listing(path)
                count += len(listing)
                if count > WITNESS_LIMIT:
                    return None
                seen[text] = listing
        except OSError:
            continue
    return seen


def _listing(folder: Path) -> dict[str, list[int]]:
    listing = {}
    for directory, _, files in os.walk(folder):
        for name in files:
            path = Path(directory, name)
            listing[path.relative_to(folder).as_posix()] = _stat(path)
    return listing


def _witnesses_hold(recorded: dict[str, Any]) -> bool:
    for text, seen in recorded.items():
        path = Path(text)
        try:
            if isinstance(seen, dict):
                if not path.is_dir() or _listing(path) != seen:
                    return False
            elif not path.is_file() or _stat(path) != seen:
                return False
        except OSError:
            return False
    return True


def _memo_path(digest: str) -> Path:
    return QUICK_DIR / f"{digest}.json"


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def remember(
    digest: str,
    *,
    keys: list[str],
    run_dir: Path,
    settings: dict[str, Any],
    experiment: str,
    console: dict[str, Any],
    summary: str,
    lines: list[str],
) -> Path | None:
    """Keep the answer of a run whose every task is cached now, for `replay`: its task keys,
    its recorded run, the files its params name and its output, as printed on `console`."""
    seen = witnesses(settings)
    track = tracking_identity(experiment)
    result = run_dir / RESULT_FILE
    if seen is None or track is None or not result.is_file():
        return None
    memo = {
        "keys": keys,
        "run_dir": run_dir.as_posix(),
        "result_sha256": _file_digest(result),
        "witnesses": seen,
        "experiment": experiment,
        "tracking": track,
        "outputs": {},
        "lines": lines,
    }
    path = _memo_path(digest)
    if path.is_file():  # keep what other consoles remembered for the same answer
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
        if {k: old.get(k) for k in ("keys", "run_dir", "result_sha256")} == {
            k: memo[k] for k in ("keys", "run_dir", "result_sha256")
        }:
            memo["outputs"] = old.get("outputs", {})
    memo["outputs"][json.dumps(console, sort_keys=True)] = summary
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    scratch.write_text(json.dumps(memo) + "\n")
    os.replace(scratch, path)
    prune()
    return path


def prune(keep: int = MEMOS_KEPT) -> None:
    """Delete all but the `keep` most recently written answers (each params file, override set
    and code version leaves one; an answer deleted only makes its next rerun take the slower
    path, `cached_run`)."""
    memos = []
    for memo in QUICK_DIR.glob("*.json"):
        with contextlib.suppress(OSError):  # another run may be pruning too
            memos.append((memo.stat().st_mtime_ns, memo))
    for _, memo in sorted(memos, reverse=True)[keep:]:
        memo.unlink(missing_ok=True)


def parse_run(argv: list[str]) -> tuple[Path, list[str]] | None:
    """`run [--params FILE] [--set K=V]... [--verbose]` as (params file, overrides); None for
    anything else (another command, --refresh, --help, an option this does not know)."""
    if not argv or argv[0] != "run":
        return None
    params_file, overrides = Path("params.yaml"), []
    rest = iter(argv[1:])
    for word in rest:
        name, equals, value = word.partition("=")
        if name in ("--params", "-p", "--set", "-s"):
            if not equals:
                value = next(rest, None)
                if value is None:
                    return None
            if name in ("--params", "-p"):
                params_file = Path(value)
            else:
                overrides.append(value)
        elif word not in ("--verbose", "-v"):
            return None
    return params_file, overrides


def replay(argv: list[str]) -> bool:
    """Print the remembered answer of `compalign <argv>` when it is one and still holds; False
    when the usual path must run."""
    parsed = parse_run(argv)
    if parsed is None or os.environ.get("COMPALIGN_REFRESH") == "1":
        return False
    if os.environ.get("PREFECT_TASKS_REFRESH_CACHE", "").lower() in ("1", "true"):
        return False
    digest = inputs_digest(*parsed)
    if digest is None:
        return False
    try:
        memo = json.loads(_memo_path(digest).read_text())
    except (OSError, ValueError):
        return False
    summary = memo["outputs"].get(json.dumps(console_kind(), sort_keys=True))
    if summary is None or tracking_identity(memo["experiment"]) != memo["tracking"]:
        return False
    if not _witnesses_hold(memo["witnesses"]):
        return False
    run_dir = Path(memo["run_dir"])
    result = run_dir / RESULT_FILE
    if not result.is_file() or _file_digest(result) != memo["result_sha256"]:
        return False
    if not records_hold(memo["keys"]):
        return False
    if (run_dir / REPORTS).is_dir():
        shutil.copytree(run_dir / REPORTS, REPORT_DIR, dirs_exist_ok=True)
    sys.stdout.write(summary)
    sys.stdout.write("".join(f"{line}\n" for line in memo["lines"]))
    sys.stdout.flush()
    return True
