"""tasks/options.py: every stage task caches on its store key and persists its result as JSON."""

from __future__ import annotations

from prefect import task

from tasks.options import task_options
from tasks.store import stage_key

PARAMETERS = {"data": {"path": "artifacts/prepare/x", "digest": "d1"}, "device": "cpu"}


def test_options_cache_on_the_store_key_and_persist_json(project):
    options = task_options("reference")
    assert options["name"] == "reference"
    assert options["persist_result"] is True
    assert options["result_serializer"] == "json"
    key = options["cache_key_fn"](None, PARAMETERS)
    assert key == stage_key("reference", PARAMETERS)
    # the key is the stage's: the same parameters in another stage give another key
    assert task_options("align")["cache_key_fn"](None, PARAMETERS) != key


def test_extra_options_override_the_defaults():
    options = task_options("reference", name="reference-population", retries=2)
    assert options["name"] == "reference-population"
    assert options["retries"] == 2
    assert options["persist_result"] is True


def test_prefect_accepts_the_options(project):
    def stage(data: dict, device: str) -> dict:
        return data

    made = task(stage, **task_options("predict"))
    assert made.name == "predict"
    assert made.persist_result is True
    assert made.cache_key_fn(None, PARAMETERS) == stage_key("predict", PARAMETERS)
