"""flows/environment.py: the process environment Prefect must find when it is first imported (each
case in a fresh interpreter: Prefect reads its settings once, at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

NAMES = (
    "PREFECT_HOME",
    "PREFECT_LOCAL_STORAGE_PATH",
    "PREFECT_SERVER_ANALYTICS_ENABLED",
    "DO_NOT_TRACK",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
)

CONFIGURE = f"""
import json, os, sys
from flows.environment import configure_environment
configure_environment(*sys.argv[1:])
print(json.dumps({{name: os.environ.get(name) for name in {NAMES!r}}}))
"""


def configured(cwd, *args: str, **env: str) -> dict[str, str | None]:
    """The variables after configure_environment(*args) in a fresh interpreter started in `cwd`
    with none of them set but those in `env`."""
    clean = {k: v for k, v in os.environ.items() if k not in NAMES and k != "PREFECT_API_URL"}
    result = subprocess.run(
        [sys.executable, "-c", CONFIGURE, *args],
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_project_gets_its_own_prefect_home_and_result_store(tmp_path):
    values = configured(tmp_path)  # the project is the working directory by default
    home = tmp_path / ".compalign" / "prefect"
    assert values["PREFECT_HOME"] == str(home.resolve())
    assert home.is_dir()  # Prefect makes its home, not the parents of it
    # relative: resolved in the project directory, beside the store entries
    assert values["PREFECT_LOCAL_STORAGE_PATH"] == "artifacts/.prefect-results"
    assert values["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert values["DO_NOT_TRACK"] == "1"
    assert values["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"


def test_a_project_directory_can_be_named(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    values = configured(tmp_path, str(project))
    assert values["PREFECT_HOME"] == str((project / ".compalign" / "prefect").resolve())
    assert not (tmp_path / ".compalign").exists()


def test_the_users_settings_are_kept_but_the_result_store_is_the_projects(tmp_path):
    home = tmp_path / "my-prefect"
    values = configured(
        tmp_path,
        PREFECT_HOME=str(home),
        PREFECT_LOCAL_STORAGE_PATH="/elsewhere",
        DO_NOT_TRACK="0",
    )
    assert values["PREFECT_HOME"] == str(home)
    assert home.is_dir()
    assert not (tmp_path / ".compalign").exists()
    assert values["DO_NOT_TRACK"] == "0"
    # the stage cache keys look for result records only there
    assert values["PREFECT_LOCAL_STORAGE_PATH"] == "artifacts/.prefect-results"


def test_a_real_prefect_server_keeps_its_own_home(tmp_path):
    values = configured(tmp_path, PREFECT_API_URL="http://127.0.0.1:4200/api")
    assert values["PREFECT_HOME"] is None
    assert not (tmp_path / ".compalign").exists()
    assert values["PREFECT_LOCAL_STORAGE_PATH"] == "artifacts/.prefect-results"


@pytest.mark.parametrize("module", ["prefect", "prefect.task_runners"])
def test_refuses_to_run_once_prefect_is_imported(tmp_path, module):
    code = (
        f"import {module}, os\n"
        "from flows.environment import configure_environment\n"
        "try:\n"
        "    configure_environment()\n"
        "except RuntimeError as error:\n"
        "    print('refused:', error, os.environ.get('PREFECT_LOCAL_STORAGE_PATH'))\n"
    )
    clean = {k: v for k, v in os.environ.items() if k not in NAMES}
    home = tmp_path / "home"  # where this Prefect import may write: not the user's ~/.prefect
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**clean, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "refused: configure_environment() must run before prefect is imported None"
    )  # and the result store left unset
    assert not (tmp_path / ".compalign").exists()


def test_each_worker_thread_runs_torch_with_the_tasks_thread_count(prefect_server):
    """torch.set_num_threads is per thread (OpenMP): the pool's workers get `threads`, the
    flow's own thread keeps its count."""
    import torch
    from prefect import flow, task

    from flows.runtime import thread_pool_runner

    @task
    def threads_here() -> int:
        return torch.get_num_threads()

    @flow(task_runner=thread_pool_runner(2, 1))
    def two_tasks() -> tuple[list[int], int]:
        futures = [threads_here.submit() for _ in range(2)]
        return [future.result() for future in futures], torch.get_num_threads()

    before = torch.get_num_threads()
    workers, main = two_tasks()
    assert workers == [1, 1] and main == before == torch.get_num_threads()


def test_each_task_runs_with_the_threads_it_was_given(prefect_server):
    """with_torch_threads: the task sets its count in the thread that runs it, whatever that
    thread ran before (a pool thread's first count is torch's last one set anywhere, unless
    forced first: flows.runtime.use_torch_threads); the flow's thread keeps its count."""
    import torch
    from prefect import flow, task

    from flows.runtime import thread_pool_runner
    from flows.threads import ThreadShare, with_torch_threads

    @task
    def threads_here() -> int:
        return torch.get_num_threads()

    @flow(task_runner=thread_pool_runner(2, 1))
    def tasks_with_counts() -> list[int]:
        counts = [3, 2, 1, 2, 3]
        shares = [ThreadShare(1, pinned=n) for n in counts]
        futures = [with_torch_threads(threads_here, share).submit() for share in shares]
        return [future.result() for future in futures]

    before = torch.get_num_threads()
    assert tasks_with_counts() == [3, 2, 1, 2, 3]
    assert torch.get_num_threads() == before


def test_retired_workers_end_their_threads(prefect_server):
    """retire_workers ends the pool's threads (libgomp then frees their OpenMP teams, which
    slowed small parallel regions in every other thread); a later task gets a new thread."""
    import threading

    from prefect import flow, task

    from flows.runtime import retire_workers, thread_pool_runner

    @task
    def thread_here() -> str:
        return threading.current_thread().name

    @flow(task_runner=thread_pool_runner(2, 1))
    def retire_between() -> tuple[set[str], set[str], str]:
        before = {future.result() for future in [thread_here.submit() for _ in range(4)]}
        retire_workers()
        alive = {thread.name for thread in threading.enumerate()}
        return before, before & alive, thread_here.submit().result()

    before, still_alive, later = retire_between()
    assert before and not still_alive and later not in before


class FakeFuture:
    """What submit_when_ready uses of a Prefect future; done when the test says so."""

    def __init__(self) -> None:
        import threading

        self._done = threading.Event()
        self._callbacks: list = []
        self.state = self

    def is_completed(self) -> bool:
        return self._done.is_set()

    def add_done_callback(self, callback) -> None:
        self._callbacks.append(callback)

    def wait(self) -> None:
        self._done.wait()

    def complete(self) -> None:
        self._done.set()
        for callback in self._callbacks:
            callback(self)


def test_trainings_wait_for_a_gpu_slot_while_other_tasks_go_on(tiny_params):
    """limit=(stages, n): at most n steps of those stages submitted and not done at a time, the
    other steps submitted as soon as they are ready (the tiny grid, completed one task at a
    time, oldest first, by this thread)."""
    import queue
    import threading

    from flows.graph import pipeline_steps
    from flows.runtime import submit_when_ready

    steps = [s for s in pipeline_steps(tiny_params(), "cuda", {}, None) if s.stage != "costs"]
    submitted: queue.SimpleQueue = queue.SimpleQueue()
    stage_of: dict[int, str] = {}
    in_flight = {"limited": 0, "all": 0}
    most = {"limited": 0, "all": 0}

    class FakeTask:
        def __init__(self, stage: str) -> None:
            self.stage = stage

        def submit(self, **_arguments) -> FakeFuture:
            future = FakeFuture()
            stage_of[id(future)] = self.stage
            for kind in ("limited", "all"):
                in_flight[kind] += kind == "all" or self.stage in ("reference", "align")
                most[kind] = max(most[kind], in_flight[kind])
            submitted.put(future)
            return future

    def on_done(future) -> None:  # in the flow's thread, before it submits again
        in_flight["all"] -= 1
        in_flight["limited"] -= stage_of[id(future)] in ("reference", "align")

    stages = ("prepare", "reference", "compress", "align", "audit", "predictions")
    tasks = {stage: FakeTask(stage) for stage in stages}
    result: dict = {}
    flow = threading.Thread(
        target=lambda: result.update(
            submit_when_ready(steps, tasks, on_done=on_done, limit=(("reference", "align"), 2))
        )
    )
    flow.start()
    for _ in steps:
        submitted.get(timeout=30).complete()
    flow.join(timeout=30)
    assert set(result) == {step.id for step in steps}
    assert most["limited"] == 2  # 8 fine-tunings ready at once, 2 at a time
    assert most["all"] > 2  # audits and compressions were not held back
