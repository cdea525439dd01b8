"""`compalign audit`: models you bring, audited against a reference, as a Prefect flow.

prepare (cached in the store, as in the pipeline) -> the audit of every candidate against the
reference (tasks.reports.compare), under one MLflow parent run. `audit_models(params, ...)` is the same
body with the plain functions: it runs without Prefect.
"""

from __future__ import annotations

import re
import socket
from typing import Any

import pandas as pd
from prefect import flow

from compalign.compare import comparison_steps
from compalign.config import Params
from compalign.train import resolve_device
from flows import artifacts
from tasks import stage
from tasks.data import prepare
from tasks.infra import tracking
from tasks.infra.paths import COMPARE_REPORT_DIR
from tasks.reports.compare import audit_brought_models, audit_brought_models_task

REPORT_DIR = COMPARE_REPORT_DIR
NAME_LENGTH = 60  # MLflow's and Prefect's run names of an audit, at most


def run_name(params: Params, candidates: dict[str, str]) -> str:
    """`audit-<data>-<candidate>-...`: the data's own name and what was audited, so that two
    audits are told apart in the MLflow and Prefect run lists."""
    name = "-".join(["audit", params.data.dataset_name(), *candidates])
    name = re.sub(r"[^\w.\-]+", "_", name)
    return name if len(name) <= NAME_LENGTH else name[: NAME_LENGTH - 1] + "…"


def audit_models(
    params: Params,
    reference: str,
    candidates: dict[str, str],
    reference2: str | None = None,
    *,
    rules: list[str] | None = None,
    stages: tuple[Any, Any] = (prepare, audit_brought_models),
    localize: bool = False,
    progress_artifact: str | None = None,
) -> dict[str, Any]:
    """Prepare the data, then audit each candidate against the reference under one MLflow
    parent run, checking the release `rules`; `stages` are the prepare and audit callables
    (plain functions, or the flow's tasks); `localize`: also the layers that flip each
    candidate's labels (layers.parquet)."""
    prepare_stage, audit_stage = stages
    device = str(resolve_device(params.run.device))
    data = prepare_stage(params.data.prepare_params())
    track = tracking.setup(params.run.experiment)
    specs = {"models.reference": reference, **{f"models.{k}": v for k, v in candidates.items()}}
    if reference2 is not None:
        specs["models.reference2"] = reference2
    if rules:
        specs["gate.fail_on"] = list(rules)
    dataset = params.data.dataset_name()
    tags = {"device": device, "host": socket.gethostname(), "dataset": dataset}
    with tracking.parent_run(
        track, run_name(params, candidates), {**params.flat(), **specs}, {**tags, "role": "audit"}
    ) as parent:
        result = audit_stage(
            data,
            reference,
            candidates,
            reference2,
            params.data.model_dump(),
            params.audit.model_dump(),
            device,
            track,
            parent,
            str(REPORT_DIR),
            _calibration(params) if localize else None,
            rules=list(rules or []),
            dataset=dataset,
            progress_artifact=progress_artifact,
        )
    return {
        **result,
        "parent_run_id": parent,
        "experiment_id": track["experiment_id"],
        "tracking_uri": track["uri"],
        "data": data,
    }


def _calibration(params: Params) -> dict[str, int]:
    """The calibration sample a quantize_static candidate is quantized again with when its
    layers are localized: the `compress` section's, as the pipeline calibrated it."""
    return {
        "batches": params.compress.calibration_batches,
        "batch_size": params.compress.calibration_batch_size,
    }


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    return run_name(Params.model_validate(parameters["params"]), parameters["candidates"])


@flow(name="compalign-audit", flow_run_name=_flow_run_name)
def audit_flow(
    params: dict[str, Any],
    reference: str,
    candidates: dict[str, str],
    reference2: str | None = None,
    localize: bool = False,
    rules: list[str] | None = None,
) -> dict[str, Any]:
    """The audit of models you bring, with Prefect's engine: prepare and audit are tasks; a
    progress artifact follows the audit's steps, and the run ends with the audit's artifacts
    (its summary, headline, release gate and MLflow run)."""
    from prefect.runtime import flow_run

    settings = Params.model_validate(params)
    key = artifacts.artifact_key("audit", settings.data.dataset_name())
    models = 1 + len(candidates) + (reference2 is not None)
    progress = artifacts.Progress(key, comparison_steps(models), "audit", unit="steps")
    result = audit_models(
        settings,
        reference,
        candidates,
        reference2,
        rules=rules,
        stages=(stage("prepare").task, audit_brought_models_task),
        localize=localize,
        progress_artifact=str(progress.id),
    )
    track = tracking.setup(settings.run.experiment)
    artifacts.publish_audit(
        key,
        pd.DataFrame(result["summary"]),
        result["headline"],
        result["verdicts"],
        track,
        result["parent_run_id"],
    )
    return {**result, "flow_run_id": str(flow_run.id), "flow_run_name": flow_run.name}
