"""What the pipeline knows about a stage, declared by the stage's own module.

A stage is one module of tasks/ holding its plain function and a `STAGE = Stage(...)` that says
everything the runners, the store and DVC need: its name, the arguments that are other stages'
outputs, the registry entries and the parameters its cache key covers, its task runs' name, the
files it logs to MLflow and its DVC output path. tasks/__init__.py is the one table of stages
(name -> module); nothing else lists them.

Its Prefect task is built on first use (`Stage.task`): importing a stage imports no Prefect, so
the cache keys of a whole run are computed without it (flows/rerun.py). Every task caches
across runs on the store key, persists its result as JSON and names its runs after what they do
(`align magnitude_global-0.9-kd`, not `align-870`). Results are persisted where
`PREFECT_LOCAL_STORAGE_PATH` points; `flows.environment` sets it to `artifacts/.prefect-results`
(tasks.infra.paths), beside the store entries the results point to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from tasks.infra.store import prefect_cache_key

Parameters = Mapping[str, Any]


def _every_parameter(parameters: Parameters) -> Parameters:
    return parameters


def _no_entries(parameters: Parameters | None) -> list[Any]:
    return []


@dataclass(frozen=True)
class Variant:
    """Another task of the same stage, whose store entries are the stage's own (the dense
    members trained together as one batched model are `reference` entries)."""

    function: Callable[..., Any]
    options: Mapping[str, Any]  # prefect.task's options beside the stage's (name, cache key)


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline, as its module declares it."""

    name: str
    """its store folder (artifacts/<name>/), Prefect task name and dvc.yaml stage name"""
    function: Callable[..., Any]
    """the plain function: what DVC's stage commands and direct calls run; it returns the
    stage's Artifact (tasks.infra.store.materialize) and takes `out_dir` for DVC's copy"""
    run_name: Callable[[Parameters], str] | None = None
    """the name of its task runs in the Prefect UI, from their parameters"""
    inputs: tuple[str, ...] = ()
    """its arguments that are other stages' outputs (Artifacts, or audit results)"""
    code: Callable[[Parameters | None], list[Any]] = _no_entries
    """the registry entries a call uses, from its parameters (None: every entry it could use):
    with the stage's own import closure, the code half of its cache key (tasks.infra.code)"""
    key: Callable[[Parameters], Parameters] = _every_parameter
    """the parameters its cache key covers: by default all of them; a stage that reads files its
    parameters only name adds their digests, one that reads part of a section keeps that part"""
    params: tuple[str, ...] = ()
    """the params.yaml sections or keys its DVC stage declares (dvc.yaml `params:`)"""
    logs: tuple[str, ...] = ()
    """the files of its store entry it logs to MLflow"""
    out: str | None = None
    """DVC's fixed output path of each call (`{model}`: one folder per model); None: the stage
    has no DVC stage of its own"""
    dvc_stage: str | None = None
    """the DVC stage its calls run in when it has none of its own (costs: in `audit`)"""
    variants: Mapping[str, Variant] = field(default_factory=dict)

    def task_options(self, **extra: Any) -> dict[str, Any]:
        """Keyword arguments of `prefect.task`: the stage's cache key, persisted JSON results,
        its task runs' names."""
        return task_options(self.name, self.run_name, **extra)

    @cached_property
    def task(self) -> Any:
        """The stage's Prefect task (the flows' runners call it)."""
        from prefect import task

        return task(self.function, **self.task_options())

    def variant_task(self, variant: str | None) -> Any:
        """The Prefect task of `variant` (None: the stage's own)."""
        if variant is None:
            return self.task
        if variant not in self._variant_tasks:
            from prefect import task

            chosen = self.variants[variant]
            self._variant_tasks[variant] = task(
                chosen.function, **self.task_options(**chosen.options)
            )
        return self._variant_tasks[variant]

    @cached_property
    def _variant_tasks(self) -> dict[str, Any]:
        return {}

    def dvc_path(self, model: str) -> str | None:
        """Where DVC keeps the output of this stage's call about `model` (None: nowhere)."""
        return None if self.out is None else self.out.format(model=model)


def compressed_name(method: str, level: float | None) -> str:
    """`magnitude_global-0.9`, or the method alone for a compressor without levels (the same
    names as flows.plan.ModelSpec)."""
    return method if level is None else f"{method}-{level:g}"


def model_name(reference: Mapping[str, Any]) -> str:
    """A reference in a task run's name: its architecture and seed, or the file it came from."""
    if reference.get("source") == "file":
        return f"file {reference.get('path')}"
    return f"{reference.get('model')} seed {reference.get('seed')}"


def short_digest(artifact: Any) -> str:
    """An artifact in a task run's name: the first characters of its digest."""
    return artifact.get("digest", "")[:8] if isinstance(artifact, Mapping) else ""


def task_options(
    stage: str, run_name: Callable[[Parameters], str] | None = None, **extra: Any
) -> dict[str, Any]:
    """Keyword arguments of `prefect.task` for `stage`: its cache key, persisted JSON results,
    its task runs' names (`run_name`, from the task's parameters)."""
    options = {
        "name": stage,
        "cache_key_fn": prefect_cache_key(stage),
        "persist_result": True,
        "result_serializer": "json",
        **extra,
    }
    if run_name is not None:

        def task_run_name(parameters: dict[str, Any]) -> str:
            return run_name(parameters)

        options.setdefault("task_run_name", task_run_name)
    return options
