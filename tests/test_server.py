"""flows/server.py: the Prefect API server a run starts, and its end."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading

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
    # set, then removed: monkeypatch then removes what start_api_server exports (a delenv of a
    # variable that is not there records nothing, and the dead server's URL outlived the test,
    # sending later CLI tests in the process to it)
    monkeypatch.setenv("PREFECT_API_URL", "unset")
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setattr(server, "LAUNCHER", "import sys; sys.exit(3)")
    process = start_api_server()
    assert os.environ["PREFECT_API_URL"].startswith("http://127.0.0.1:")
    with pytest.raises(UserError, match=r"exited with code 3 before it answered \(3 starts\)"):
        wait_for_api_server()
    assert process.poll() == 3  # the first of the three


def test_a_users_own_server_that_does_not_answer_is_one_line(monkeypatch):
    """Refused within USERS_SERVER_WAIT_S: Prefect's client retried a dead server for 7 minutes
    mid-run, then stopped with a traceback (exit 1)."""
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens there
    monkeypatch.setattr(server, "USERS_SERVER_WAIT_S", 0.5)
    with pytest.raises(UserError, match=r"^PREFECT_API_URL=http://127.0.0.1:9/api does not answer"):
        wait_for_api_server()


def test_a_users_own_server_that_answers_is_used(monkeypatch):
    """Its /health answers 200: nothing to wait for, and it is asked once per process."""
    asked = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()

        def log_message(self, *_args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health) as health:
        threading.Thread(target=health.serve_forever, daemon=True).start()
        monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{health.server_port}/api")
        wait_for_api_server()
        wait_for_api_server()
        health.shutdown()
    assert asked == ["/api/health"]


SEED = "from flows.server import seed_database; seed_database()"


def test_a_new_projects_database_is_a_copy_of_the_migrated_template(tmp_path):
    """In the server's process: the first new project makes the template (Prefect's own
    migrations, once per version), later ones copy it; an existing database is left as it is;
    the copy is a database Prefect's server starts on (every CLI test in a new folder)."""
    import sqlite3

    cache = tmp_path / "cache"

    def seed(home):
        env = {**os.environ, "PREFECT_HOME": str(home), "XDG_CACHE_HOME": str(cache)}
        env.pop("PREFECT_API_URL", None)
        subprocess.run([sys.executable, "-c", SEED], env=env, check=True, timeout=300)
        return home / "prefect.db"

    first = seed(tmp_path / "a")
    [template] = (cache / "compalign").glob("prefect-*.db")
    second = seed(tmp_path / "b")
    assert first.read_bytes() == second.read_bytes() == template.read_bytes()
    with sqlite3.connect(second) as connection:
        [(version,)] = connection.execute("SELECT version_num FROM alembic_version")
    assert version
    existing = tmp_path / "c" / "prefect.db"
    existing.parent.mkdir()
    existing.write_bytes(b"a project's own history")
    assert seed(existing.parent).read_bytes() == b"a project's own history"
