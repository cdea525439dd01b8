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


def test_a_search_probe_is_the_pipelines_own_task_calls(tiny_params):
    """A probe's compress, align and costs calls are the pipeline's; its audit is on the
    validation split against the reference's audit on that split; judged on the test split, the
    probe's audit is the pipeline's call for an un-fine-tuned model (a cache hit)."""
    from flows.graph import probe_steps, search_steps
    from flows.plan import ModelSpec
    from tasks.store import stage_key

    params = tiny_params("compress.methods=[quantize_static]")
    track = {"uri": "sqlite:///mlflow.db", "experiment_id": "1", "store_id": "x"}
    spec = ModelSpec("quantize_static", None, "none")
    base = search_steps(params, "cpu", track, "parent", "val")
    probe = probe_steps(params, spec, "cpu", track, "parent", "q@val", "val")
    seen = {step.id for step in base}
    for step in probe:
        assert set(step.needs) <= seen, step.id
        seen.add(step.id)
    audit = next(step for step in probe if step.stage == "audit")
    assert audit.arguments["split"] == "val" and audit.arguments["labels"]["split"] == "val"
    assert audit.arguments["reference_audit"] == Input("audit:reference@val")
    reference_val = next(step for step in base if step.id == "audit:reference@val")
    assert reference_val.arguments["split"] == "val"

    artifact = {"path": "x", "digest": "d", "run_id": "r"}

    def keys(steps):
        return {
            step.stage: stage_key(
                step.stage,
                {k: artifact if isinstance(v, Input) else v for k, v in step.arguments.items()},
            )
            for step in steps
        }

    pipeline = keys(step for step in pipeline_steps(params, "cpu", track, "p") if "none" in step.id)
    tested = keys(probe_steps(params, spec, "cpu", track, "p", "quantize_static-none", "test"))
    assert (
        tested["compress"]
        == keys(
            step for step in pipeline_steps(params, "cpu", track, "p") if step.stage == "compress"
        )["compress"]
    )
    assert tested["audit"] == pipeline["audit"] and tested["costs"] == pipeline["costs"]
