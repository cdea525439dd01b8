"""Where everything compalign writes lives, relative to the project folder (the working
directory of a run): one module, so that a runner, a test or a user finds every path here.

Imports nothing beyond the standard library: the quick rerun check (flows/rerun.py) reads it
before torch is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

# the content-addressed store of stage outputs (tasks/infra/store.py), and Prefect's result
# records beside the entries they point to: deleting artifacts/ drops both
ARTIFACTS_DIR = Path("artifacts")
PREFECT_RESULTS_DIR = ARTIFACTS_DIR / ".prefect-results"

# the project's own state: Prefect's home, recorded runs (flows/rerun.py), the audit lock
STATE_DIR = Path(".compalign")
PREFECT_HOME = STATE_DIR / "prefect"
RUNS_DIR = STATE_DIR / "runs"  # each finished `compalign run`, by the digest of its task keys
QUICK_DIR = RUNS_DIR / "quick"  # the remembered answers of `compalign run`, by their inputs
AUDIT_LOCK = STATE_DIR / "audit.lock"

# MLflow's default tracking store and artifact folder
MLFLOW_STORE = Path("mlflow.db")
MLFLOW_ARTIFACTS = Path("mlartifacts")

# what each flow writes for people to read
REPORTS_DIR = Path("reports")
PIPELINE_REPORT_DIR = REPORTS_DIR / "pipeline"  # compalign run: summary.md, report.html, ...
POPULATIONS_REPORT_DIR = REPORTS_DIR / "populations"  # compalign populations
COMPARE_REPORT_DIR = REPORTS_DIR / "compare"  # compalign audit (models you bring)
SEARCH_REPORT_DIR = REPORTS_DIR / "search"  # compalign search


def template_dir() -> Path:
    """Outside any project: the user's cache ($XDG_CACHE_HOME/compalign), where the migrated
    empty Prefect and MLflow databases are kept that a new project's stores start as a copy of
    (one per library version)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "compalign"


def paper_report_dir(paper: str) -> Path:
    """compalign reproduce <paper>: reports/<paper>/."""
    return REPORTS_DIR / paper


# DVC's fixed paths (dvc.yaml's outs; `{model}`: one folder per model of the grid)
DATA_DIR = Path("data/prepared")
REFERENCE_DIR = Path("models/reference")
COMPRESSED_DIR = Path("models/compressed")
ALIGNED_DIR = Path("models/aligned")
AUDIT_DIR = REPORTS_DIR / "audit"
AUDIT_MODELS_DIR = AUDIT_DIR / "models"
AUDIT_METRICS_DIR = AUDIT_DIR / "metrics"  # dvc.yaml's `metrics:`
AUDIT_SUMMARY_DIR = AUDIT_DIR / "summary"
AUDIT_PLOTS_DIR = AUDIT_DIR / "plots"  # dvc.yaml's `plots:` read these
AUDIT_PREDICTIONS_DIR = AUDIT_DIR / "predictions"
