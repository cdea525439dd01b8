"""`compalign audit`: models you bring, audited against a reference, as a Prefect flow.

prepare (cached in the store, as in the pipeline) -> the audit of every candidate against the
reference (tasks.compare), under one MLflow parent run. `audit_models(params, ...)` is the same
body with the plain functions: it runs without Prefect.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow

from compalign.config import Params
from compalign.train import resolve_device
from flows import artifacts
from tasks import tracking
from tasks.compare import audit_brought_models, audit_brought_models_task
from tasks.data import prepare, prepare_task

REPORT_DIR = Path("reports/compare")


def audit_models(
    params: Params,
    reference: str,
    candidates: dict[str, str],
    reference2: str | None = None,
    *,
    stages: tuple[Any, Any] = (prepare, audit_brought_models),
    localize: bool = False,
) -> dict[str, Any]:
    """Prepare the data, then audit each candidate against the reference under one MLflow
    parent run; `stages` are the prepare and audit callables (plain functions, or the flow's
    tasks); `localize`: also the layers that flip each candidate's labels (layers.parquet)."""
    prepare_stage, audit_stage = stages
    device = str(resolve_device(params.run.device))
    data = prepare_stage(params.data.prepare_params())
    track = tracking.setup(params.run.experiment)
    specs = {"models.reference": reference, **{f"models.{k}": v for k, v in candidates.items()}}
    if reference2 is not None:
        specs["models.reference2"] = reference2
    tags = {"device": device, "host": socket.gethostname(), "dataset": params.data.source}
    with tracking.parent_run(
        track, f"audit-{params.data.source}", {**params.flat(), **specs}, {**tags, "role": "audit"}
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


@flow(name="compalign-audit", flow_run_name="audit-{params[data][source]}")
def audit_flow(
    params: dict[str, Any],
    reference: str,
    candidates: dict[str, str],
    reference2: str | None = None,
    localize: bool = False,
) -> dict[str, Any]:
    """The audit of models you bring, with Prefect's engine: prepare and audit are tasks."""
    settings = Params.model_validate(params)
    result = audit_models(
        settings,
        reference,
        candidates,
        reference2,
        stages=(prepare_task, audit_brought_models_task),
        localize=localize,
    )
    track = tracking.setup(settings.run.experiment)
    artifacts.publish_audit(
        artifacts.artifact_key("audit", settings.data.source),
        pd.DataFrame(result["summary"]),
        f"{settings.data.source}: what the candidates changed against {reference}",
        track,
        result["parent_run_id"],
    )
    return result
