"""The logger a stage writes to: Prefect's run logger inside a flow, plain logging outside; and
the progress events a terminal display listens to.

Progress events travel in this process only (`add_progress_listener`): a task in a thread of the
flow's process reports when it starts computing and each epoch it trains; a task in a Dask
worker process reports nothing, and the flow still reports each task that ends (flows.runtime).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

ProgressListener = Callable[[str, dict[str, Any]], None]

_listeners: list[ProgressListener] = []
_listeners_lock = threading.Lock()


def add_progress_listener(listener: ProgressListener) -> Callable[[], None]:
    """Call `listener(kind, fields)` for every progress event from now on; return what removes
    it. Kinds: `planned` (count: tasks to come), `started` (task_run_id, name: a task computes),
    `epoch` (task_run_id, name, what, epoch, epochs), `ended` (task_run_id: it stopped
    computing), `finished` (task_run_id, state: the task run is final: Completed, Cached, ...)."""
    with _listeners_lock:
        _listeners.append(listener)

    def remove() -> None:
        with _listeners_lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return remove


def publish_progress(kind: str, **fields: Any) -> None:
    """Send a progress event to every listener (none: nothing happens)."""
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(kind, fields)


def _task_run() -> tuple[str | None, str | None]:
    """(id, name) of the task run this thread runs, (None, None) outside one."""
    if "prefect" not in sys.modules:  # plain functions (DVC stages): no task run
        return None, None
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    if context is None or context.task_run is None:
        return None, None
    return str(context.task_run.id), context.task_run.name


@contextlib.contextmanager
def computing(stage: str) -> Iterator[None]:
    """Report that the current task run computes `stage` (a store miss) until the block ends."""
    task_run_id, name = _task_run()
    if task_run_id is None:
        yield
        return
    publish_progress("started", task_run_id=task_run_id, name=name or stage, stage=stage)
    try:
        yield
    finally:
        publish_progress("ended", task_run_id=task_run_id)


def stage_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger when called from a task run, else the `compalign` logger."""
    if _task_run()[0] is None:  # a DVC stage imports no Prefect to find that out
        return logging.getLogger("compalign")
    from prefect.logging import get_run_logger

    return get_run_logger()


def epoch_logger(what: str, epochs: int):
    """A `fit` callback that logs one line per epoch: '<what> epoch 3/30 loss=0.123 ...', and
    reports the epoch as a progress event."""
    logger = stage_logger()
    task_run_id, name = _task_run()

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        values = " ".join(f"{metric}={value:.4f}" for metric, value in metrics.items())
        logger.info("%s epoch %d/%d %s", what, epoch + 1, epochs, values)
        if task_run_id is not None:
            publish_progress(
                "epoch",
                task_run_id=task_run_id,
                name=name,
                what=what,
                epoch=epoch + 1,
                epochs=epochs,
            )

    return on_epoch


def step_reporter(
    progress_artifact: str | None = None, what: str = "audit"
) -> Callable[[int, int, str], None]:
    """A `progress(done, total, step)` callback for a task that works through steps (the audit
    of models you bring: per model its predictions, each metric, its costs): each step is a line
    of the task's log, a `step` progress event (task_run_id, name, what, done, total, step) for
    the terminal's display, and, with `progress_artifact` (a Prefect progress artifact's id),
    that artifact's percentage and description."""
    logger = stage_logger()
    task_run_id, name = _task_run()

    def report(done: int, total: int, step: str) -> None:
        if done < total:
            logger.info("%s %d/%d: %s", what, done + 1, total, step)
        publish_progress(
            "step",
            task_run_id=task_run_id,
            name=name or what,
            what=what,
            done=done,
            total=total,
            step=step,
        )
        if progress_artifact is not None:
            from prefect.artifacts import update_progress_artifact

            shown = f"{what}: {done} of {total} steps done" + (
                f"; now {step}" if done < total else ""
            )
            update_progress_artifact(progress_artifact, 100.0 * done / max(total, 1), shown)

    return report
