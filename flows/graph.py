"""The pipeline's tasks as one graph: what each task is called with and which tasks it needs.

Two things read it: the flow (flows/pipeline.py), which submits each task only once the tasks it
needs are done, so no worker waits for its inputs; and the cached-run check (flows/cached.py),
which computes every task's cache key from it without running anything. Both therefore key
exactly the same calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from compalign.config import Params
from compalign.costs import LatencyOptions
from flows.plan import (
    BASELINE_LOSS,
    align_arguments,
    compress_arguments,
    compressed_id,
    compressed_labels,
    grid_by_compression,
    model_grid,
    reference_labels,
)
from flows.quick import REPORT_DIR  # noqa: F401  (the pipeline's reports; kept importable here)


@dataclass(frozen=True)
class Input:
    """An argument that is another step's result (or one field of it)."""

    step: str
    field: str | None = None


@dataclass
class Step:
    """One task call: its stage (the task), the model it is about, its keyword arguments."""

    id: str
    stage: str
    model: str
    arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def needs(self) -> list[str]:
        """The steps whose results this one takes."""
        return list(dict.fromkeys(v.step for v in self.arguments.values() if isinstance(v, Input)))


def resolve(arguments: dict[str, Any], lookup: Callable[[Input], Any]) -> dict[str, Any]:
    """The arguments with every Input replaced by `lookup(input)` (a future, or a result)."""
    return {
        name: lookup(value) if isinstance(value, Input) else value
        for name, value in arguments.items()
    }


def at_once(steps: list[Step]) -> dict[str, int]:
    """For each step, the most steps that can be running while it runs, itself included: 1 +
    the steps that neither need it nor are needed by it, directly or through others (a step
    runs only once every step it needs is done). 1 for a step that always runs alone."""
    ids = {step.id for step in steps}
    needs = {step.id: [need for need in step.needs if need in ids] for step in steps}
    before: dict[str, set[str]] = {}  # every step that must finish before each one starts

    def ancestors(step_id: str) -> set[str]:
        if step_id not in before:
            found: set[str] = set()
            for need in needs[step_id]:
                found |= {need} | ancestors(need)
            before[step_id] = found
        return before[step_id]

    for step in steps:  # in submission order: a step's inputs come before it
        ancestors(step.id)
    after: dict[str, set[str]] = {step.id: set() for step in steps}
    for step_id, found in before.items():
        for ancestor in found:
            after[ancestor].add(step_id)
    return {step.id: len(ids) - len(before[step.id]) - len(after[step.id]) for step in steps}


def pipeline_steps(
    settings: Params, device: str, track: dict[str, Any], parent: str | None
) -> list[Step]:
    """Every task of a pipeline run, in submission order: prepare, reference, its audit, then per
    compression the compress, align and audit tasks (the `ce` audit first: the others' reduction
    factors need it), then the costs of every model (run last, one at a time)."""
    audit = settings.audit.model_dump()
    data = Input("prepare")
    steps = [
        Step("prepare", "prepare", "", {"data": settings.data.prepare_params()}),
        Step(
            "reference",
            "reference",
            "",
            {
                "data": data,
                "reference": settings.reference.stage_params(settings.data),
                "device": device,
            },
        ),
        _audit_step("reference", Input("reference"), None, reference_labels(settings)),
    ]
    compressed: set[str] = set()
    models = {"reference": Input("reference")}
    for specs in grid_by_compression(settings):
        baseline = None
        for spec in specs:  # `ce` first
            name = compressed_id(settings, spec)
            if name not in compressed:  # one compress task per compress output
                needs_data, arguments = compress_arguments(settings, spec)
                arguments = {
                    "data": data if needs_data else None,
                    "reference": Input("reference"),
                    **arguments,
                }
                steps.append(Step(f"compress:{name}", "compress", name, arguments))
                compressed.add(name)
            model = Input(f"compress:{name}")
            if spec.fine_tuned:
                arguments = {
                    "data": data,
                    "reference": Input("reference"),
                    "compressed": model,
                    **align_arguments(settings, spec, device),
                }
                steps.append(Step(f"align:{spec.name}", "align", spec.name, arguments))
                model = Input(f"align:{spec.name}")
            labels = compressed_labels(settings, spec)
            step = _audit_step(spec.name, model, Input("audit:reference"), labels, baseline)
            steps.append(step)
            if spec.loss == BASELINE_LOSS:
                baseline = Input(step.id)
            models[spec.name] = model
    for name in ["reference"] + [spec.name for spec in model_grid(settings)]:
        arguments = {
            "data": data,
            "model": models[name],
            "latency": {key: audit[key] for key in LatencyOptions.model_fields},
            "name": name,
            "run_id": Input(f"audit:{name}", "run_id"),
        }
        steps.append(Step(f"costs:{name}", "costs", name, arguments))
    for step in steps:  # where results are logged (only the tracking store enters the keys)
        step.arguments["out_dir"] = None  # every argument given: Prefect's parameters are these
        if step.stage == "audit":
            step.arguments.update(audit=audit, device=device, parent_run_id=parent)
        if step.stage in ("audit", "costs"):
            step.arguments["tracking"] = track
    return steps


def _audit_step(
    name: str,
    model: Input,
    reference_audit: Input | None,
    labels: dict[str, str],
    baseline: Input | None = None,
) -> Step:
    arguments = {
        "data": Input("prepare"),
        "model": model,
        "reference_audit": reference_audit,
        "labels": labels,
        "baseline_audit": baseline,
    }
    return Step(f"audit:{name}", "audit", name, arguments)
