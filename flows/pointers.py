"""Where to look after a run: the commands that open this project's MLflow and Prefect stores in
their UIs, printed so that they run as they are in any folder (absolute paths; the installed
executables when they are not on PATH). Imports nothing heavy: the CLI prints these after a run,
and a cached run prints them without Prefect or MLflow.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

MLFLOW_PORT = 5000  # `mlflow ui`'s default, where the printed links point
PREFECT_PORT = 4200  # `prefect server start`'s default


def executable(name: str) -> str:
    """`name` when the command on PATH is this installation's, else the path of the one
    installed beside this Python (a venv's bin/, never activated), else `name`."""
    beside = Path(sys.executable).parent / name
    if not beside.is_file():
        return name
    found = shutil.which(name)
    if found is not None and Path(found).resolve() == beside.resolve():
        return name
    return str(beside)


def local_store(uri: str) -> bool:
    """Whether a tracking URI is a store on this machine (no server serves it)."""
    return not uri.startswith(("http://", "https://", "databricks"))


def mlflow_ui_command(uri: str, port: int | None = None) -> str:
    """`mlflow ui --backend-store-uri <uri>`: the MLflow UI of a local store, from any folder
    (the store's URI is absolute; its artifacts are at an absolute location too)."""
    command = [executable("mlflow"), "ui", "--backend-store-uri", uri]
    if port is not None and port != MLFLOW_PORT:
        command += ["--port", str(port)]
    return shlex.join(command)


def mlflow_lines(uri: str, experiment: str, run_url: str, runs_url: str, run_id: str) -> list[str]:
    """Where the MLflow parent run is, and how to open it: a local store's UI command and the
    links it serves, or the tracking server's links."""
    lines = [f"MLflow parent run {run_id} in experiment {experiment!r} ({uri})."]
    if local_store(uri):
        lines.append(f"See it with `{mlflow_ui_command(uri)}`, then open {run_url}")
    else:
        lines.append(f"See it at {run_url}")
    lines.append(f"(all runs, to compare: {runs_url})")
    return lines


def prefect_lines(flow_run_id: str, flow_run_name: str, users_server: str | None) -> list[str]:
    """Where the Prefect flow run is, and how to open it: on the user's own server
    (PREFECT_API_URL), or in this project's Prefect database, with the command that serves it."""
    if users_server:
        base = users_server.rstrip("/").removesuffix("/api")
        return [
            f"Prefect flow run {flow_run_name or flow_run_id}: {base}/runs/flow-run/{flow_run_id}"
        ]
    home = os.environ.get("PREFECT_HOME")
    if not home:
        return []
    home = str(Path(home).expanduser().resolve())
    command = f"PREFECT_HOME={shlex.quote(home)} {shlex.quote(executable('prefect'))}"
    named = f"{flow_run_name} ({flow_run_id})" if flow_run_name else flow_run_id
    return [
        f"Prefect flow run {named}, its task logs and artifacts: in {home}/prefect.db.",
        f"See it with `{command} server start`, then open "
        f"http://127.0.0.1:{PREFECT_PORT}/runs/flow-run/{flow_run_id}",
    ]
