"""Scheduled pipeline runs: the flow served as a deployment of a real Prefect server.

`compalign serve` is a long-running process: it registers the deployment (schedule and the
validated params) and runs the pipeline in a subprocess each time the schedule fires.
"""

from __future__ import annotations

import os

import httpx
from pydantic import ValidationError

from compalign.config import Params
from compalign.errors import UserError

DEFAULT_API_URL = "http://127.0.0.1:4200/api"


def default_name(params: Params) -> str:
    """The deployment name when none is given: one deployment per dataset."""
    return f"compalign-pipeline-{params.data.source}"


def check_cron(cron: str) -> None:
    """Refuse a cron expression Prefect's own schedule model would reject."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValidationError as error:
        raise UserError(
            f"--cron {cron!r}: not a valid cron expression "
            '(five fields: minute hour day-of-month month day-of-week, e.g. "0 3 * * *")'
        ) from error


def api_url() -> str:
    """PREFECT_API_URL, which must name a `prefect server start` (the temporary server a plain
    flow call starts stops with its process, and the schedule with it)."""
    url = os.environ.get("PREFECT_API_URL", "").strip()
    if not url:
        raise UserError(
            "PREFECT_API_URL is not set: scheduled runs need a Prefect server; start one with "
            f"`prefect server start` and `export PREFECT_API_URL={DEFAULT_API_URL}`"
        )
    return url


def check_server(url: str) -> None:
    """Refuse to serve when no Prefect server answers at `url` (one line, not a traceback)."""
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=10).raise_for_status()
    except httpx.HTTPError as error:
        raise UserError(
            f"PREFECT_API_URL={url}: no Prefect server answers ({type(error).__name__}); "
            "start one with `prefect server start`"
        ) from error


def serve_pipeline(params: Params, cron: str, name: str) -> None:
    """Register the pipeline with the Prefect server on `cron` and run it on schedule (blocks)."""
    url = api_url()
    check_cron(cron)
    check_server(url)
    if params.run.threads:
        # runs execute in spawned subprocesses, which read torch's thread count from here
        os.environ.setdefault("OMP_NUM_THREADS", str(params.run.threads))

    from flows.pipeline import pipeline, task_runner

    # the served flow object itself runs in the subprocess: keep run_pipeline's task runner
    flow = pipeline.with_options(task_runner=task_runner(params))
    flow.serve(name=name, cron=cron, parameters={"params": params.model_dump()})
