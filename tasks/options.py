"""Options shared by every stage task: cache across runs on the store key, results as JSON.

Results are persisted where `PREFECT_LOCAL_STORAGE_PATH` points; `flows.runtime` sets it to
`artifacts/.prefect-results` (relative: resolved in the project directory at write time), beside
the store entries the results point to.
"""

from __future__ import annotations

from typing import Any

from tasks.store import prefect_cache_key


def task_options(stage: str, **extra: Any) -> dict[str, Any]:
    """Keyword arguments of `prefect.task` for a stage: its cache key, persisted JSON results."""
    return {
        "name": stage,
        "cache_key_fn": prefect_cache_key(stage),
        "persist_result": True,
        "result_serializer": "json",
        **extra,
    }
