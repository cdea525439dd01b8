"""Scheduled runs: `compalign serve` against a real `prefect server start`, and its user errors."""

from __future__ import annotations

import os
import subprocess
import time

import httpx
import pytest
from mlflow.tracking import MlflowClient

from compalign.config import Params, load_params
from conftest import BIN, TINY, free_port, healthy, poll, run_cli, stop_group, tail

pytestmark = pytest.mark.slow

CRON = "0 3 * * *"
# `prefect server start` took 13.5 s with a fresh PREFECT_HOME (migrations) and 3.7 s after, on
# this project's 2-core machine; CI may be slower and busy
SERVER_START_S = 180
TERMINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A real `prefect server start` on a free loopback port with its own PREFECT_HOME."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = home / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        started = time.monotonic()
        poll(lambda: healthy(f"{url}/health"), SERVER_START_S, "prefect server start", server, log)
        print(f"prefect server answered after {time.monotonic() - started:.1f} s")
        yield url
    finally:
        assert not stop_group(server), "processes of the Prefect server outlived it"


@pytest.fixture(scope="module")
def served(prefect_api, tmp_path_factory):
    """`compalign serve` running in an empty project; yields (project, deployment as JSON)."""
    project = tmp_path_factory.mktemp("serve-project")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PREFECT_API_URL": prefect_api}
    # the client's own home (profiles, logs) stays out of the user's ~/.prefect
    env["PREFECT_HOME"] = str(project.parent / f"{project.name}-prefect-home")
    for name in ("PREFECT_LOCAL_STORAGE_PATH", "MLFLOW_TRACKING_URI", "COMPALIGN_REFRESH"):
        env.pop(name, None)
    log = project.parent / f"{project.name}-serve.log"
    args = ["serve", "--cron", CRON, "--params", str(TINY), "--name", "test-serve"]
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(BIN / "compalign"), *args],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deployment = poll(
            lambda: _deployment(prefect_api, "test-serve"), 300, "deployment", process, log
        )
        yield project, deployment, log
    finally:
        assert not stop_group(process), "processes of `compalign serve` outlived it"


def _deployment(url: str, name: str) -> dict | None:
    response = httpx.post(
        f"{url}/deployments/filter",
        json={"deployments": {"name": {"any_": [name]}}},
        timeout=10,
    )
    response.raise_for_status()
    found = response.json()
    return found[0] if found else None


def test_serve_registers_the_schedule_and_the_validated_params(served):
    _, deployment, _ = served
    assert [entry["schedule"]["cron"] for entry in deployment["schedules"]] == [CRON]
    assert all(entry["active"] for entry in deployment["schedules"])
    params = deployment["parameters"]["params"]
    assert params["data"]["limit"] == 200
    assert params["run"]["experiment"] == "tiny"
    # the whole validated tree, defaults included, survives the trip through the server
    assert Params.model_validate(params) == load_params(TINY)


def test_a_run_of_the_deployment_runs_the_pipeline_in_the_project(served, prefect_api):
    """What the schedule does at 03:00, triggered now: the serve process runs the flow."""
    project, deployment, log = served

    def created() -> httpx.Response | None:
        # a busy SQLite-backed server answers 503 now and then (Prefect's own client retries)
        response = httpx.post(
            f"{prefect_api}/deployments/{deployment['id']}/create_flow_run", json={}, timeout=10
        )
        return None if response.status_code == 503 else response.raise_for_status()

    run_id = poll(created, 60, "a flow run of the deployment").json()["id"]

    def finished() -> dict | None:
        run = httpx.get(f"{prefect_api}/flow_runs/{run_id}", timeout=10).json()
        return run if run["state"]["type"] in TERMINAL_STATES else None

    run = poll(finished, 600, "the deployment's flow run", log=log)
    assert run["state"]["type"] == "COMPLETED", tail(log)
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    parents = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.prefect_flow_run_id = '{run_id}'"
    )
    assert [parent.info.status for parent in parents] == ["FINISHED"]
    assert (project / "reports" / "pipeline" / "summary.parquet").is_file()


def test_serve_without_prefect_api_url_is_one_line_exit_2(tmp_path):
    result = run_cli("serve", "--cron", CRON, "--params", str(TINY), cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: PREFECT_API_URL is not set"), lines
    assert "prefect server start" in lines[0] and "http://127.0.0.1:4200/api" in lines[0]
    assert list(tmp_path.iterdir()) == []  # refused before any set-up


@pytest.mark.parametrize("cron", ["0 3 * *", "61 3 * * *", "daily"])
def test_serve_with_a_bad_cron_is_one_line_exit_2(tmp_path, cron):
    # the expression is checked before the server is asked: no server needed here
    env = {"PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}
    result = run_cli("serve", "--cron", cron, "--params", str(TINY), cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --cron"), lines
    assert "Traceback" not in result.stderr


def test_serve_with_no_server_at_the_url_is_one_line_exit_2(tmp_path):
    env = {"PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}
    result = run_cli("serve", "--cron", CRON, "--params", str(TINY), cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Prefect server answers" in lines[0], lines
