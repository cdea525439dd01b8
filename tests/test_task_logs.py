"""tasks/infra/logs.py: stages log to Prefect's run logger inside a task run, plain logging outside,
one line per epoch."""

from __future__ import annotations

import logging

from prefect import flow, task

from tasks.infra.logs import epoch_logger, stage_logger


def test_outside_a_task_run_stages_log_to_the_compalign_logger():
    assert stage_logger() is logging.getLogger("compalign")


def test_epoch_logger_writes_one_line_per_epoch(caplog):
    on_epoch = epoch_logger("align kd", epochs=30)
    with caplog.at_level(logging.INFO, logger="compalign"):
        on_epoch(2, {"loss": 0.123456, "accuracy": 0.5})
        on_epoch(29, {"loss": 0.01})
    assert [record.getMessage() for record in caplog.records] == [
        "align kd epoch 3/30 loss=0.1235 accuracy=0.5000",
        "align kd epoch 30/30 loss=0.0100",
    ]
    assert {record.name for record in caplog.records} == {"compalign"}


def test_inside_a_task_run_stages_log_to_the_task_run(prefect_server):
    @task
    def logger_of_the_stage() -> dict[str, str]:
        logger = stage_logger()
        return {"logger": logger.logger.name, "task": logger.extra["task_name"]}

    @flow
    def pipeline() -> dict[str, str]:
        return logger_of_the_stage()

    assert pipeline() == {"logger": "prefect.task_runs", "task": "logger_of_the_stage"}
