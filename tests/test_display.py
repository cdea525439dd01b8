"""flows/display.py and the progress events behind it (tasks/infra/logs.py, flows/runtime.py): tasks
of a real flow on the thread-pool runner report to the display; plain output is a few lines."""

from __future__ import annotations

import io
import logging

from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner
from rich.console import Console

from flows.display import FlowDisplay
from flows.runtime import wait_or_raise_first_failure
from tasks.infra.logs import add_progress_listener, computing, epoch_logger, publish_progress


@task
def trained(epochs: int) -> int:
    with computing("reference"):
        on_epoch = epoch_logger("reference", epochs)
        for epoch in range(epochs):
            on_epoch(epoch, {"loss": 1.0 / (epoch + 1)})
    return epochs


@flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
def two_trainings() -> list[int]:
    futures = [trained.submit(2), trained.submit(3)]
    wait_or_raise_first_failure(futures)
    return [future.result() for future in futures]


def test_tasks_in_threads_report_start_epochs_and_end(prefect_server):
    events = []
    remove = add_progress_listener(lambda kind, fields: events.append((kind, fields)))
    try:
        assert two_trainings() == [2, 3]
    finally:
        remove()
    kinds = [kind for kind, _ in events]
    assert kinds.count("planned") == 1 and events[kinds.index("planned")][1] == {"count": 2}
    assert kinds.count("started") == kinds.count("ended") == 2
    epochs = [fields for kind, fields in events if kind == "epoch"]
    by_task = sorted((e["epochs"], e["epoch"]) for e in epochs)
    assert by_task == [(2, 1), (2, 2), (3, 1), (3, 2), (3, 3)]
    finished = {
        fields["task_run_id"]: fields["state"] for kind, fields in events if kind == "finished"
    }
    started = {fields["task_run_id"] for kind, fields in events if kind == "started"}
    assert set(finished) == started and set(finished.values()) == {"Completed"}
    # the display of the same events: everything done, nothing left running
    display = FlowDisplay(console=Console(file=io.StringIO()))
    for kind, fields in events:
        display._on_event(kind, fields)
    assert display.counts() == (2, 2, 0, 0) and not display.running


def _events(display: FlowDisplay, count: int, cached: int = 0) -> None:
    display._on_event("planned", {"count": count})
    for index in range(count):
        task_run_id = f"run-{index}"
        if index >= cached:
            display._on_event("started", {"task_run_id": task_run_id, "name": f"align-{index}"})
            display._on_event(
                "epoch",
                {
                    "task_run_id": task_run_id,
                    "name": "",
                    "what": "align kd",
                    "epoch": 1,
                    "epochs": 4,
                },
            )
        # the task's end is reported twice (task and flow side): counted once
        for _ in range(2):
            state = "Cached" if index < cached else "Completed"
            display._on_event("finished", {"task_run_id": task_run_id, "state": state})


def test_plain_output_is_a_line_per_fifth(capsys):
    with FlowDisplay(console=Console(file=io.StringIO())) as display:
        assert not display.interactive
        _events(display, 63, cached=3)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("running: a line per fifth")
    assert [line.split(" (")[0] for line in lines[1:]] == [
        f"{done}/63 tasks, 3 cached" for done in (13, 26, 38, 51, 63)
    ]


def test_live_display_has_a_line_per_running_task_with_its_epochs():
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with FlowDisplay(console=console) as display:
        display._on_event("planned", {"count": 3})
        display._on_event("finished", {"task_run_id": "a", "state": "Cached"})
        display._on_event("started", {"task_run_id": "b", "name": "align-b"})
        display._on_event(
            "epoch",
            {"task_run_id": "b", "name": "align-b", "what": "align kd", "epoch": 2, "epochs": 5},
        )
        rows = {task.description.strip(): task for task in display._progress.tasks}
        assert rows["tasks"].fields["status"] == "1/3 tasks, 1 cached"
        assert (rows["align-b"].completed, rows["align-b"].total) == (2, 5)
        assert rows["align-b"].fields["status"] == "align kd: epoch 2/5"
        display._on_event("finished", {"task_run_id": "b", "state": "Completed"})
        assert [task.description for task in display._progress.tasks] == ["tasks"]


def test_run_logs_reach_the_console_only_when_verbose(prefect_server):
    """Prefect's console handler keeps warnings; INFO lines of task runs only with verbose."""
    from flows.display import _console_handlers

    handler = _console_handlers()[0]
    record = logging.LogRecord("prefect.task_runs", logging.INFO, "", 0, "epoch 1/2", None, None)
    warning = logging.LogRecord("prefect.task_runs", logging.WARNING, "", 0, "slow", None, None)
    with FlowDisplay(console=Console(file=io.StringIO())):
        assert not handler.filter(record) and handler.filter(warning)
    with FlowDisplay(verbose=True, console=Console(file=io.StringIO())):
        assert handler.filter(record)
    assert handler.filter(record)  # left as it was
    publish_progress("planned", count=1)  # no display listens any more: nothing happens


def _step(display: FlowDisplay, done: int, total: int, step: str) -> None:
    fields = {"task_run_id": "audit", "name": "audit models int8", "what": "audit"}
    display._on_event("step", {**fields, "done": done, "total": total, "step": step})


def test_plain_output_of_a_task_with_steps_is_a_line_per_step_and_a_heartbeat(capsys):
    """The audit's steps on a pipe: one line each; a step still running HEARTBEAT_S after the
    last line gets another (so a pipe sees a line at least every 30 s), none once it is done."""
    from flows.display import HEARTBEAT_S

    with FlowDisplay(console=Console(file=io.StringIO())) as display:
        _step(display, 0, 3, "reference: predictions")
        _step(display, 1, 3, "reference: attribution")
        display.beat(display._last_line + HEARTBEAT_S - 1)  # not yet
        display.beat(display._last_line + HEARTBEAT_S)
        _step(display, 2, 3, "int8: costs")
        _step(display, 3, 3, "done")
        display.beat(display._last_line + 10 * HEARTBEAT_S)  # nothing runs: silent
    lines = [line.rsplit(" (", 1)[0] for line in capsys.readouterr().err.splitlines()[1:]]
    assert lines == [
        "audit 1/3: reference: predictions",
        "audit 2/3: reference: attribution",
        "audit: still reference: attribution (20 s on it)".replace("20", f"{HEARTBEAT_S:.0f}"),
        "audit 3/3: int8: costs",
    ]


def test_live_display_shows_a_task_s_steps_on_its_bar():
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with FlowDisplay(console=console) as display:
        _step(display, 4, 40, "int8: attribution")
        [row] = [task for task in display._progress.tasks if task.description.strip() != "tasks"]
        assert (row.completed, row.total) == (4, 40)
        assert row.fields["status"] == "audit: int8: attribution"


def test_a_total_announced_up_front_stays_fixed_and_phases_are_lines(capsys):
    """compalign reproduce announces every seed's tasks at once (the flows' own counts are in
    it) and says which seed runs; `reproduce all` announces each paper's total afresh."""
    with FlowDisplay(console=Console(file=io.StringIO())) as display:
        display._on_event("planned", {"count": 10, "fixed": True})
        display._on_event("phase", {"text": "seed 1 of 2 (training seed 0)"})
        display._on_event("planned", {"count": 5})  # the first seed's flow: already counted
        for index in range(5):
            display._on_event("finished", {"task_run_id": f"a{index}", "state": "Completed"})
        assert display.counts()[:2] == (5, 10)
        display._on_event("planned", {"count": 4, "fixed": True})  # the next paper
        assert display.counts()[:2] == (0, 4)
    lines = capsys.readouterr().err.splitlines()
    assert lines[1].startswith("seed 1 of 2 (training seed 0) (0/10 tasks")
    assert [line.split(" (")[0] for line in lines[2:]] == [
        "2/10 tasks, 0 cached",
        "4/10 tasks, 0 cached",
    ]
