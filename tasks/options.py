"""Options shared by every stage task: cache across runs on the store key, results as JSON, and
task runs named after what they do (`align magnitude_global-0.9-kd`), not `align-870`.

Results are persisted where `PREFECT_LOCAL_STORAGE_PATH` points; `flows.runtime` sets it to
`artifacts/.prefect-results` (relative: resolved in the project directory at write time), beside
the store entries the results point to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tasks.store import prefect_cache_key


def compressed_name(method: str, level: float | None) -> str:
    """`magnitude_global-0.9`, or the method alone for a compressor without levels (the same
    names as flows.plan.ModelSpec)."""
    return method if level is None else f"{method}-{level:g}"


def _model(reference: Mapping[str, Any]) -> str:
    if reference.get("source") == "file":
        return f"file {reference.get('path')}"
    return f"{reference.get('model')} seed {reference.get('seed')}"


def _digest(artifact: Any) -> str:
    return artifact.get("digest", "")[:8] if isinstance(artifact, Mapping) else ""


# What each stage's task run is called in the Prefect UI, from its (resolved) parameters.
RUN_NAMES: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "prepare": lambda p: f"prepare {p['data']['source']}",
    "reference": lambda p: f"reference {_model(p['reference'])}",
    "compress": lambda p: (
        "compress "
        + compressed_name(p["method"], p["level"])
        + (f" by {p['loss']}" if p.get("loss") else "")
    ),
    "align": lambda p: f"align {compressed_name(p['method'], p['level'])}-{p['loss']}",
    "audit": lambda p: f"audit {p['labels']['name']}",
    "costs": lambda p: f"costs {p['name']}",
    "predict": lambda p: f"predict model {_digest(p['model'])}",
}


def run_name(stage: str) -> Callable[..., str]:
    """The `task_run_name` callable of a stage (Prefect passes it the task's parameters)."""
    name = RUN_NAMES[stage]

    def task_run_name(parameters: dict[str, Any]) -> str:
        return name(parameters)

    return task_run_name


def task_options(stage: str, **extra: Any) -> dict[str, Any]:
    """Keyword arguments of `prefect.task` for a stage: its cache key, persisted JSON results,
    its task runs' names."""
    options = {
        "name": stage,
        "cache_key_fn": prefect_cache_key(stage),
        "persist_result": True,
        "result_serializer": "json",
        **extra,
    }
    if stage in RUN_NAMES:
        options.setdefault("task_run_name", run_name(stage))
    return options
