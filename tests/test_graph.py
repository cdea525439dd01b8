"""The run graph: the same calls for the flow, the rerun check, DVC and the populations flow."""

from __future__ import annotations

import inspect
import os

from flows.graph import Input, inputs_of, pipeline_steps


def test_every_step_gives_its_task_every_argument_and_needs_only_earlier_steps(tiny_params):
    """Prefect keys a task on its bound arguments with defaults applied; a step that names
    them all gets the same key from the rerun check as from the flow. Each step's Inputs are
    arguments its stage declares as inputs."""
    from tasks import stage
    from tasks.costs import latency_settings

    params = tiny_params()
    track = {"uri": "sqlite:///mlflow.db", "experiment_id": "1", "store_id": "x"}
    steps = pipeline_steps(params, "cpu", track, "parent")
    seen = set()
    for step in steps:
        function = stage(step.stage).function
        assert set(step.arguments) == set(inspect.signature(function).parameters)
        taken = {name for name, value in step.arguments.items() if inputs_of(value)}
        assert taken <= set(stage(step.stage).inputs), step.id
        assert set(step.needs) <= seen, step.id
        seen.add(step.id)
        if step.stage == "costs":
            assert step.arguments["latency"] == latency_settings(params.audit.model_dump())
            assert step.arguments["run_id"] == Input(f"audit:{step.model}", "run_id")
    stages = [step.stage for step in steps]
    # 2 levels x 5 losses (4 fine-tuned), one compress per level, an audit and costs per model,
    # one table of every audited model's predictions
    assert [stages.count(s) for s in ("prepare", "reference", "compress", "align")] == [1, 1, 2, 8]
    assert stages.count("audit") == stages.count("costs") == 11
    [predictions] = [step for step in steps if step.stage == "predictions"]
    assert predictions.arguments["audits"] == {
        step.model: Input(step.id) for step in steps if step.stage == "audit"
    }


def test_a_step_can_overlap_only_the_steps_it_neither_needs_nor_feeds(tiny_params):
    """at_once: 1 for the steps every other step waits for or follows (prepare, reference),
    more for those the grid runs side by side; a model's last audit can overlap only what
    does not lead to it."""
    from flows.graph import at_once

    params = tiny_params("compress.sparsities=[0.9]", "align.losses=[ce]")
    steps = [s for s in pipeline_steps(params, "cpu", {}, None) if s.stage != "costs"]
    assert at_once(steps) == {
        "prepare": 1,
        "reference": 1,
        "audit:reference": 3,  # beside the compression and the fine-tuning
        "compress:magnitude_global-0.9": 2,
        "align:magnitude_global-0.9-ce": 2,
        "audit:magnitude_global-0.9-ce": 1,  # needs the reference's audit and the fine-tuning
        "predictions": 1,  # needs every audit: it changes no other step's count
    }


def threads_by_stage(params) -> dict[str, set[int | None]]:
    """The torch threads each stage's tasks start with, by flows.pipeline.step_threads (None:
    the Dask workers' own settings)."""
    from flows.pipeline import step_threads

    steps = [s for s in pipeline_steps(params, "cpu", {}, None) if s.stage != "costs"]
    shares = step_threads(params, steps)
    found: dict[str, set[int | None]] = {}
    for step in steps:
        share = shares[step.id]
        found.setdefault(step.stage, set()).add(None if share is None else share.count()[0])
    return found


def test_a_task_alone_gets_every_free_core_and_a_full_grid_one_each(tiny_params, monkeypatch):
    """run.threads null: the cores not busy with other work, shared among the most tasks that
    can run beside a task (at most the workers): every core for prepare and the reference
    (always alone), one each on the grid with one worker per core; a one-worker grid
    (quantize_static forces it) gives every task every core; cores busy with other work are
    left to it; run.threads pins them all."""
    import compalign.config
    import flows.threads

    monkeypatch.setattr(compalign.config, "cores", lambda: 8)
    measured = []
    monkeypatch.setattr(flows.threads.METER, "busy_cores", lambda root: measured.append(root) or 3)
    full = threads_by_stage(tiny_params("run.workers=auto", "run.busy_cores=0"))
    assert full["prepare"] == full["reference"] == {8}
    assert full["compress"] == full["align"] == full["audit"] == {1}
    two = threads_by_stage(tiny_params("run.busy_cores=0"))  # the tiny profile's run.workers: 2
    assert two["reference"] == {8} and two["align"] == {4}
    forced = ("run.workers=auto", "compress.methods=[quantize_static]")
    assert set().union(*threads_by_stage(tiny_params(*forced, "run.busy_cores=0")).values()) == {8}
    assert not measured
    # other work's cores (3, measured as each task starts) are left to it
    assert set().union(*threads_by_stage(tiny_params(*forced)).values()) == {5}
    loaded = threads_by_stage(tiny_params())
    assert loaded["reference"] == {5} and loaded["align"] == {2}
    assert set(measured) == {os.getpid()}  # the run's own processes are not other work
    given = threads_by_stage(tiny_params(*forced, "run.busy_cores=6"))
    assert set().union(*given.values()) == {2}
    assert set().union(*threads_by_stage(tiny_params("run.threads=3")).values()) == {3}
    # Dask: a LocalCluster runs as many tasks at once as the local pool would, so the counts
    # (and the numbers) are the same; a cluster the run did not start keeps its own settings
    dask = threads_by_stage(tiny_params("run.runner=dask", "run.busy_cores=0", *forced))
    assert set().union(*dask.values()) == {8}
    remote = tiny_params("run.runner=dask", "run.dask_address=tcp://127.0.0.1:8786")
    assert set().union(*threads_by_stage(remote).values()) == {None}


def test_trainings_on_a_gpu_are_limited_not_the_other_tasks(tiny_params):
    from flows.pipeline import DEVICE_STAGES, device_limit

    params = tiny_params("run.gpu_workers=3")
    assert device_limit(params, "cpu") is None
    assert device_limit(params, "cuda") == device_limit(params, "cuda:1") == (DEVICE_STAGES, 3)
    assert set(DEVICE_STAGES) == {"reference", "align"}  # the stages that train on the device


def test_a_search_probe_is_the_pipelines_own_task_calls(tiny_params):
    """A probe's compress, align and costs calls are the pipeline's; its audit is on the
    validation split against the reference's audit on that split; judged on the test split, the
    probe's audit is the pipeline's call for an un-fine-tuned model (a cache hit)."""
    from flows.graph import probe_steps, search_steps
    from flows.plan import ModelSpec
    from tasks.infra.store import stage_key

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


def test_population_steps_name_every_member_and_give_every_argument(tiny_params):
    """The populations flow's graph: the dense members (one batched task, or one per seed), per
    level and seed the compressed member of each loss (compressed from dense member k and
    fine-tuned, or trained from scratch with the pruning inside), then every member's
    predictions, each with its population (`about`) and every argument of its task."""
    from flows.graph import population_steps
    from tasks import stage
    from tasks.pruned import pruned_seed

    base = [
        "populations.size=2",
        "populations.sparsities=[0.5]",
        "populations.losses=[none,ce]",
        "populations.compressor=magnitude_global",
    ]
    for overrides, expected in (
        (
            ["populations.protocol=from_dense"],
            ["prepare", "reference:seed0", "reference:seed1"]
            + [f"compress:magnitude_global-0.5:seed{s}" for s in (0, 1)],
        ),
        (
            ["populations.vectorise=true"],
            ["prepare", "reference:population"]
            + [f"compress:magnitude_global-0.5:seed{s}" for s in (0, 1)],
        ),
    ):
        steps = population_steps(tiny_params(*base, *overrides), "cpu")
        ids = [step.id for step in steps]
        assert [i for i in ids if not i.startswith(("align", "predict"))] == expected, ids
        seen: set[str] = set()
        for step in steps:
            declared = stage(step.stage)
            function = (
                declared.variants[step.variant].function if step.variant else declared.function
            )
            parameters = inspect.signature(function).parameters
            assert set(step.arguments) <= set(parameters), step.id
            assert {n for n, p in parameters.items() if p.default is p.empty} <= set(step.arguments)
            assert set(step.needs) <= seen, step.id
            seen.add(step.id)
        predictions = {s.model: s.about for s in steps if s.stage == "predict"}
        assert predictions == {
            "dense 0": {"group": None, "seed": 0},
            "dense 1": {"group": None, "seed": 1},
            **{
                f"magnitude_global-0.5-{loss} seed {s}": {"group": (0.5, loss), "seed": s}
                for loss in ("none", "ce")
                for s in (0, 1)
            },
        }
    vectorised = population_steps(tiny_params(*base, "populations.vectorise=true"), "cpu")
    compress = next(step for step in vectorised if step.stage == "compress")
    assert compress.arguments["reference"] == Input("reference:population", 0)
    scratch = population_steps(
        tiny_params(
            "populations.size=2",
            "populations.sparsities=[0.5]",
            "populations.losses=[kd]",
            "populations.compressor=gradual_magnitude",
            "populations.protocol=from_scratch",
        ),
        "cpu",
    )
    pruned = [step for step in scratch if step.stage == "pruned"]
    assert [step.model for step in pruned] == ["0.5-kd seed 0", "0.5-kd seed 1"]
    assert pruned[1].arguments["reference"]["seed"] == pruned_seed(1, 0.5)
    assert pruned[1].arguments["teacher"] == Input("reference:seed1")  # kd reads the dense one
