"""The pipeline's stages: one module each, one line each in this table.

A stage module holds the stage's plain function (reads its inputs by path, calls the core
package, writes its output to the content-addressed store) and its declaration, `STAGE =
Stage(...)` (tasks.infra.stage): its inputs, what its cache key covers, its task runs' name,
the files it logs, its DVC output path. Adding a stage is a module beside these and a line
here; the run graph (flows/graph.py) says when it runs and with which arguments.

Not stages: tasks/infra/ (the store, cache keys, paths, MLflow tracking, logs: what every stage
stands on) and tasks/reports/ (the steps that end a flow: its reports and parent-run records).

The table names modules, not objects: `import tasks` (and so any tasks.infra module) stays
free of torch and Prefect; a stage's module is imported when the stage is first asked for.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.infra.stage import Stage

# name -> module, in the order the pipeline runs them (DVC's stages: those with an `out`)
STAGES = {
    "prepare": "tasks.data",
    "reference": "tasks.train",
    "compress": "tasks.compress",
    "align": "tasks.align",
    "audit": "tasks.audit",
    "costs": "tasks.costs",
    "predictions": "tasks.predictions",
    "predict": "tasks.predict",
    "pruned": "tasks.pruned",
}


def stage(name: str) -> Stage:
    """The declaration of stage `name` (its module's STAGE)."""
    if name not in STAGES:
        raise KeyError(f"stage {name!r}: not one of {', '.join(STAGES)}")
    declared = import_module(STAGES[name]).STAGE
    if declared.name != name:
        raise RuntimeError(f"{STAGES[name]}.STAGE is named {declared.name!r}, the table {name!r}")
    return declared


def stages() -> dict[str, Stage]:
    """Every stage's declaration, in the table's order."""
    return {name: stage(name) for name in STAGES}


def dvc_stages() -> list[str]:
    """The stages DVC runs as its own (dvc.yaml's `stages:`, in order): those with an `out`."""
    return [name for name, declared in stages().items() if declared.out is not None]
