"""flows/server.py: the Prefect API server a run starts, and its end."""

from __future__ import annotations

import subprocess
import sys

from flows.server import start_api_server, stop_api_server


def test_a_users_own_server_is_used_as_it_is(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert start_api_server() is None


def test_stop_ends_a_process_and_tolerates_one_already_gone():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stop_api_server(process, grace_s=5)
    assert process.poll() is not None
    stop_api_server(process)  # already stopped: nothing to do
