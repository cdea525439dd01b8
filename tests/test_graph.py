"""The pipeline's task graph: the same calls for the flow and the cached-run check."""

from __future__ import annotations

import inspect

from flows.graph import Input, pipeline_steps


def test_every_step_gives_its_task_every_argument_and_needs_only_earlier_steps(tiny_params):
    """Prefect keys a task on its bound arguments with defaults applied; a step that names
    them all gets the same key from the cached-run check as from the flow."""
    from tasks.align import align
    from tasks.audit import audit_model
    from tasks.compress import compress
    from tasks.costs import latency_settings, measure_costs
    from tasks.data import prepare
    from tasks.train import train_reference

    functions = {
        "prepare": prepare,
        "reference": train_reference,
        "compress": compress,
        "align": align,
        "audit": audit_model,
        "costs": measure_costs,
    }
    params = tiny_params()
    track = {"uri": "sqlite:///mlflow.db", "experiment_id": "1", "store_id": "x"}
    steps = pipeline_steps(params, "cpu", track, "parent")
    seen = set()
    for step in steps:
        assert set(step.arguments) == set(inspect.signature(functions[step.stage]).parameters)
        assert set(step.needs) <= seen, step.id
        seen.add(step.id)
        if step.stage == "costs":
            assert step.arguments["latency"] == latency_settings(params.audit.model_dump())
            assert step.arguments["run_id"] == Input(f"audit:{step.model}", "run_id")
    stages = [step.stage for step in steps]
    # 2 levels x 5 losses (4 fine-tuned), one compress per level, an audit and costs per model
    assert [stages.count(s) for s in ("prepare", "reference", "compress", "align")] == [1, 1, 2, 8]
    assert stages.count("audit") == stages.count("costs") == 11
