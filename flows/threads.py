"""How many torch threads a task runs with, decided where and when it starts.

The flow knows, from the run graph, how many tasks can run beside each one (flows.graph.at_once,
at most the workers); the machine knows which cores other work keeps busy. A task gets the cores
this process may use (compalign.config.cores), less the busy ones, shared among the tasks that
can run beside it: every core for a task that always runs alone (prepare, then the reference),
one each in a full grid of one worker per core. Two torch threads beside a busy process are
slower than one (an OpenMP team waits at every parallel region for its slowest thread): a
ResNet-20 training step ran at 89 images/s on 2 threads against 190 on 1, and a small CNN on
8x8 images 7 to 45 times slower; so other work's cores are not taken.

What can run beside a task is counted from the graph, not from what happens to run when it
starts: on a quiet machine a run gets the same counts, so the same numbers (the count changes
how sums round), every time and on every runner. Other work's cores are measured at the start
(`run.busy_cores: auto`) or given (`run.busy_cores: N`; 0 makes the counts the graph's alone).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# other work's CPU time is averaged since the last reading when that is this old (seconds) ...
METER_WINDOW = (0.25, 30.0)
# ... and a core counts as busy once other work keeps at least this much of one busy
BUSY_FRACTION = 0.5
HOOK_NAME = "torch_threads"  # what Prefect's log lines call the hook (HookLines drops them)


def use_torch_threads(count: int) -> None:
    """Run torch in the calling thread with `count` threads. OpenMP's count (and MKL's) is per
    thread; but torch gives a thread, the first time it runs a parallel op, the count last set
    by any thread: that first time is forced here, so the count set after it stays."""
    import torch

    torch.get_num_threads()
    torch.set_num_threads(count)


def _cpu_ticks(cpus: set[int]) -> int:
    """Busy CPU ticks (all but idle and iowait) of `cpus` since boot, from /proc/stat."""
    busy = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(value) for value in values[:8]]  # guest time is inside user time
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy


def _tree_ticks(root: int) -> int:
    """CPU ticks of process `root` and every process under it, including those of children
    that ended and were waited for (Linux /proc)."""
    parent_of: dict[int, int] = {}
    ticks_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        pid = int(entry.name)
        parent_of[pid] = int(fields[1])
        ticks_of[pid] = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    children: dict[int, list[int]] = {}
    for pid, parent in parent_of.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks_of.get(pid, 0)
        todo += children.get(pid, [])
    return total


@dataclass
class CoreMeter:
    """How many of this process's cores other work keeps busy: the CPU time of its CPUs less
    that of the run's processes (the flow's process and those under it: its Prefect server,
    Dask workers), averaged since the last reading (METER_WINDOW; a fresh window of the shortest
    length after a long gap). Linux only; elsewhere, and in a container whose CPU limit caps
    the cores (the host's other work does not take that limit's time), it reports 0."""

    last: tuple[float, int, int] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _reading(self, root: int) -> tuple[float, int, int]:
        return time.monotonic(), _cpu_ticks(os.sched_getaffinity(0)), _tree_ticks(root)

    def busy_cores(self, root: int) -> int:
        from compalign.config import cpu_quota

        if not (hasattr(os, "sched_getaffinity") and Path("/proc/stat").is_file()):
            return 0
        quota = cpu_quota()
        if quota is not None and quota < len(os.sched_getaffinity(0)):
            return 0
        shortest, longest = METER_WINDOW
        with self.lock:
            before = self.last
            if before is None or time.monotonic() - before[0] > longest:
                before = self._reading(root)
            wait = shortest - (time.monotonic() - before[0])
            if wait > 0:
                time.sleep(wait)  # once a process, or after a long gap: a few tasks a run
            now = self._reading(root)
            self.last = now
        seconds = now[0] - before[0]
        others = (now[1] - before[1]) - (now[2] - before[2])
        per_second = os.sysconf("SC_CLK_TCK")
        busy = max(0.0, others / per_second / seconds)
        return int(busy + 1 - BUSY_FRACTION)


METER = CoreMeter()  # one a process: the flow's, or a Dask worker's


@dataclass(frozen=True)
class ThreadShare:
    """How a task picks its torch threads when it starts: `pinned` (run.threads), or the cores
    this process may use less those other work keeps busy (`busy`; None: measured by METER),
    shared among `share` tasks (those that can run beside it, itself included), at least 1.
    `root`: the run's process, whose own processes are not other work."""

    share: int
    pinned: int | None = None
    busy: int | None = None
    root: int = field(default_factory=os.getpid)

    def count(self) -> tuple[int, int, int | None]:
        """(threads, cores, cores busy with other work: None where it was not needed)."""
        from compalign.config import cores

        available = cores()
        if self.pinned is not None:
            return self.pinned, available, None
        if self.share >= available:  # one thread whatever the load: nothing to measure
            return 1, available, None
        busy = METER.busy_cores(self.root) if self.busy is None else self.busy
        return max(1, (available - busy) // self.share), available, busy


class TorchThreads:
    """A Prefect `on_running` hook: the task runs with the torch threads its ThreadShare gives,
    set in the thread that runs it (a thread of the flow's pool, or a Dask worker's) once its
    inputs are there, and said in the task run's log."""

    __name__ = HOOK_NAME  # Prefect names a hook by its __name__

    def __init__(self, share: ThreadShare) -> None:
        self.share = share

    def __call__(self, task: Any, task_run: Any, state: Any) -> None:
        from prefect.logging.loggers import task_run_logger

        threads, available, busy = self.share.count()
        use_torch_threads(threads)
        if self.share.pinned is not None:
            why = "pinned: run.threads or populations.threads_per_task"
        else:
            busy_note = "" if busy is None else f", {busy} busy with other work"
            why = f"{available} cores{busy_note}, {self.share.share} task(s) at a time"
        task_run_logger(task_run, task=task).info("torch threads: %d (%s)", threads, why)


class HookLines(logging.Filter):
    """Drops Prefect's two INFO lines around every call of TorchThreads (`Running hook ...`,
    `Hook ... finished running successfully`): the hook says what it did in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and f"ook '{HOOK_NAME}'" in record.getMessage())


# set wherever this module is imported: the flow's process, and each Dask worker that unpickles
# a TorchThreads hook
logging.getLogger("prefect.task_runs").addFilter(HookLines())


def with_torch_threads(task: Any, share: ThreadShare | None) -> Any:
    """`task` running with the threads `share` gives, wherever the runner runs it (None: the
    runner's count)."""
    if share is None:
        return task
    return task.with_options(on_running=[*task.on_running_hooks, TorchThreads(share)])
