"""The Prefect API server of one `compalign` process, which never outlives it.

Prefect's own temporary server (started when PREFECT_API_URL is unset) runs in the caller's
process group and is stopped only by an atexit hook: `kill -9` of `compalign` leaves it running
(about 250 MB, listening on loopback), and Ctrl-C sent to the whole group stops it before the flow,
which then retries the dead API for minutes. This module starts the same server (Prefect's app
under uvicorn, loopback only, the project's PREFECT_HOME) in a session of its own, so a terminal's
Ctrl-C reaches only `compalign`, and the server watches its parent: when `compalign` is gone, by
any signal, the server stops itself within a second. A normal exit stops it at once.

A user's own server (PREFECT_API_URL set) is used as it is.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from compalign.errors import UserError

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
import uvicorn
uvicorn.run("prefect.server.api.server:create_app", factory=True, host="127.0.0.1",
            port=int(sys.argv[2]), log_level="error", lifespan="on")
"""
STARTUP_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_api_server() -> subprocess.Popen | None:
    """Start this process's Prefect API server and point PREFECT_API_URL at it; None (and
    nothing started) when the user set PREFECT_API_URL. Call before Prefect is imported."""
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
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:  # another process may take the port between choosing and binding it: retry
        port = _free_port()
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(os.getpid()), str(port)],
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches compalign, not the server
            stdin=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}/api"
        while process.poll() is None and not _healthy(url):
            if time.monotonic() > deadline:
                process.kill()
                raise UserError(
                    f"the local Prefect server did not start within {STARTUP_TIMEOUT_S} s; "
                    "set PREFECT_API_URL to a running `prefect server start`"
                )
            time.sleep(0.1)
        if process.poll() is None:
            break
        if time.monotonic() > deadline:
            raise UserError(f"the local Prefect server exited with code {process.returncode}")
    os.environ["PREFECT_API_URL"] = url
    atexit.register(stop_api_server, process)
    return process


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
