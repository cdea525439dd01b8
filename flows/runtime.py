"""How the pipeline's tasks are run: submitted when their inputs are ready, on a thread pool or a
Dask cluster, with their torch threads, and reported as they end. (The process set-up that
must come before Prefect is imported is flows/environment.py.)"""

from __future__ import annotations

import queue
from collections.abc import Callable, Collection, Mapping
from typing import Any

from flows.graph import Input, Step, field_of, resolve
from flows.threads import ThreadShare, use_torch_threads, with_torch_threads
from tasks import stage


def wait_or_raise_first_failure(futures: list, announce: bool = True) -> None:
    """Wait for every submitted task, then re-raise the exception of the first one that failed
    (in submission order), a UserError before any other.

    Without this, the first `.result()` a flow asks for may be a task that never ran because an
    upstream task failed, and the user sees Prefect's "Run is in PENDING state" instead of the
    one line that says what is wrong.
    """
    from prefect.futures import wait

    from compalign.errors import UserError

    if announce:  # as planned tasks, for the terminal's progress display
        report_progress(futures)
    wait(futures)
    errors = []
    for future in futures:
        state = future.state
        if state.is_failed() or state.is_crashed():
            try:
                state.result(raise_on_failure=True)
            except BaseException as error:  # the task's own exception, as it was raised
                errors.append(error)
    if errors:
        raise next((e for e in errors if isinstance(e, UserError)), errors[0])


def report_progress(futures: list) -> None:
    """Announce `futures` as planned tasks and report each as it ends (a progress event per task
    run, tasks.infra.logs), from the flow's side: it works for tasks in threads and on Dask alike."""
    from tasks.infra.logs import publish_progress

    publish_progress("planned", count=len(futures))
    for future in futures:
        future.add_done_callback(_report_finished)


def report_when_done(future) -> None:
    """Report `future`'s task run as ended, once it ends (a submitted task the flow did not
    announce through report_progress)."""
    future.add_done_callback(_report_finished)


def report_finished(state) -> None:
    """Report a task run that was called directly (not submitted) as ended in `state`."""
    from tasks.infra.logs import publish_progress

    publish_progress("finished", task_run_id=str(state.state_details.task_run_id), state=state.name)


def _report_finished(future) -> None:
    from tasks.infra.logs import publish_progress

    # the wrapped (thread or Dask) future is done and holds the final state: no API call
    wrapped = getattr(future, "wrapped_future", None)
    try:
        state = wrapped.result() if wrapped is not None else future.state
        name = getattr(state, "name", "Completed")
    except BaseException:  # the future itself failed: the task run never reached a state
        name = "Crashed"
    publish_progress("finished", task_run_id=str(future.task_run_id), state=name)


def submit_when_ready(
    steps: list[Step],
    tasks: Mapping[str, Any] | None = None,
    after: dict[str, Callable[[Any], None]] | None = None,
    on_submit: Callable[[Any], None] | None = None,
    on_done: Callable[[Any], None] | None = None,
    threads: Callable[[Step], ThreadShare | None] | None = None,
    limit: tuple[Collection[str], int] | None = None,
) -> dict[str, Any]:
    """Submit each step (flows/graph.py) to the flow's task runner once every step it needs is
    done, as its stage's task (`tasks[stage]`; by default the Prefect task of tasks/__init__.py's
    table, or of the step's variant); return the futures by step id. An input that takes one
    field of a result gets that field (its step is done). `after[step id]` is called with a step's future once it
    has completed; `on_submit(future)` as each is submitted, `on_done(future)` as each ends
    (in this thread), for progress reports. `threads(step)`: how the step's task picks its torch
    threads (flows.threads; None: the runner's count). `limit` = (stages, n): at most n steps
    of those stages submitted and not yet done at a time (the trainings on one GPU); the
    others are not held back.

    A task submitted with futures still running would take a worker and wait there for them;
    submitted only when its inputs are done, it never holds a worker idle, so `run.workers`
    fine-tunings really run at once. A step whose input failed is never submitted (the failure
    is raised by wait_or_raise_first_failure).
    """
    from prefect.futures import PrefectFuture

    after = after or {}
    limited, most = limit if limit is not None else ((), 0)
    done = queue.SimpleQueue()
    futures: dict[str, PrefectFuture] = {}
    ids: dict[int, str] = {}
    completed: set[str] = set()
    failed: set[str] = set()
    waiting = list(steps)
    running = 0
    running_limited = 0
    stage_of = {step.id: step.stage for step in steps}
    variants: dict[tuple[str, str | None, ThreadShare | None], Any] = {}  # by stage, variant, share

    def task_of(step: Step) -> Any:
        share = threads(step) if threads is not None else None
        if (step.stage, step.variant, share) not in variants:
            if tasks is not None:
                made = tasks[step.stage]
            else:
                made = stage(step.stage).variant_task(step.variant)
            variants[step.stage, step.variant, share] = with_torch_threads(made, share)
        return variants[step.stage, step.variant, share]

    def lookup(source: Input) -> Any:
        future = futures[source.step]
        return future if source.field is None else field_of(future.result(), source)

    while True:
        for step in list(waiting):
            if any(need in failed for need in step.needs):
                waiting.remove(step)
                failed.add(step.id)
            elif all(need in completed for need in step.needs):
                if step.stage in limited and running_limited >= most:
                    continue  # waits for a slot; later steps of other stages go first
                waiting.remove(step)
                arguments = resolve(step.arguments, lookup)
                future = task_of(step).submit(**arguments)
                futures[step.id], ids[id(future)] = future, step.id
                future.add_done_callback(done.put)
                if on_submit is not None:
                    on_submit(future)
                running += 1
                running_limited += step.stage in limited
        if not running:
            return futures
        try:
            future = done.get(timeout=0.5)  # a timeout: Ctrl-C and SIGTERM reach this thread
        except queue.Empty:
            continue
        running -= 1
        future.wait()
        if on_done is not None:
            on_done(future)
        step_id = ids[id(future)]
        running_limited -= stage_of[step_id] in limited
        if future.state.is_completed():
            completed.add(step_id)
            if step_id in after:
                after[step_id](future)
        else:
            failed.add(step_id)


def thread_pool_runner(workers: int, threads: int):
    """Prefect's thread pool of `workers` threads, each running torch with `threads` threads
    unless the task it runs sets its own (flows.threads.with_torch_threads).

    torch.set_num_threads is per thread for OpenMP (each thread has its own team), so each
    worker sets its own count when it starts; the calling thread keeps its count.
    """
    from concurrent.futures import ThreadPoolExecutor

    from prefect.task_runners import ThreadPoolTaskRunner

    class TorchThreadPoolTaskRunner(ThreadPoolTaskRunner):
        def _register_worker_thread(self) -> None:
            use_torch_threads(threads)
            super()._register_worker_thread()

        def duplicate(self):
            return type(self)(max_workers=self._max_workers)

        def retire_workers(self) -> None:
            """End the pool's threads once every task submitted so far is done (a later
            submit starts new ones). While a thread that ran a multi-thread OpenMP team
            lives, libgomp counts its idle team as busy; with more such threads than cores it
            puts idle threads to sleep after a short spin, and every small parallel region
            of any thread pays for waking them (batch-1 latency read 3-4x high)."""
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._worker_thread_ids = set()
                self._executor = ThreadPoolExecutor(
                    max_workers=self._max_workers, initializer=self._register_worker_thread
                )

    return TorchThreadPoolTaskRunner(max_workers=workers)


def retire_workers() -> None:
    """End the worker threads of the running flow's thread pool (`retire_workers` above); a
    flow on Dask (worker processes) or without a pool has none in this process."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    runner = context.task_runner if context is not None else None
    if hasattr(runner, "retire_workers"):
        runner.retire_workers()


def dask_runner(address: str | None, workers: int, threads: int):
    """prefect-dask's runner: the scheduler at `address`, or a LocalCluster of `workers` worker
    processes on loopback (no dashboard), each task with `threads` torch threads."""
    import dask
    from prefect_dask import DaskTaskRunner

    # the environment Dask's nannies give worker processes (torch reads it at import)
    dask.config.set({"distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS": threads})
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
        },
    )
