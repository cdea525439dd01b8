"""The MLflow UI as a user sees it: a real `mlflow server` on loopback opened in headless Chromium.

The browser is Debian's `chromium` (`make test` installs it; never `playwright install`, which
downloads browsers from outside the package registries), driven by Playwright.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import BIN, ROOT, TINY, free_port, healthy, poll, run_cli, stop_group
from tasks.tracking import ui_links

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("COMPALIGN_CHROMIUM", "/usr/bin/chromium"))
# a quiet, offline browser: no sandbox (root in CI containers), no GPU, no calls home
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT_DIR = Path(os.environ.get("COMPALIGN_SCREENSHOTS", ROOT / "reports" / "ui"))
UI_TIMEOUT_MS = 120_000  # the first page load compiles MLflow's bundle on a busy 2-core machine
LOSSES = ("ce", "label_preserving")
SPARSITY = 0.9


@pytest.fixture(scope="module")
def pipeline_store(tmp_path_factory):
    """A project where `compalign run` ran the tiny profile: its mlflow.db and its summary."""
    project = tmp_path_factory.mktemp("ui-project")
    result = run_cli(
        "run",
        "--params",
        str(TINY),
        "--set",
        f"compress.sparsities=[{SPARSITY}]",
        "--set",
        f"align.losses=[{', '.join(LOSSES)}]",
        cwd=project,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return project


@pytest.fixture(scope="module")
def mlflow_server(pipeline_store):
    """`mlflow server` on a free loopback port over the project's SQLite store."""
    port = free_port()
    log = pipeline_store / "mlflow-server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{pipeline_store / 'mlflow.db'}",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=pipeline_store,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: healthy(f"{url}/health"), 180, "mlflow server", server, log)
        yield url
    finally:
        assert not stop_group(server), "processes of the MLflow server outlived it"


@pytest.fixture(scope="module")
def page():
    """A headless Chromium page (1600x1000)."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1600, "height": 1000})
        finally:
            browser.close()


def test_the_pipeline_runs_are_in_the_ui_and_compare_side_by_side(mlflow_server, page):
    client = MlflowClient(mlflow_server)  # through the server's REST API, as the UI reads it
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    children = client.search_runs(
        [experiment.experiment_id], filter_string="tags.role = 'compressed'"
    )
    names = sorted(run.info.run_name for run in children)
    # run names say what the run is: compressor-sparsity-loss
    assert names == sorted(f"magnitude_global-{SPARSITY}-{loss}" for loss in LOSSES)
    [parent] = client.search_runs(
        [experiment.experiment_id], filter_string="tags.orchestrator = 'prefect'"
    )

    # the pages `compalign run` prints: the experiment's runs table and the parent run
    links = ui_links(mlflow_server, experiment.experiment_id, parent.info.run_id)
    page.goto(links["runs"])
    page.get_by_text(parent.info.run_name).first.wait_for(timeout=UI_TIMEOUT_MS)
    page.get_by_text("Runs", exact=True).first.wait_for(timeout=UI_TIMEOUT_MS)
    page.goto(links["run"])
    page.get_by_text(parent.info.run_id).first.wait_for(timeout=UI_TIMEOUT_MS)
    page.get_by_text(parent.info.run_name).first.wait_for(timeout=UI_TIMEOUT_MS)

    # the comparison of the compressed runs, as "Compare" on selected runs opens it
    ids = [run.info.run_id for run in sorted(children, key=lambda run: run.info.run_name)]
    query = urllib.parse.urlencode(
        {"runs": json.dumps(ids), "experiments": json.dumps([experiment.experiment_id])},
        quote_via=urllib.parse.quote,
    )
    page.goto(f"{mlflow_server}/#/compare-runs?{query}")
    page.get_by_text(f"Comparing {len(ids)} Runs").first.wait_for(timeout=UI_TIMEOUT_MS)
    page.get_by_text(names[0]).first.wait_for(timeout=UI_TIMEOUT_MS)
    page.get_by_role("button", name="Close").click()  # the assistant panel takes a third
    # put the mismatch metrics on the parallel-coordinates plot, as a user picks them
    metrics_box = page.locator("input[type=search]").nth(1)
    for metric in ("mismatches", "mismatches_ref_correct"):
        metrics_box.click()
        page.keyboard.type(metric)
        page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    plot = page.locator(".js-plotly-plot").first
    for metric in ("accuracy", "mismatches", "mismatches_ref_correct"):
        plot.get_by_text(metric, exact=True).first.wait_for(timeout=UI_TIMEOUT_MS)
    body = page.inner_text("body")
    for expected in (*names, *ids):
        assert expected in body, f"{expected!r} is not on the comparison page"

    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    screenshot = SCREENSHOT_DIR / "compare-runs.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot of the run comparison: {screenshot}")
