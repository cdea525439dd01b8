"""flows/serve.py's checks before serving: the deployment name, the cron expression, the Prefect
server's URL and whether it answers (the served deployment itself runs in test_serve.py)."""

from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from compalign.errors import UserError
from conftest import free_port
from flows.serve import DEFAULT_API_URL, api_url, check_cron, check_server, default_name


def test_default_name_is_one_deployment_per_dataset(tiny_params):
    assert default_name(tiny_params()) == "compalign-pipeline-digits"
    assert default_name(tiny_params("data.source=cifar10")) == "compalign-pipeline-cifar10"


@pytest.mark.parametrize("cron", ["0 3 * * *", "*/15 * * * *", "30 2 1 * 1-5"])
def test_valid_cron_expressions_pass(cron):
    check_cron(cron)


@pytest.mark.parametrize("cron", ["0 3 * *", "61 3 * * *", "daily", ""])
def test_invalid_cron_expressions_are_a_user_error(cron):
    with pytest.raises(UserError, match="not a valid cron expression"):
        check_cron(cron)


def test_api_url_is_required(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(UserError, match="PREFECT_API_URL is not set") as error:
        api_url()
    assert DEFAULT_API_URL in str(error.value)
    monkeypatch.setenv("PREFECT_API_URL", "   ")
    with pytest.raises(UserError, match="PREFECT_API_URL is not set"):
        api_url()
    monkeypatch.setenv("PREFECT_API_URL", " http://127.0.0.1:4200/api \n")
    assert api_url() == "http://127.0.0.1:4200/api"


@contextlib.contextmanager
def health_server(status: int):
    """A local HTTP server answering `status` on /api/health and 404 elsewhere."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status if self.path == "/api/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def test_a_healthy_server_passes():
    with health_server(200) as url:
        check_server(url)
        check_server(url + "/")


def test_an_unhealthy_server_is_a_user_error():
    with health_server(503) as url, pytest.raises(UserError, match="no Prefect server answers"):
        check_server(url)


def test_no_server_at_the_url_is_a_user_error():
    url = f"http://127.0.0.1:{free_port()}/api"
    with pytest.raises(UserError, match="no Prefect server answers .ConnectError."):
        check_server(url)
