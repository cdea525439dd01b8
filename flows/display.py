"""What a flow shows on the terminal while it runs.

Interactive (stdout is a terminal): a live rich display, an overall bar (tasks done of the
tasks planned; cached tasks count at once) and one line per task that computes, with its epochs.
Anything else (CI, a pipe): a plain line at every fifth of the tasks done, and, for a task that
reports steps (the audit of models you bring: per model its predictions, each metric, its
costs), a line per step and another while one step runs long (HEARTBEAT_S). Tasks' own log lines
(one per epoch, one per finished task) stay in the Prefect task logs and reach the terminal only
with `verbose`. The display listens to the progress events of tasks.infra.logs; with a Dask runner
only the flow's own events arrive (tasks done), so it shows the overall bar alone.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from typing import Any

# Prefect's loggers of flow and task runs: their INFO lines go to the Prefect API (the UI's task
# logs) and, with --verbose, to the terminal; so do Dask's (a cluster starting and stopping).
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "distributed")
PLAIN_STEPS = 5  # plain output: a line each time another fifth of the tasks is done
# plain output of a task that reports steps (the audit): a line per step, and one after this
# many seconds of a step that is still running (so a pipe sees a line at least every 30 s)
HEARTBEAT_S = 20.0


class _QuietRunLogs(logging.Filter):
    """Keeps warnings and errors of flow and task runs (and Dask) on the console, drops their
    INFO lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(RUN_LOGGERS)


def _console_handlers() -> list[logging.Handler]:
    """Prefect's console handlers (its logging config puts one on the root logger)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    found: list[logging.Handler] = []
    for name in ("", "prefect"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler) and handler not in found:
                found.append(handler)
    return found


class FlowDisplay:
    """A context manager: progress of the flows run inside it, on `console` (default: stdout).

    Progress events arrive from worker threads; every change of state holds one lock.
    """

    def __init__(self, verbose: bool = False, console: Any = None) -> None:
        from rich.console import Console

        self.console = console if console is not None else Console()
        self.interactive = self.console.is_terminal
        self.verbose = verbose
        self.planned = 0
        self.finished: dict[str, str] = {}  # task run id -> final state name
        self.running: dict[str, Any] = {}  # task run id -> rich progress task id
        self._lock = threading.Lock()
        self._plain_step = 0  # plain output: the last fifth reported
        self._fixed = False  # the total was announced up front: flows' own counts are in it
        self._started = time.monotonic()
        self._progress: Any = None
        self._restore: list = []  # what undoes each set-up step (undone last to first)
        self._stop_listening = lambda: None
        self._step: tuple[str, str, float] | None = None  # plain: (what, step, started)
        self._last_line = time.monotonic()
        self._stopped = threading.Event()

    # -- set-up ---------------------------------------------------------------------------
    def __enter__(self) -> FlowDisplay:
        from tasks.infra.logs import add_progress_listener

        handlers = _console_handlers()
        if not self.verbose:
            quiet = _QuietRunLogs()
            for handler in handlers:
                handler.addFilter(quiet)
                self._restore.append(lambda h=handler, f=quiet: h.removeFilter(f))
            # MLflow's INFO lines (its own handler: creating the database, ...) likewise
            mlflow_logger = logging.getLogger("mlflow")
            level = mlflow_logger.level
            mlflow_logger.setLevel(max(level, logging.WARNING))
            self._restore.append(lambda: mlflow_logger.setLevel(level))
        if self.interactive:
            self._start_live(handlers)
        else:
            print(
                "running: a line per fifth of the tasks done (--verbose: every task's log)",
                file=sys.stderr,
                flush=True,
            )
            heartbeat = threading.Thread(target=self._heartbeat, daemon=True)
            heartbeat.start()
            self._restore.append(self._stopped.set)
        self._stop_listening = add_progress_listener(self._on_event)
        return self

    def _heartbeat(self) -> None:
        """Plain output: a line for a step still running after HEARTBEAT_S seconds of silence."""
        while not self._stopped.wait(1.0):
            self.beat(time.monotonic())

    def beat(self, now: float) -> None:
        """The heartbeat's check at time `now` (time.monotonic): a line when a step has run
        HEARTBEAT_S seconds since the last line."""
        with self._lock:
            if self._step is None or now - self._last_line < HEARTBEAT_S:
                return
            what, step, started = self._step
            self._print(f"{what}: still {step} ({now - started:.0f} s on it)")

    def _start_live(self, handlers: list[logging.Handler]) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.table import Column

        redirect_stderr = sys.stderr.isatty()
        self._progress = Progress(
            SpinnerColumn(),
            # a fixed width: the bars stay in place as task names come and go
            TextColumn("{task.description}", table_column=Column(width=32, no_wrap=True)),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
            redirect_stdout=True,
            redirect_stderr=redirect_stderr,
            refresh_per_second=4,
        )
        self._overall = self._progress.add_task("tasks", total=None, status="starting")
        self._progress.start()
        if redirect_stderr:
            # Prefect's console handler keeps the stream it was made with: send it through the
            # display's proxy, so its lines print above the live display instead of through it
            for handler in handlers:
                previous = handler.console.file
                handler.console.file = sys.stderr
                self._restore.append(lambda h=handler, f=previous: setattr(h.console, "file", f))

    def __exit__(self, *_exc: object) -> None:
        self._stop_listening()
        if self._progress is not None:
            with self._lock:
                self._update_overall()
            self._progress.stop()
        for undo in reversed(self._restore):
            undo()
        self._restore.clear()

    # -- events ---------------------------------------------------------------------------
    def _on_event(self, kind: str, fields: dict[str, Any]) -> None:
        with self._lock:
            if kind == "planned":
                if fields.get("fixed"):  # a total announced up front (compalign reproduce):
                    # its own count from here (`reproduce all` announces each paper's)
                    self.planned, self._fixed = fields["count"], True
                    self.finished.clear()
                    self._plain_step = 0
                elif not self._fixed:
                    self.planned += fields["count"]
            elif kind == "phase":
                self._phase(fields["text"])
                return
            elif kind == "started":
                self._add_running(fields["task_run_id"], fields["name"])
            elif kind == "epoch":
                self._epoch(fields)
            elif kind == "ended":
                self._remove_running(fields["task_run_id"])
            elif kind == "finished":
                self._remove_running(fields["task_run_id"])
                self.finished.setdefault(fields["task_run_id"], fields["state"])
            elif kind == "step":
                self._on_step(fields)
            else:
                return
            if self._progress is not None:
                self._update_overall()
            elif kind in ("planned", "finished"):
                self._plain_line(kind)

    def _phase(self, text: str) -> None:
        """A stage of a long command ("seed 2 of 3"): the overall bar's name, or a plain line."""
        if self._progress is not None:
            self._progress.update(self._overall, description=text)
            return
        done, total, _, _ = self.counts()
        elapsed = time.monotonic() - self._started
        print(f"{text} ({done}/{total or '?'} tasks, {elapsed:.0f} s)", file=sys.stderr, flush=True)

    def _add_running(self, task_run_id: str, name: str) -> None:
        if self._progress is None or task_run_id in self.running or task_run_id in self.finished:
            return
        self.running[task_run_id] = self._progress.add_task(
            f"  {name}", total=None, status="running"
        )

    def _epoch(self, fields: dict[str, Any]) -> None:
        if self._progress is None or fields["task_run_id"] in self.finished:
            return
        if fields["task_run_id"] not in self.running:
            self._add_running(fields["task_run_id"], fields["name"])
        self._progress.update(
            self.running[fields["task_run_id"]],
            total=fields["epochs"],
            completed=fields["epoch"],
            status=f"{fields['what']}: epoch {fields['epoch']}/{fields['epochs']}",
        )

    def _on_step(self, fields: dict[str, Any]) -> None:
        """A task's step (done of total): its bar in a terminal, a line when plain."""
        done, total, step = fields["done"], fields["total"], fields["step"]
        if self._progress is not None:
            task_run_id = fields.get("task_run_id")
            if task_run_id is None or task_run_id in self.finished:
                return
            if task_run_id not in self.running:
                self._add_running(task_run_id, fields["name"])
            status = f"{fields['what']}: {step}" if done < total else f"{fields['what']}: done"
            self._progress.update(
                self.running[task_run_id], total=total, completed=done, status=status
            )
            return
        if done >= total:
            self._step = None
            return
        self._step = (fields["what"], step, time.monotonic())
        self._print(f"{fields['what']} {done + 1}/{total}: {step}")

    def _print(self, line: str) -> None:
        """A plain line on stderr, with the seconds since the display started."""
        elapsed = time.monotonic() - self._started
        print(f"{line} ({elapsed:.0f} s)", file=sys.stderr, flush=True)
        self._last_line = time.monotonic()

    def _remove_running(self, task_run_id: str) -> None:
        progress_id = self.running.pop(task_run_id, None)
        if progress_id is not None:
            self._progress.remove_task(progress_id)

    def counts(self) -> tuple[int, int, int, int]:
        """(done, total, cached, failed) of the tasks seen so far."""
        states = list(self.finished.values())
        done = len(states)
        total = max(self.planned, done + len(self.running))
        cached = sum(state == "Cached" for state in states)
        failed = sum(state in ("Failed", "Crashed", "TimedOut") for state in states)
        return done, total, cached, failed

    def _status(self) -> str:
        done, total, cached, failed = self.counts()
        text = f"{done}/{total or '?'} tasks, {cached} cached"
        if failed:
            text += f", {failed} failed"
        return text

    def _update_overall(self) -> None:
        done, total, _, _ = self.counts()
        self._progress.update(
            self._overall, total=total or None, completed=done, status=self._status()
        )

    def _plain_line(self, kind: str) -> None:
        done, total, _, _ = self.counts()
        if kind == "planned":  # more tasks (another flow): count fifths of the new total
            self._plain_step = math.floor(done * PLAIN_STEPS / total) if total else 0
            return
        step = math.floor(done * PLAIN_STEPS / total) if total else 0
        if step > self._plain_step:
            self._plain_step = step
            self._print(self._status())
