"""tasks/costs.py: which audit params the cost measurement depends on, and the measurement of a
model's costs, stored once and logged once into its child run."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

import tasks.costs
from compalign.config import Params
from compalign.costs import COST_METRICS
from tasks.compress import compress
from tasks.costs import COSTS_FILE, LATENCY_SETTINGS, latency_settings, measure_costs
from tasks.infra import tracking
from tasks.infra.store import is_complete
from tiny_stages import must_not_run, stage_store

QUICK = {"latency_warmup": 0, "latency_repeats": 1, "latency_batch_sizes": [1]}


def test_latency_settings_are_only_the_latency_keys_of_the_audit_section():
    audit = Params().audit.model_dump()
    picked = latency_settings(audit)
    assert set(picked) == {"latency_warmup", "latency_repeats", "latency_batch_sizes"}
    assert set(picked) == set(LATENCY_SETTINGS)
    assert picked == {key: audit[key] for key in picked}
    assert len(audit) > len(picked)  # the other audit settings do not enter the costs' key
    changed = {**audit, "bootstrap_samples": audit["bootstrap_samples"] + 1}
    assert latency_settings(changed) == picked


def test_latency_settings_need_every_latency_key():
    with pytest.raises(KeyError, match="latency_repeats"):
        latency_settings({"latency_warmup": 1, "latency_batch_sizes": [1]})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(data, the reference pruned to 90 %, an MLflow experiment in the same directory)."""
    with stage_store(tmp_path_factory.mktemp("costs")) as (data, reference):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}")
            pruned = compress(None, reference, "magnitude_global", 0.9, {})
            yield data, pruned, tracking.setup("costs")
        mlflow.set_tracking_uri(None)


def child_run(track) -> str:
    return tracking.client(track["uri"]).create_run(track["experiment_id"]).info.run_id


def test_costs_are_measured_stored_and_logged_to_the_run(store):
    data, pruned, track = store
    run_id = child_run(track)
    result = measure_costs(data, pruned, QUICK, "magnitude_global-0.9-none", track, run_id)
    costs = result["costs"]
    assert result["name"] == "magnitude_global-0.9-none"
    assert is_complete(Path(result["path"]))
    assert json.loads((Path(result["path"]) / COSTS_FILE).read_text()) == costs
    assert {"params_total", "params_nonzero", "macs", "size_bytes", "latency_ms_b1"} <= set(costs)
    assert "latency_ms_b64" not in costs  # only the batch sizes asked for
    assert 0 < costs["params_nonzero"] < costs["params_total"]
    assert costs["weight_sparsity"] == pytest.approx(
        1 - costs["params_nonzero"] / costs["params_total"]
    )
    logged = tracking.client(track["uri"]).get_run(run_id).data.metrics
    assert {name: logged[name] for name in costs} == pytest.approx(costs)
    assert set(COST_METRICS) - {"latency_ms_b64"} <= set(logged)


def test_same_model_and_run_reuse_the_measurement(store, monkeypatch):
    data, pruned, track = store
    run_id = child_run(track)
    first = measure_costs(data, pruned, QUICK, "pruned", track, run_id)
    monkeypatch.setattr(tasks.costs, "measure_latency", must_not_run)
    assert measure_costs(data, pruned, dict(QUICK), "pruned", track, run_id) == first


def test_a_run_that_has_its_costs_is_not_logged_again(store):
    data, pruned, track = store
    run_id = child_run(track)
    tracking.log_metrics(track, run_id, {"latency_threads": 99.0})
    measure_costs(data, pruned, QUICK, "pruned", track, run_id)
    assert tracking.client(track["uri"]).get_run(run_id).data.metrics == {"latency_threads": 99.0}
