"""The Prefect API server of one `compalign` process, which never outlives it.

Prefect's own temporary server (started when PREFECT_API_URL is unset) runs in the caller's
process group and is stopped only by an atexit hook: `kill -9` of `compalign` leaves it running
(about 250 MB, listening on loopback), and Ctrl-C sent to the whole group stops it before the flow,
which then retries the dead API for minutes. This module starts the same server (Prefect's app
under uvicorn, loopback only, the project's PREFECT_HOME) in a session of its own, so a terminal's
Ctrl-C reaches only `compalign`, and the server watches its parent: when `compalign` is gone, by
any signal, the server stops itself within a second. A normal exit stops it at once.

Its start (5-6 s of imports and database set-up in the server process) overlaps the run's own
imports and MLflow's set-up: `start_api_server` binds the port and returns,
`wait_for_api_server` waits for it just before the first flow.

A new project's database is a copy of an empty one that Prefect's own migrations made once per
Prefect version and machine (`seed_database`): migrating a new database took 6 s of the server's
11 s start, in every new folder.

A user's own server (PREFECT_API_URL set) is used as it is.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from compalign.errors import UserError
from tasks.infra.paths import template_dir
from tasks.infra.templates import make_template

# Runs in the server process: a thread that stops the server once its parent is gone, then
# Prefect's API app under uvicorn (what Prefect's temporary server runs).
LAUNCHER = """
import os, signal, sys, threading, time
parent = int(sys.argv[1])

def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful shutdown
    time.sleep(10)
    os._exit(1)

threading.Thread(target=watch, daemon=True).start()
from flows.server import seed_database
seed_database()
import socket
import uvicorn
# the socket compalign bound and listens on: no other process can take the port meanwhile
listening = socket.socket(fileno=int(sys.argv[2]))
config = uvicorn.Config("prefect.server.api.server:create_app", factory=True,
                        log_level="error", lifespan="on")
uvicorn.Server(config).run(sockets=[listening])
"""
STARTUP_TIMEOUT_S = 120

SQLITE_URL = "sqlite+aiosqlite:///"
# Run by `_migrate` with the database URL pointed at the template being made: Prefect's own
# migrations, as its server runs them on a new database
MIGRATE = """
import asyncio
from prefect.server.database import provide_database_interface
asyncio.run(provide_database_interface().create_db())
"""


def seed_database() -> None:
    """Give a project whose Prefect database does not exist yet a copy of a migrated empty one
    (made once per Prefect version with Prefect's own migrations), so its server starts without running
    the migrations (6 s of CPU). Runs in the server's process, before Prefect's app starts; a
    database that exists, one that is not a local SQLite file, or any failure here leave the
    server to create the database itself, as it did before. The copy is linked into place only
    if no database appeared meanwhile (a second run starting in the same new folder), so a
    server never has its database replaced under it."""
    try:
        from prefect import __version__
        from prefect.settings import get_current_settings

        url = get_current_settings().server.database.connection_url
        url = url.get_secret_value() if url is not None else ""
        if not url.startswith(SQLITE_URL) or "?" in url or ":memory:" in url:
            return
        database = Path(url.removeprefix(SQLITE_URL))
        if database.exists():
            return
        template = template_dir() / f"prefect-{__version__}.db"
        if not template.exists():
            make_template(template, _migrate)
        database.parent.mkdir(parents=True, exist_ok=True)
        scratch = database.with_name(f".{database.name}.{os.getpid()}.seeding")
        shutil.copyfile(template, scratch)
        try:
            os.link(scratch, database)
        except FileExistsError:
            pass
        finally:
            scratch.unlink(missing_ok=True)
    except Exception:  # noqa: BLE001  only a start that is slower, as before
        return


def _migrate(database: Path) -> None:
    """Prefect's migrations on `database`, in a process of its own (Prefect reads its database
    URL once, at import)."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(database.parent),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"{SQLITE_URL}{database}",
    }
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    subprocess.run(
        [sys.executable, "-c", MIGRATE], env=env, check=True, capture_output=True, timeout=300
    )


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


STARTS = 3  # a server that exits before answering is started again, on the same socket, this
# many times in all: two runs that create one project's Prefect database at once race on its
# migrations ("index ... already exists"), and the loser's server exits


@dataclass
class _Starting:
    """A server started and not yet seen healthy: the socket it listens on (kept open here, so
    a restarted server takes the same port), its environment, its process."""

    listening: socket.socket
    env: dict[str, str]
    process: subprocess.Popen
    started: float
    starts: int = 1


_STARTING: dict[str, _Starting] = {}  # by PREFECT_API_URL


def _launch(listening: socket.socket, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(os.getpid()), str(listening.fileno())],
        env=env,
        pass_fds=(listening.fileno(),),
        start_new_session=True,  # a terminal's Ctrl-C reaches compalign, not the server
        stdin=subprocess.DEVNULL,
    )


def start_api_server() -> subprocess.Popen | None:
    """Start this process's Prefect API server and point PREFECT_API_URL at it, without
    waiting for it (`wait_for_api_server` does, just before the first flow: the server's start
    overlaps the imports and MLflow's set-up); None (and nothing started) when the user set
    PREFECT_API_URL. Call before Prefect is imported.

    The port is bound here and the listening socket handed to the server, so no other process
    can take it between choosing and binding it."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    spec = importlib.util.find_spec("prefect")
    app_dir = str(Path(spec.origin).parent.parent)
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [app_dir, os.environ.get("PYTHONPATH")])),
    }
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(128)
    state = _Starting(listening, env, _launch(listening, env), time.monotonic())
    url = f"http://127.0.0.1:{listening.getsockname()[1]}/api"
    os.environ["PREFECT_API_URL"] = url
    _STARTING[url] = state
    atexit.register(_stop, state)
    return state.process


def _stop(state: _Starting) -> None:
    stop_api_server(state.process)
    state.listening.close()


def wait_for_api_server() -> None:
    """Block until the server `start_api_server` started answers; a server that exits first is
    started again, up to STARTS times in all; a one-line UserError if it keeps exiting or does
    not answer within STARTUP_TIMEOUT_S. A user's own server (PREFECT_API_URL) is asked once
    whether it answers (`_check_users_server`)."""
    url = os.environ.get("PREFECT_API_URL", "")
    state = _STARTING.get(url)
    if state is None:
        _check_users_server(url)
        return
    while not _healthy(url):
        if state.process.poll() is not None:
            if state.starts >= STARTS:
                raise UserError(
                    f"the local Prefect server exited with code {state.process.returncode} "
                    f"before it answered ({state.starts} starts); set PREFECT_API_URL to a "
                    "running `prefect server start`"
                )
            state.starts += 1
            state.process = _launch(state.listening, state.env)
            continue
        if time.monotonic() - state.started > STARTUP_TIMEOUT_S:
            state.process.kill()
            raise UserError(
                f"the local Prefect server did not start within {STARTUP_TIMEOUT_S} s; "
                "set PREFECT_API_URL to a running `prefect server start`"
            )
        time.sleep(0.1)
    del _STARTING[url]
    _ANSWERED.add(url)


USERS_SERVER_WAIT_S = 10  # a user's own server that does not answer within this is refused
_ANSWERED: set[str] = set()  # servers seen healthy in this process


def _check_users_server(url: str) -> None:
    """A one-line UserError when PREFECT_API_URL names a server that does not answer (within
    USERS_SERVER_WAIT_S): Prefect's client would otherwise retry for minutes mid-run, then
    stop with a traceback."""
    if not url or url in _ANSWERED:
        return
    deadline = time.monotonic() + USERS_SERVER_WAIT_S
    while not _healthy(url):
        if time.monotonic() > deadline:
            raise UserError(
                f"PREFECT_API_URL={url} does not answer (no {url}/health within "
                f"{USERS_SERVER_WAIT_S} s): start that server, or unset PREFECT_API_URL and "
                "compalign starts its own"
            )
        time.sleep(0.25)
    _ANSWERED.add(url)


def stop_api_server(process: subprocess.Popen, grace_s: float = 10) -> None:
    """Stop the server (SIGTERM, then SIGKILL after `grace_s`)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
