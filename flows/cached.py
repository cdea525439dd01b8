"""A rerun with nothing changed, answered from the store without starting Prefect or MLflow.

`compalign run` first computes the cache key of every task of the run from the params, the code
and the data: the same calls the flow makes (flows/graph.py), the same keys (tasks/store.py
`stage_key`), each task's inputs read from its upstream task's Prefect result record, as Prefect
itself does for a cached task. When every key has a finished store entry and a valid result
record, and a finished flow run of exactly these keys (and of the same orchestration and report
code) recorded its result, that result is the answer: the summary is printed and the run's
report files are put back in reports/pipeline, and nothing is started or recorded (no Prefect
flow run, no MLflow run). Anything missing or changed, `--refresh` or COMPALIGN_REFRESH, and the
flow runs as usual.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.quick import tracking_identity
from tasks.code import ROOT
from tasks.store import (
    PREFECT_RESULTS_DIR,
    entry_dir,
    is_complete,
    plain_json_record,
    refresh_requested,
    stage_key,
)

if TYPE_CHECKING:  # the package's config imports torch: kept out of flows/quick.py's replay
    from compalign.config import Params
    from flows.graph import Input

MLFLOW_UI = "http://127.0.0.1:5000"  # where `make ui` serves it
RUNS_DIR = Path(".compalign/runs")
RESULT_FILE = "result.json"
REPORTS = "reports"
# Code that shapes a run's summary and reports but enters no task's key.
PRESENTATION = ("flows", "tasks/report.py", "tasks/tracking.py", "compalign/report")
# Settings of how a run executes, not of what it computes.
EXECUTION = ("workers", "threads", "busy_cores", "gpu_workers", "runner", "dask_address")


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
    from flows.graph import pipeline_steps, resolve

    track = tracking_identity(params.run.experiment)
    if track is None:
        return None
    device = str(resolve_device(params.run.device))
    results: dict[str, Any] = {}

    def result_of(source: Input) -> Any:
        result = results[source.step]
        return result if source.field is None else result[source.field]

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
