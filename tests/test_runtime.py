"""flows/runtime.py: the process environment Prefect must find when it is first imported (each
case in a fresh interpreter: Prefect reads its settings once, at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

NAMES = (
    "PREFECT_HOME",
    "PREFECT_LOCAL_STORAGE_PATH",
    "PREFECT_SERVER_ANALYTICS_ENABLED",
    "DO_NOT_TRACK",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
)

CONFIGURE = f"""
import json, os, sys
from flows.runtime import configure_environment
configure_environment(*sys.argv[1:])
print(json.dumps({{name: os.environ.get(name) for name in {NAMES!r}}}))
"""


def configured(cwd, *args: str, **env: str) -> dict[str, str | None]:
    """The variables after configure_environment(*args) in a fresh interpreter started in `cwd`
    with none of them set but those in `env`."""
    clean = {k: v for k, v in os.environ.items() if k not in NAMES and k != "PREFECT_API_URL"}
    result = subprocess.run(
        [sys.executable, "-c", CONFIGURE, *args],
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_project_gets_its_own_prefect_home_and_result_store(tmp_path):
    values = configured(tmp_path)  # the project is the working directory by default
    home = tmp_path / ".compalign" / "prefect"
    assert values["PREFECT_HOME"] == str(home.resolve())
    assert home.is_dir()  # Prefect makes its home, not the parents of it
    # relative: resolved in the project directory, beside the store entries
    assert values["PREFECT_LOCAL_STORAGE_PATH"] == "artifacts/.prefect-results"
    assert values["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert values["DO_NOT_TRACK"] == "1"
    assert values["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"


def test_a_project_directory_can_be_named(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    values = configured(tmp_path, str(project))
    assert values["PREFECT_HOME"] == str((project / ".compalign" / "prefect").resolve())
    assert not (tmp_path / ".compalign").exists()


def test_the_users_settings_are_kept_but_the_result_store_is_the_projects(tmp_path):
    home = tmp_path / "my-prefect"
    values = configured(
        tmp_path,
        PREFECT_HOME=str(home),
        PREFECT_LOCAL_STORAGE_PATH="/elsewhere",
        DO_NOT_TRACK="0",
    )
    assert values["PREFECT_HOME"] == str(home)
    assert home.is_dir()
    assert not (tmp_path / ".compalign").exists()
    assert values["DO_NOT_TRACK"] == "0"
    # the stage cache keys look for result records only there
    assert values["PREFECT_LOCAL_STORAGE_PATH"] == "artifacts/.prefect-results"


def test_a_real_prefect_server_keeps_its_own_home(tmp_path):
    values = configured(tmp_path, PREFECT_API_URL="http://127.0.0.1:4200/api")
    assert values["PREFECT_HOME"] is None
    assert not (tmp_path / ".compalign").exists()
    assert values["PREFECT_LOCAL_STORAGE_PATH"] == "artifacts/.prefect-results"


@pytest.mark.parametrize("module", ["prefect", "prefect.task_runners"])
def test_refuses_to_run_once_prefect_is_imported(tmp_path, module):
    code = (
        f"import {module}, os\n"
        "from flows.runtime import configure_environment\n"
        "try:\n"
        "    configure_environment()\n"
        "except RuntimeError as error:\n"
        "    print('refused:', error, os.environ.get('PREFECT_LOCAL_STORAGE_PATH'))\n"
    )
    clean = {k: v for k, v in os.environ.items() if k not in NAMES}
    home = tmp_path / "home"  # where this Prefect import may write: not the user's ~/.prefect
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**clean, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "refused: configure_environment() must run before prefect is imported None"
    )  # and the result store left unset
    assert not (tmp_path / ".compalign").exists()


def test_each_worker_thread_runs_torch_with_the_tasks_thread_count(prefect_server):
    """torch.set_num_threads is per thread (OpenMP): the pool's workers get `threads`, the
    flow's own thread keeps its count."""
    import torch
    from prefect import flow, task

    from flows.runtime import thread_pool_runner

    @task
    def threads_here() -> int:
        return torch.get_num_threads()

    @flow(task_runner=thread_pool_runner(2, 1))
    def two_tasks() -> tuple[list[int], int]:
        futures = [threads_here.submit() for _ in range(2)]
        return [future.result() for future in futures], torch.get_num_threads()

    before = torch.get_num_threads()
    workers, main = two_tasks()
    assert workers == [1, 1] and main == before == torch.get_num_threads()
