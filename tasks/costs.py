"""Costs of each model: parameters (total, nonzero), MACs, size on disk and CPU latency.

Run after every audit, one model at a time, so that no training competes with the latency
measurements; logged into the model's existing child run (once: a run that already has the
metrics is not logged again).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compalign.checkpoint import load_checkpoint, read_checkpoint_manifest
from compalign.costs import LatencyOptions, measure_latency, parameter_counts, serialized_size
from compalign.data import load_split, read_manifest
from compalign.files import sha256_file
from compalign.models import build_model
from compalign.pruning import count_macs
from tasks.infra.logs import stage_logger
from tasks.infra.stage import Stage
from tasks.infra.store import MANIFEST, Artifact, materialize, require

if TYPE_CHECKING:
    from tasks.infra.tracking import Tracking

COSTS_FILE = "costs.json"


def _build_costs(scratch: Path, data: Artifact, model: Artifact, audit: dict[str, Any]) -> None:
    data_dir, model_dir = require(data, "prepared dataset"), require(model, "checkpoint")
    test = load_split(data_dir, "test", read_manifest(data_dir))
    example = test.normalise(test.images[:1])
    network = load_checkpoint(model_dir, "cpu").eval()
    checkpoint = read_checkpoint_manifest(model_dir)
    # the MACs of a quantized or half model are those of its float architecture
    float_network = network
    if checkpoint["kind"] != "float":
        float_network = build_model(**checkpoint["architecture"]).eval()
    costs: dict[str, float] = {
        **parameter_counts(network),
        "macs": count_macs(float_network, example),
        **serialized_size(network),
        **measure_latency(
            network,
            example,
            audit["latency_batch_sizes"],
            audit["latency_warmup"],
            audit["latency_repeats"],
        ),
    }
    costs["weight_sparsity"] = 1.0 - costs["params_nonzero"] / max(costs["params_total"], 1)
    (scratch / COSTS_FILE).write_text(json.dumps(costs, indent=2) + "\n")
    (scratch / MANIFEST).write_text(
        json.dumps({"file": COSTS_FILE, "sha256": sha256_file(scratch / COSTS_FILE)}) + "\n"
    )


LATENCY_SETTINGS = tuple(LatencyOptions.model_fields)


def latency_settings(audit: dict[str, Any]) -> dict[str, Any]:
    """The `audit` params the cost measurement uses (only these enter its cache key)."""
    return {key: audit[key] for key in LATENCY_SETTINGS}


def measure_costs(
    data: Artifact,
    model: Artifact,
    latency: dict[str, Any],
    name: str,
    tracking: Tracking,
    run_id: str,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """Measure one model's costs and log them to its child run `run_id` (if not there yet);
    `latency` is `latency_settings(audit params)`."""
    from tasks.infra.tracking import client, log_metrics

    settings = latency
    parameters = {
        "data": data,
        "model": model,
        "latency": settings,
        "name": name,
        "tracking": tracking,
        "run_id": run_id,
    }
    artifact = materialize(
        "costs", parameters, lambda scratch: _build_costs(scratch, data, model, settings), out_dir
    )
    costs = json.loads((Path(artifact["path"]) / COSTS_FILE).read_text())
    logged = client(tracking["uri"]).get_run(run_id).data.metrics
    if "latency_threads" not in logged:
        log_metrics(tracking, run_id, costs)
    latency = ", ".join(
        f"{k.removeprefix('latency_ms_')} {v:.2f} ms"
        for k, v in costs.items()
        if k.startswith("latency_ms_")
    )
    stage_logger().info(
        "%s: %d params (%d nonzero), %.2f MMACs, %.1f kB, latency %s (%d threads)",
        name,
        costs["params_total"],
        costs["params_nonzero"],
        costs["macs"] / 1e6,
        costs["size_bytes"] / 1e3,
        latency,
        costs["latency_threads"],
    )
    return {**artifact, "costs": costs, "name": name}


STAGE = Stage(
    name="costs",
    function=measure_costs,
    run_name=lambda p: f"costs {p['name']}",
    inputs=("data", "model", "run_id"),
    dvc_stage="audit",  # measured within DVC's audit stage, into each model's metrics file
)
