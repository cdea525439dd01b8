"""flows/server.py: the Prefect API server a run starts, and its end."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from compalign.errors import UserError
from flows import server
from flows.server import start_api_server, stop_api_server, wait_for_api_server


def test_a_users_own_server_is_used_as_it_is(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert start_api_server() is None


def test_stop_ends_a_process_and_tolerates_one_already_gone():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stop_api_server(process, grace_s=5)
    assert process.poll() is not None
    stop_api_server(process)  # already stopped: nothing to do


def test_a_server_that_exits_before_answering_is_one_line(monkeypatch):
    """start_api_server returns at once (the server starts while the run imports and sets up
    MLflow); wait_for_api_server starts a server that exits again (STARTS in all), then names
    its exit code."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(server, "LAUNCHER", "import sys; sys.exit(3)")
    process = start_api_server()
    assert os.environ["PREFECT_API_URL"].startswith("http://127.0.0.1:")
    with pytest.raises(UserError, match=r"exited with code 3 before it answered \(3 starts\)"):
        wait_for_api_server()
    assert process.poll() == 3  # the first of the three


def test_waiting_is_a_no_op_for_a_users_own_server(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens there
    wait_for_api_server()
