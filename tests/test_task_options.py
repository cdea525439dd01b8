"""tasks/infra/stage.py: every stage task caches on its store key and persists its result as
JSON; its task runs are named as its module declares."""

from __future__ import annotations

from prefect import task

from tasks.infra.stage import task_options
from tasks.infra.store import stage_key

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


def test_task_runs_are_named_after_what_they_do():
    from prefect._internal.engine import resolve_custom_task_run_name

    from tasks import stage

    prepare_task, train_reference_task = stage("prepare").task, stage("reference").task
    train_population_task = stage("reference").variant_task("population")
    compress_task, align_task = stage("compress").task, stage("align").task
    audit_task, costs_task = stage("audit").task, stage("costs").task

    cases = [
        (prepare_task, {"data": {"source": "digits"}}, "prepare digits"),
        (
            train_reference_task,
            {"reference": {"model": "small_cnn", "seed": 3, "source": "train"}},
            "reference small_cnn seed 3",
        ),
        (
            train_population_task,
            {"reference": {"model": "small_cnn"}, "seeds": [0, 1]},
            "reference small_cnn seeds 0, 1",
        ),
        (
            compress_task,
            {"method": "magnitude_global", "level": 0.9, "loss": None},
            "compress magnitude_global-0.9",
        ),
        (
            compress_task,
            {"method": "taylor_structured", "level": 0.5, "loss": "pw"},
            "compress taylor_structured-0.5 by pw",
        ),
        (
            align_task,
            {"method": "magnitude_global", "level": 0.9, "loss": "kd"},
            "align magnitude_global-0.9-kd",
        ),
        (
            align_task,
            {"method": "quantize_dynamic", "level": None, "loss": "ce"},
            "align quantize_dynamic-ce",
        ),
        (
            audit_task,
            {"labels": {"name": "magnitude_global-0.9-kd"}},
            "audit magnitude_global-0.9-kd",
        ),
        (costs_task, {"name": "reference"}, "costs reference"),
        (stage("predictions").task, {"audits": {"a": {}, "b": {}}}, "predictions of 2 models"),
    ]
    for stage_task, parameters, expected in cases:
        assert resolve_custom_task_run_name(stage_task, parameters) == expected
