"""Shared fixtures. Prefect's environment is set before anything imports Prefect."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = Path(__file__).with_name("tiny.yaml")
BIN = Path(sys.executable).parent

# One Prefect home for the whole session, outside the repository.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="compalign-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)

from flows.runtime import configure_environment  # noqa: E402

configure_environment(_SESSION_HOME)


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect API server for in-process flow runs (started once: ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project directory as the working directory, with its own MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("COMPALIGN_REFRESH", raising=False)
    return tmp_path


@pytest.fixture
def tiny_params():
    """The tiny profile as a validated Params, with optional --set style overrides."""
    from compalign.config import load_params

    def make(*overrides: str):
        return load_params(TINY, list(overrides))

    return make


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600):
    """Run the installed `compalign` command in `cwd`; return the CompletedProcess."""
    full_env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **(env or {})}
    for name in ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH"):
        full_env.pop(name, None)  # the CLI gives each project its own
    return subprocess.run(
        [str(BIN / "compalign"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def copy_project(destination: Path) -> Path:
    """The project's tracked source files (what a fresh clone has) copied into `destination`."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination
