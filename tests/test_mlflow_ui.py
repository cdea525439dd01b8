"""The MLflow and Prefect UIs as a user sees them: a real `mlflow server` and a real `prefect
server start` on loopback, opened in headless Chromium, after one tiny `compalign run` whose flow
ran against that Prefect server.

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
from tasks.infra.tracking import ui_links

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
def prefect_ui(tmp_path_factory):
    """`prefect server start` on a free loopback port with its own PREFECT_HOME: its URL and
    that home."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    log = home / "prefect-server.log"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        # the UI's pages call this API (default: port 4200)
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
    }
    env.pop("PREFECT_API_URL", None)
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=home,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: healthy(f"{url}/api/health"), 180, "prefect server", server, log)
        yield url, home
    finally:
        assert not stop_group(server), "processes of the Prefect server outlived it"


@pytest.fixture(scope="module")
def pipeline_store(tmp_path_factory, prefect_ui):
    """A project where `compalign run` ran the tiny profile against the Prefect server: its
    mlflow.db and its summary."""
    url, home = prefect_ui
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
        env={"PREFECT_API_URL": f"{url}/api", "PREFECT_HOME": str(home / "client")},
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


def test_the_registered_models_load_back_and_their_page_shows_the_aliases(
    pipeline_store, mlflow_server, page, tmp_path
):
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import Model

    store = MlflowClient(f"sqlite:///{pipeline_store / 'mlflow.db'}")
    name = "digits-small_cnn"  # <dataset>-<architecture>
    versions = store.search_model_versions(f"name = '{name}'")
    runs = store.search_runs(
        [store.get_experiment_by_name("tiny").experiment_id],
        filter_string="tags.role != 'pipeline'",
    )
    # one version per audited model, tagged with its headline metrics
    assert sorted(v.run_id for v in versions) == sorted(run.info.run_id for run in runs)
    for version in versions:
        run = store.get_run(version.run_id)
        assert float(version.tags["accuracy"]) == pytest.approx(run.data.metrics["accuracy"])
    aliases = store.get_registered_model(name).aliases
    assert set(aliases) == {"reference", *(f"best-{loss}" for loss in LOSSES)}
    by_version = {str(v.version): v for v in versions}
    assert by_version[str(aliases["reference"])].tags["role"] == "reference"
    for loss in LOSSES:  # one compressed model per loss at the one level: its own
        assert by_version[str(aliases[f"best-{loss}"])].tags["name"] == (
            f"magnitude_global-{SPARSITY}-{loss}"
        )
    # each loads back with mlflow.pytorch.load_model and runs on its own input example
    mlflow.set_tracking_uri(f"sqlite:///{pipeline_store / 'mlflow.db'}")
    try:
        for version in versions:
            uri = f"models:/{name}/{version.version}"
            local = mlflow.artifacts.download_artifacts(
                uri, dst_path=str(tmp_path / f"v{version.version}")
            )
            example = np.asarray(Model.load(local).load_input_example(local))
            signature = mlflow.models.get_model_info(uri).signature
            assert tuple(signature.inputs.inputs[0].shape) == (-1, *example.shape[1:])
            with torch.no_grad():
                logits = mlflow.pytorch.load_model(uri)(torch.from_numpy(example)).float()
            assert tuple(logits.shape) == (len(example), signature.outputs.inputs[0].shape[1])
    finally:
        mlflow.set_tracking_uri(None)
    # the parent run: git commit and the headline as its description
    [parent] = store.search_runs(
        [store.get_experiment_by_name("tiny").experiment_id],
        filter_string="tags.role = 'pipeline'",
    )
    assert parent.data.tags["mlflow.source.git.commit"] == parent.data.tags["git_commit"]
    assert (
        "Fewest mismatches where the reference is right" in parent.data.tags["mlflow.note.content"]
    )

    page.goto(f"{mlflow_server}/#/models/{name}")
    page.get_by_text(f"Version {len(versions)}").first.wait_for(timeout=UI_TIMEOUT_MS)
    for alias in aliases:  # each version's aliases: "@ <alias>"
        page.get_by_text(f"@ {alias}", exact=True).first.wait_for(timeout=UI_TIMEOUT_MS)
    screenshot = tmp_path / "registered-model.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000


def test_the_flow_run_shows_its_artifacts_and_named_task_runs_in_the_prefect_ui(
    pipeline_store, prefect_ui, page, tmp_path
):
    import httpx

    url, _ = prefect_ui
    [flow_run] = httpx.post(f"{url}/api/flow_runs/filter", json={}, timeout=30).json()
    assert flow_run["state_type"] == "COMPLETED"
    task_runs = httpx.post(
        f"{url}/api/task_runs/filter",
        json={"flow_runs": {"id": {"any_": [flow_run["id"]]}}},
        timeout=30,
    ).json()
    names = {run["name"] for run in task_runs}
    # task runs say what they do
    assert {
        "prepare digits",
        "reference small_cnn seed 0",
        f"compress magnitude_global-{SPARSITY}",
        "audit reference",
        *(f"align magnitude_global-{SPARSITY}-{loss}" for loss in LOSSES),
        *(f"audit magnitude_global-{SPARSITY}-{loss}" for loss in LOSSES),
    } <= names
    artifacts = httpx.post(
        f"{url}/api/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}},
        timeout=30,
    ).json()
    by_key = {artifact["key"]: artifact for artifact in artifacts}
    key = "pipeline-digits-small-cnn"
    # Prefect stores a link artifact as Markdown: [text](url)
    assert [by_key[f"{key}-{part}"]["type"] for part in ("summary", "headline", "mlflow")] == [
        "table",
        "markdown",
        "markdown",
    ]
    assert by_key[f"{key}-progress"]["data"] == 100.0
    parent = pipeline_store_parent(pipeline_store)
    assert parent in by_key[f"{key}-mlflow"]["data"]
    assert "Fewest mismatches" in by_key[f"{key}-headline"]["data"]
    rows = json.loads(by_key[f"{key}-summary"]["data"])
    assert sorted(row["model"] for row in rows) == sorted(
        f"magnitude_global-{SPARSITY}-{loss}" for loss in LOSSES
    )

    # the flow run's page, Artifacts tab: the four artifacts, as a user opens them
    page.goto(f"{url}/runs/flow-run/{flow_run['id']}")
    page.get_by_text(flow_run["name"]).first.wait_for(timeout=UI_TIMEOUT_MS)
    page.get_by_text("Artifacts", exact=True).first.click()
    for part in ("summary", "headline", "mlflow", "progress"):
        page.get_by_text(f"{key}-{part}").first.wait_for(timeout=UI_TIMEOUT_MS)
    screenshot = tmp_path / "prefect-flow-run-artifacts.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    # the summary table artifact's own page renders the table
    page.goto(f"{url}/artifacts/artifact/{by_key[f'{key}-summary']['id']}")
    page.get_by_text(f"magnitude_global-{SPARSITY}-{LOSSES[-1]}").first.wait_for(
        timeout=UI_TIMEOUT_MS
    )
    page.screenshot(path=str(tmp_path / "prefect-summary-artifact.png"), full_page=True)
    print(f"screenshots of the Prefect UI: {tmp_path}")


def pipeline_store_parent(project: Path) -> str:
    """The run id of the pipeline's MLflow parent run in `project`'s store."""
    store = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = store.get_experiment_by_name("tiny")
    [parent] = store.search_runs([experiment.experiment_id], filter_string="tags.role = 'pipeline'")
    return parent.info.run_id
