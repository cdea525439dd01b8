"""The logger a stage writes to: Prefect's run logger inside a flow, plain logging outside."""

from __future__ import annotations

import logging


def stage_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger when called from a task run, else the `compalign` logger."""
    from prefect.context import TaskRunContext
    from prefect.logging import get_run_logger

    if TaskRunContext.get() is not None:
        return get_run_logger()
    return logging.getLogger("compalign")


def epoch_logger(what: str, epochs: int):
    """A `fit` callback that logs one line per epoch: '<what> epoch 3/30 loss=0.123 ...'."""
    logger = stage_logger()

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        values = " ".join(f"{name}={value:.4f}" for name, value in metrics.items())
        logger.info("%s epoch %d/%d %s", what, epoch + 1, epochs, values)

    return on_epoch
