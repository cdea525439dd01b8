"""Process set-up that must happen before Prefect or MLflow are imported. Light on purpose (no
torch, Prefect or MLflow): the CLI calls it first, and a process that only checks it starts in
a fraction of a second."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tasks.infra.paths import PREFECT_HOME, PREFECT_RESULTS_DIR


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
        os.environ.setdefault("PREFECT_HOME", str(project_dir / PREFECT_HOME))
        # Prefect makes its home directory but not the parents of it
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = PREFECT_RESULTS_DIR.as_posix()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
