"""Process set-up that must happen before Prefect or MLflow are imported."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tasks.store import PREFECT_RESULTS_DIR


def configure_environment(project_dir: str | Path | None = None) -> None:
    """Give the project its own Prefect home and result store, quiet telemetry.

    A user's own PREFECT_HOME or PREFECT_API_URL (a real Prefect server) is respected; the result
    store is always the project's `artifacts/.prefect-results`, because the stage cache keys
    check their entries there.
    """
    if "prefect" in sys.modules:
        # Prefect reads its settings once, at import: set after that, results would go to
        # ~/.prefect/storage, where the stage cache keys never look (stale cache hits)
        raise RuntimeError("configure_environment() must run before prefect is imported")
    project_dir = Path(project_dir or Path.cwd()).resolve()
    if "PREFECT_API_URL" not in os.environ:
        os.environ.setdefault("PREFECT_HOME", str(project_dir / ".compalign" / "prefect"))
        # Prefect makes its home directory but not the parents of it
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = PREFECT_RESULTS_DIR.as_posix()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


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
    run, tasks.logs), from the flow's side: it works for tasks in threads and on Dask alike."""
    from tasks.logs import publish_progress

    publish_progress("planned", count=len(futures))
    for future in futures:
        future.add_done_callback(_report_finished)


def report_finished(state) -> None:
    """Report a task run that was called directly (not submitted) as ended in `state`."""
    from tasks.logs import publish_progress

    publish_progress("finished", task_run_id=str(state.state_details.task_run_id), state=state.name)


def _report_finished(future) -> None:
    from tasks.logs import publish_progress

    # the wrapped (thread or Dask) future is done and holds the final state: no API call
    wrapped = getattr(future, "wrapped_future", None)
    try:
        state = wrapped.result() if wrapped is not None else future.state
        name = getattr(state, "name", "Completed")
    except BaseException:  # the future itself failed: the task run never reached a state
        name = "Crashed"
    publish_progress("finished", task_run_id=str(future.task_run_id), state=name)
