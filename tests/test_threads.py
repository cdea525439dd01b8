"""flows/threads.py: the cores other work keeps busy, and the threads a task starts with."""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
import time

import pytest

from flows.threads import BUSY_FRACTION, CoreMeter, HookLines, ThreadShare

linux_only = pytest.mark.skipif(not os.path.isfile("/proc/stat"), reason="reads Linux's /proc")


@linux_only
def test_the_runs_processes_include_its_children_after_they_end():
    """_tree_ticks: this process and those under it, a child that ended and was waited for
    included (its time moves to our cutime); the CPUs' busy ticks count at least as much."""
    from flows.threads import _cpu_ticks, _tree_ticks

    cpus = os.sched_getaffinity(0)
    tree, busy = _tree_ticks(os.getpid()), _cpu_ticks(cpus)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "sum(range(20_000_000))"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_ticks = (after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime) * (
        os.sysconf("SC_CLK_TCK")
    )
    grown = _tree_ticks(os.getpid()) - tree
    assert grown >= child_ticks - 2  # ticks are whole: allow rounding of the two readings
    assert _cpu_ticks(cpus) - busy >= grown - 2 * len(cpus)


class ScriptedMeter(CoreMeter):
    """A CoreMeter whose readings (seconds ago, busy CPU ticks, the run's ticks) are given."""

    def __init__(self, readings: list[tuple[float, int, int]]) -> None:
        super().__init__()
        self.readings = list(readings)

    def _reading(self, root: int) -> tuple[float, int, int]:
        ago, busy, own = self.readings.pop(0)
        return time.monotonic() - ago, busy, own


@linux_only
@pytest.mark.parametrize(
    ("others", "busy"),
    [(0.0, 0), (BUSY_FRACTION - 0.1, 0), (BUSY_FRACTION + 0.1, 1), (1.4, 1), (1.6, 2)],
)
def test_other_work_is_what_the_cpus_did_beyond_the_runs_processes(monkeypatch, others, busy):
    """Busy ticks of the CPUs less the run's own, over the window, in cores; a core counts
    once other work keeps BUSY_FRACTION of it busy."""
    import compalign.config

    monkeypatch.setattr(compalign.config, "cpu_quota", lambda: None)
    tick = os.sysconf("SC_CLK_TCK")
    seconds = 10
    own = 3 * tick * seconds  # the run kept 3 cores busy meanwhile: not other work
    meter = ScriptedMeter([(seconds, 0, 0), (0, own + round(others * tick * seconds), own)])
    assert meter.busy_cores(os.getpid()) == busy


@linux_only
def test_the_window_is_the_time_since_the_last_reading_unless_that_is_too_old(monkeypatch):
    """A reading 5 s old is the start of the next window; one older than the longest window
    is not (a fresh window is measured), and a container's CPU limit turns the meter off."""
    import compalign.config

    monkeypatch.setattr(compalign.config, "cpu_quota", lambda: None)
    tick = os.sysconf("SC_CLK_TCK")
    meter = ScriptedMeter([(5, 0, 0), (0, 5 * tick, 0)])
    assert meter.busy_cores(1) == 1 and not meter.readings
    meter.last = (time.monotonic() - 5, 5 * tick, 0)  # 5 s old: the window since it
    meter.readings = [(0, 5 * tick, 0)]
    assert meter.busy_cores(1) == 0
    meter.last = (time.monotonic() - 3600, 0, 0)  # an hour old: a fresh window instead
    meter.readings = [(1, 0, 0), (0, 2 * tick, 0)]
    assert meter.busy_cores(1) == 2
    monkeypatch.setattr(compalign.config, "cpu_quota", lambda: 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1})
    meter.readings = [(0, 10**9, 0)]
    assert meter.busy_cores(1) == 0 and meter.readings  # nothing read


def test_a_share_gives_the_free_cores_to_the_tasks_that_can_run_at_once(monkeypatch):
    import compalign.config
    import flows.threads

    monkeypatch.setattr(compalign.config, "cores", lambda: 8)
    monkeypatch.setattr(flows.threads.METER, "busy_cores", lambda root: 2)
    assert ThreadShare(1).count() == (6, 8, 2)  # alone: every core other work leaves
    assert ThreadShare(2).count() == (3, 8, 2)
    assert ThreadShare(4, busy=0).count() == (2, 8, 0)
    assert ThreadShare(8).count() == (1, 8, None)  # as many tasks as cores: nothing to measure
    assert ThreadShare(1, busy=8).count() == (1, 8, 8)  # at least one
    assert ThreadShare(3, pinned=5).count() == (5, 8, None)


def test_prefects_lines_about_the_hook_are_dropped_its_errors_kept():
    """The hook says what it set in one line of its own; Prefect's two lines around every hook
    call go, an error in it stays."""
    quiet = HookLines()

    def record(level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord("prefect.task_runs", level, __file__, 1, message, None, None)

    assert not quiet.filter(
        record(logging.INFO, "Running hook 'torch_threads' in response to entering state 'Running'")
    )
    assert not quiet.filter(
        record(logging.INFO, "Hook 'torch_threads' finished running successfully")
    )
    assert quiet.filter(record(logging.INFO, "Hook 'other' finished running successfully"))
    assert quiet.filter(
        record(logging.ERROR, "An error was encountered while running hook 'torch_threads'")
    )
